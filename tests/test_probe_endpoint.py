"""GET /probe against real simulator processes through a real exporter process: every module on both
API generations, with and without faults, the scrape-timeout header, &debug=true, the URL allow-list,
the concurrency bound, and that on-demand runs leave the scheduled state alone."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse

import pytest

from exporter.kinds import MODULES, is_scrape
from tests.metrics_text import samples, value
from tests.support import (LOOPBACK, Stack, free_port, http_get, sim_fault, sim_put, sim_reset, sim_stats,
                           wait_until)

pytestmark = pytest.mark.timeout(60)



@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("probe-endpoint"))
    try:
        v1_url = stack.simulator("v1", "v1")
        v2_url = stack.simulator("v2", "v2")
        port = free_port()
        # Only the v1 simulator's URL is allowed as a raw target; one /probe at a time.
        stack.serve(f"""
exporter:
  listen: "{LOOPBACK}:{port}"
  log_format: json
  max_concurrent_probes: 1
  allowed_targets: ['{v1_url.replace(".", "[.]")}/?']
targets:
  - {{name: asr-v1, url: "{v1_url}", probes: []}}
  - {{name: asr-v2, url: "{v2_url}", probes: []}}
schedules:
  health: {{interval: 1h, timeout: 5s}}
  model_info: {{interval: 1h, timeout: 5s}}
""", port)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(autouse=True)
def clean(stack):
    for url in stack.urls.values():
        sim_reset(url)
    yield


def probe(stack, target: str, module: str, debug: bool = False, headers: dict | None = None,
          timeout: float = 40) -> tuple[int, str, float]:
    query = {"target": target, "module": module, **({"debug": "true"} if debug else {})}
    started = time.monotonic()
    status, body, _ = http_get(f"{stack.base}/probe?{urllib.parse.urlencode(query)}", timeout=timeout,
                               headers=headers)
    return status, body.decode(), time.monotonic() - started


@pytest.mark.parametrize("api", ["v1", "v2"])
@pytest.mark.parametrize("module", MODULES)
def test_every_module_passes_on_a_healthy_target(stack, api, module):
    status, text, _ = probe(stack, f"asr-{api}", module)
    assert status == 200, text
    if api == "v1" and module == "timestamp":
        assert value(text, "whoasr_probe_applicable") == 0.0  # v1's /timestamp always answers 500
        return
    assert value(text, "whoasr_probe_success") == 1.0, text
    assert value(text, "whoasr_probe_run_duration_seconds") > 0
    assert not any(name.startswith("whoasr_probe_failure") for name, _, _ in samples(text))
    assert all("target" not in labels for _, labels, _ in samples(text))  # Prometheus adds the instance
    if module == "batch":
        assert value(text, "whoasr_probe_character_error_rate") == 0.0
        assert value(text, "whoasr_probe_http_status_code") == 200
    if module == "stream":
        assert 0 < value(text, "whoasr_stream_run_first_result_seconds") < 2
        assert value(text, "whoasr_stream_run_partial_results") >= 1
    if is_scrape(module):
        assert value(text, "whoasr_model_loaded", model="offline_asr") == 1.0
        assert value(text, "whoasr_models_loaded") == 5
        assert value(text, "whoasr_info", api=api) == 1.0
    if module == "health":
        assert value(text, "whoasr_healthy") == 1.0
        assert value(text, "whoasr_system_cpu_usage_ratio") is not None


FAULTS = [
    # (module, how to break the simulator, expected reason)
    ("batch", ("faults/recognize", {"status": 500}), "http_5xx"),
    ("batch", ("faults/recognize", {"substitute_chars": 6}), "accuracy"),
    ("stream", ("faults/stream", {"substitute_chars": 6}), "accuracy"),
    ("stream", ("models/streaming_asr", {"loaded": False}), "model_not_loaded"),
    ("punctuation", ("faults/punctuation", {"garbage": True}), "bad_response"),
    ("vad", ("models/vad", {"loaded": False}), "model_not_loaded"),
    ("timestamp", ("faults/timestamp", {"status": 500}), "http_5xx"),
    ("stream_vad", ("models/vad", {"loaded": False}), "model_not_loaded"),  # its 403 on upgrade
    ("health", ("faults/health", {"status": 503}), "http_5xx"),
    ("model_info", ("faults/model_info", {"wrong_shape": "list"}), "bad_response"),
]


@pytest.mark.parametrize("module,breakage,reason", FAULTS, ids=[f"{m}-{r}" for m, _, r in FAULTS])
def test_faults_fail_with_their_reason(stack, module, breakage, reason):
    path, body = breakage
    sim_put(stack.urls["v2"], path, body)
    status, text, _ = probe(stack, "asr-v2", module)
    assert status == 200, text
    assert value(text, "whoasr_probe_success") == 0.0, text
    assert value(text, "whoasr_probe_failure_info", reason=reason) == 1.0, text


def test_scrape_timeout_header_bounds_a_hanging_target(stack):
    sim_fault(stack.urls["v2"], "recognize", hang=True)
    status, text, elapsed = probe(stack, "asr-v2", "batch", headers={"X-Prometheus-Scrape-Timeout-Seconds": "2"})
    assert status == 200
    assert 1.3 <= elapsed < 2.0, elapsed  # the 0.5 s offset leaves time to answer
    assert value(text, "whoasr_probe_success") == 0.0
    assert value(text, "whoasr_probe_failure_info", reason="timeout") == 1.0
    assert 1.3 <= value(text, "whoasr_probe_run_duration_seconds") <= 1.8


def test_without_the_header_the_schedule_timeout_bounds_the_run(stack):
    """punctuation's schedule timeout is 10 s by default; a 1 s header must win over it, and the
    schedule timeout over a larger header."""
    sim_fault(stack.urls["v2"], "health", hang=True)
    status, text, elapsed = probe(stack, "asr-v2", "health", debug=True,
                                  headers={"X-Prometheus-Scrape-Timeout-Seconds": "60"})
    assert status == 200
    assert "budget:  5s" in text  # health's schedule timeout (5 s), not 60 - 0.5
    assert 4.8 <= elapsed < 6.0
    assert "reason:       timeout" in text


def test_debug_output_names_the_failing_step_and_shows_the_run(stack):
    sim_fault(stack.urls["v2"], "recognize", status=500)
    status, text, _ = probe(stack, "asr-v2", "batch", debug=True)
    assert status == 200
    assert "text/plain" in http_get(f"{stack.base}/probe?target=asr-v2&module=model_info&debug=true")[2][
        "Content-Type"]
    assert "POST /offline/recognize -> HTTP 500" in text  # the request and its status
    assert "FAILED http_5xx at status" in text  # the trace line of the failing step
    assert "failed step:  status" in text
    assert "reason:       http_5xx" in text
    assert 'whoasr_probe_failure_info{reason="http_5xx"} 1.0' in text  # the metrics that would be returned


def test_debug_output_of_a_passing_stream_shows_messages_checks_and_transcript(stack):
    status, text, _ = probe(stack, "asr-v2", "stream", debug=True)
    assert status == 200
    assert "-> start_recording" in text and "Recording stopped" in text
    assert "first result" in text
    assert "success:      yes" in text
    assert "transcript:   今天天气很好我们去公园" in text
    assert "CER:          0.000" in text
    assert "whoasr_stream_run_first_result_seconds" in text


@pytest.mark.parametrize("query,fragment", [
    ({"module": "health"}, "missing parameter 'target'"),
    ({"target": "asr-v2"}, "missing parameter 'module'"),
    ({"target": "nope", "module": "health"}, "unknown target 'nope'"),
    ({"target": "asr-v2", "module": "nope"}, "unknown module 'nope'"),
    ({"target": "http://169.254.169.254/latest", "module": "health"}, "refused"),
    ({"target": "http://127.0.0.1:1/", "module": "health"}, "refused"),
])
def test_bad_requests_get_400_with_a_one_line_reason(stack, query, fragment):
    status, body, _ = http_get(f"{stack.base}/probe?{urllib.parse.urlencode(query)}")
    text = body.decode()
    assert status == 400
    assert fragment in text
    assert text.count("\n") == 1


def test_bad_timeout_header_is_400(stack):
    status, text, _ = probe(stack, "asr-v2", "health", headers={"X-Prometheus-Scrape-Timeout-Seconds": "soon"})
    assert status == 400 and "X-Prometheus-Scrape-Timeout-Seconds" in text


def test_listed_url_is_probed_and_never_becomes_a_label(stack):
    url = stack.urls["v1"]
    for _ in range(2):  # the second run reuses the ad-hoc client and its detected API generation
        status, text, _ = probe(stack, url, "health")
        assert status == 200, text
        assert value(text, "whoasr_probe_success") == 1.0
        assert value(text, "whoasr_info", api="v1") == 1.0
        assert url not in text and url.split("//")[1] not in text
    status, text, _ = probe(stack, url + "/", "batch")  # the pattern allows a trailing slash
    assert status == 200 and value(text, "whoasr_probe_success") == 1.0
    # The other simulator is configured, but its URL is not in allowed_targets.
    status, text, _ = probe(stack, stack.urls["v2"], "health")
    assert status == 400 and "refused" in text


def test_excess_concurrent_probe_gets_503_at_once(stack):
    sim_fault(stack.urls["v2"], "recognize", latency=2.0)
    slow: dict = {}

    def hold():
        slow["answer"] = probe(stack, "asr-v2", "batch")

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        wait_until(lambda: sim_stats(stack.urls["v2"])["requests"].get("recognize", 0) >= 1, timeout=5,
                   what="the slow probe to reach the simulator")
        status, text, elapsed = probe(stack, "asr-v2", "health")
        assert status == 503, text
        assert "too many concurrent probes (limit 1)" in text
        assert elapsed < 1.5  # refused at once, not queued behind the 2 s run (room for a loaded machine)
    finally:
        holder.join(timeout=15)
    status, text, elapsed = slow["answer"]
    assert status == 200 and value(text, "whoasr_probe_success") == 1.0 and elapsed >= 2.0
    assert probe(stack, "asr-v2", "model_info")[0] == 200  # the slot is free again


def test_on_demand_runs_leave_scheduled_state_and_history_alone(stack):
    assert probe(stack, "asr-v2", "punctuation")[0] == 200
    metrics = http_get(stack.base + "/metrics")[1].decode()
    assert value(metrics, "whoasr_probe_success", target="asr-v2", probe="punctuation") is None
    assert value(metrics, "whoasr_probe_runs_total", target="asr-v2", probe="punctuation") is None
    assert json.loads(http_get(stack.base + "/api/history?target=asr-v2")[1]) == []


def test_openmetrics_is_negotiated(stack):
    status, body, headers = http_get(f"{stack.base}/probe?target=asr-v2&module=model_info",
                                     headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.decode().rstrip().endswith("# EOF")


@pytest.mark.parametrize("module,model", [("batch", "offline_asr"), ("punctuation", "punctuation")])
def test_unloaded_on_demand_model_is_read_afresh_and_not_loaded(stack, module, model):
    """The same fresh model check as scheduled runs: its read is in the debug trace, nothing is sent."""
    url = stack.urls["v2"]
    sim_put(url, f"models/{model}", {"loaded": False})
    before = sim_stats(url)
    status, text, _ = probe(stack, "asr-v2", module, debug=True)
    assert status == 200
    assert f"model check: {model} not loaded" in text and "FAILED model_not_loaded at model_check" in text, text
    after = sim_stats(url)
    assert after["on_demand_loads"][model] == 0
    assert after["requests"]["model_info"] == before["requests"]["model_info"] + 1
    endpoint = "recognize" if module == "batch" else "punctuation"
    assert after["requests"][endpoint] == before["requests"][endpoint]
