"""State kept between scrapes: threshold buckets follow a reload; removed targets take their series along."""

import time

from exporter.metrics import Exposition
from exporter.results import ProbeResult, StreamTimings
from exporter.state import ExporterState
from tests.metrics_text import label_sets, value


def _record(state, target, kind, duration):
    state.record_probe(ProbeResult(target, kind, True, time.time(), duration,
                                   stream=StreamTimings(0.01, 0.5, 0.1, 3) if kind == "stream" else None))


def test_a_moved_threshold_becomes_a_bucket_after_reload():
    state = ExporterState(response_time_seconds=5.0, stream_first_result_seconds=2.0)
    exposition = Exposition(state)
    state.set_targets({"a": ("batch", "stream")})
    _record(state, "a", "batch", 0.3)
    _record(state, "a", "stream", 5.5)
    text = exposition.render().decode()
    assert value(text, "whoasr_probe_duration_seconds_bucket", target="a", probe="batch", le="5.0") == 1.0
    assert value(text, "whoasr_probe_duration_seconds_bucket", target="a", probe="batch", le="3.0") is None

    state.set_thresholds(3.0, 0.4)  # a reload moved both thresholds
    text = exposition.render().decode()
    assert value(text, "whoasr_probe_duration_seconds_count", target="a", probe="batch") == 0.0  # restarted
    assert value(text, "whoasr_probe_runs_total", target="a", probe="batch") == 1.0  # counters are kept
    assert value(text, "whoasr_stream_partial_results_total", target="a") == 3.0
    _record(state, "a", "batch", 0.3)
    _record(state, "a", "stream", 5.5)
    text = exposition.render().decode()
    assert value(text, "whoasr_probe_duration_seconds_bucket", target="a", probe="batch", le="3.0") == 1.0
    assert value(text, "whoasr_stream_first_result_seconds_bucket", target="a", le="0.4") == 0.0
    assert value(text, "whoasr_stream_first_result_seconds_bucket", target="a", le="0.5") == 1.0

    state.set_thresholds(3.0, 0.4)  # unchanged: nothing restarts
    assert value(exposition.render().decode(), "whoasr_probe_duration_seconds_count", target="a",
                 probe="batch") == 1.0


def test_removed_targets_and_probes_lose_their_series():
    state = ExporterState()
    exposition = Exposition(state)
    state.set_targets({"a": ("batch", "vad"), "b": ("batch",)})
    for target, kind in (("a", "batch"), ("a", "vad"), ("b", "batch")):
        _record(state, target, kind, 0.1)
    state.set_targets({"a": ("batch",)})
    text = exposition.render().decode()
    assert {l["target"] for l in label_sets(text, "whoasr_probe_success")} == {"a"}
    assert {l["probe"] for l in label_sets(text, "whoasr_probe_success")} == {"batch"}
    _record(state, "b", "batch", 0.1)  # a run that finished after its target was removed
    assert "b" not in {l["target"] for l in label_sets(exposition.render().decode(), "whoasr_probe_runs_total")}


def test_every_result_lag_of_a_session_is_observed():
    state = ExporterState(stream_first_result_seconds=2.0)
    exposition = Exposition(state)
    state.set_targets({"a": ("stream",)})
    timings = StreamTimings(0.01, 0.7, 0.1, 3, result_lags=[0.08, 0.12, 0.4, 0.9])
    state.record_probe(ProbeResult("a", "stream", True, time.time(), 5.5, stream=timings))
    text = exposition.render().decode()
    assert value(text, "whoasr_stream_result_lag_seconds_count", target="a") == 4.0
    assert value(text, "whoasr_stream_result_lag_seconds_sum", target="a") == sum([0.08, 0.12, 0.4, 0.9])
    assert value(text, "whoasr_stream_result_lag_seconds_bucket", target="a", le="0.1") == 1.0
    assert value(text, "whoasr_stream_result_lag_seconds_bucket", target="a", le="0.5") == 3.0
    assert value(text, "whoasr_stream_first_result_seconds_count", target="a") == 1.0
