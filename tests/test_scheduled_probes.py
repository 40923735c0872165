"""Scheduled probes in a real exporter process against real simulators: results become the right metrics
and history; a slow target produces skips, not a pile-up; an unloaded model is never loaded on demand, even
when it was unloaded after the last scheduled /model/info scrape."""

from __future__ import annotations

import html
import json
import re
import urllib.parse

import pytest

from exporter.kinds import DEFAULT_PROBES, MODULES
from tests.metrics_text import value
from tests.support import (LOOPBACK, Stack, free_port, http_get, http_post, sim_admin, sim_fault, sim_model,
                           sim_reset, sim_stats, wait_until)

KINDS = (*DEFAULT_PROBES, "timestamp")  # timestamp is opt-in (whoAsr v2 keeps its uploads): listed
MODELS = {"batch": "offline_asr", "stream": "streaming_asr", "punctuation": "punctuation", "vad": "vad",
          "timestamp": "timestamp"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("scheduled"))
    try:
        v1_url = stack.simulator("asr-v1", "v1")
        v2_url = stack.simulator("asr-v2", "v2")
        slow_url = stack.simulator("asr-slow", "v2")
        port = free_port()
        stack.serve(f"""
exporter: {{listen: "{LOOPBACK}:{port}", log_format: json}}
targets:
  - {{name: asr-v1, url: "{v1_url}", probes: [{", ".join(KINDS)}]}}
  - {{name: asr-v2, url: "{v2_url}", probes: [{", ".join(KINDS)}]}}
  - {{name: asr-slow, url: "{slow_url}", probes: [batch]}}
schedules:
  health: {{interval: 5s, timeout: 2s}}
  model_info: {{interval: 500ms, timeout: 500ms}}
  batch: {{interval: 1s, timeout: 1s}}
  stream: {{interval: 2s, timeout: 2s}}
  punctuation: {{interval: 1s, timeout: 1s}}
  vad: {{interval: 1s, timeout: 1s}}
  timestamp: {{interval: 1s, timeout: 1s}}
probes:
  stream: {{pace: fast}}
""", port)
        yield stack
    finally:
        stack.stop()


def history(stack: Stack, **query) -> list[dict]:
    return json.loads(http_get(f"{stack.base}/api/history?{urllib.parse.urlencode(query)}", timeout=2)[1])


def test_every_probe_passes_and_its_metrics_follow(stack):
    def all_passed():
        text = stack.metrics()
        return all(value(text, "whoasr_probe_success", target="asr-v2", probe=k) == 1.0 for k in KINDS)

    wait_until(all_passed, timeout=20, interval=0.2, what="every v2 probe passed once")
    text = stack.metrics()
    for kind in KINDS:
        assert value(text, "whoasr_probe_info", target="asr-v2", probe=kind, model=MODELS[kind]) == 1.0
        assert value(text, "whoasr_probe_runs_total", target="asr-v2", probe=kind) >= 1
        assert value(text, "whoasr_probe_duration_seconds_count", target="asr-v2", probe=kind) >= 1
    for kind in ("batch", "stream"):
        assert value(text, "whoasr_probe_character_error_rate", target="asr-v2", probe=kind) == 0.0
        runs = value(text, "whoasr_probe_runs_total", target="asr-v2", probe=kind)
        reference = value(text, "whoasr_probe_reference_characters_total", target="asr-v2", probe=kind)
        assert reference % 11 == 0 and reference >= 11  # the clip's 11 characters per compared run
        assert value(text, "whoasr_probe_character_errors_total", target="asr-v2", probe=kind) == 0.0
        assert runs >= reference / 11
    # skip counters exist from zero (their label sets are known), so dashboards show 0, not "No data"
    assert value(text, "whoasr_probe_skipped_total", target="asr-v2", probe="vad") is not None
    assert value(text, "whoasr_scrape_skipped_total", target="asr-v2", endpoint="model_info") is not None
    assert value(text, "whoasr_stream_first_result_seconds_count", target="asr-v2") >= 1
    assert value(text, "whoasr_stream_partial_results_total", target="asr-v2") >= 1
    assert value(text, "whoasr_probe_audio_seconds_total", target="asr-v2", probe="batch") > 5
    # the latency SLI bound (response_time_seconds, 5 s) is an exact bucket
    assert value(text, "whoasr_probe_duration_seconds_bucket", target="asr-v2", probe="batch", le="5.0") >= 1


def test_timestamp_on_v1_is_not_applicable_not_failing(stack):
    wait_until(lambda: value(stack.metrics(), "whoasr_probe_success", target="asr-v1", probe="batch") == 1.0,
               timeout=20, what="v1 batch passed")
    wait_until(lambda: any(r["probe"] == "timestamp" for r in history(stack, target="asr-v1")), timeout=10,
               what="a v1 timestamp run in history")
    text = stack.metrics()
    assert value(text, "whoasr_probe_success", target="asr-v1", probe="timestamp") is None
    assert value(text, "whoasr_probe_info", target="asr-v1", probe="timestamp", model="timestamp") is None
    assert value(text, "whoasr_probe_info", target="asr-v1", probe="batch", model="offline_asr") == 1.0
    runs = [r for r in history(stack, target="asr-v1", probe="timestamp")]
    assert runs and all(not r["applicable"] and r["reason"] is None for r in runs)


def test_slow_target_produces_skips_not_a_pile_up(stack):
    url = stack.urls["asr-slow"]
    # /health answers past its 2 s timeout, holding the target's gate (no probe overlaps /health) for 2 s
    # every 5 s, and recognition hangs until each run's 1 s timeout: batch runs, due every second, are
    # still going when the next is due.
    sim_fault(url, "health", latency=3)
    sim_fault(url, "recognize", hang=True)
    try:
        def skipped_and_timed_out():
            text = stack.metrics()
            return ((value(text, "whoasr_probe_skipped_total", target="asr-slow", probe="batch") or 0) >= 2
                    and (value(text, "whoasr_probe_failures_total", target="asr-slow", probe="batch",
                               reason="timeout") or 0) >= 2)

        wait_until(skipped_and_timed_out, timeout=30, interval=0.2, what="skips and timeouts on the slow target")
        # one run at a time: never more recognition requests in flight at the server than one
        stats = sim_stats(url)
        text = stack.metrics()
        runs = value(text, "whoasr_probe_runs_total", target="asr-slow", probe="batch")
        assert stats["requests"]["recognize"] <= runs + 1
        failures = history(stack, target="asr-slow", probe="batch")
        assert failures[0]["reason"] == "timeout" and failures[0]["success"] is False
        assert value(text, "whoasr_probe_last_failure_info", target="asr-slow", probe="batch", reason="timeout") == 1.0
    finally:
        sim_reset(url)
    wait_until(lambda: value(stack.metrics(), "whoasr_probe_success", target="asr-slow", probe="batch") == 1.0,
               timeout=20, what="slow target recovered")
    assert value(stack.metrics(), "whoasr_probe_last_failure_info", target="asr-slow", probe="batch",
                 reason="timeout") is None
    assert stack.exporter.alive()


def test_known_unloaded_model_is_not_loaded_on_demand(stack):
    url = stack.urls["asr-v2"]
    sim_admin(url, "DELETE", "stats")
    sim_model(url, "offline_asr", loaded=False)
    try:
        def refused():
            text = stack.metrics()
            return (value(text, "whoasr_model_loaded", target="asr-v2", model="offline_asr") == 0.0
                    and (value(text, "whoasr_probe_failures_total", target="asr-v2", probe="batch",
                               reason="model_not_loaded") or 0) >= 1)

        wait_until(refused, timeout=20, interval=0.2, what="batch refused with model_not_loaded")
        before = sim_stats(url)["requests"].get("recognize", 0)
        failures_before = value(stack.metrics(), "whoasr_probe_failures_total", target="asr-v2", probe="batch",
                                reason="model_not_loaded")
        wait_until(lambda: value(stack.metrics(), "whoasr_probe_failures_total", target="asr-v2", probe="batch",
                                 reason="model_not_loaded") >= failures_before + 2, timeout=20,
                   what="two more refused runs")
        assert sim_stats(url)["requests"].get("recognize", 0) == before  # nothing was sent
        assert sim_stats(url)["on_demand_loads"]["offline_asr"] == 0
        assert sim_admin(url, "GET", "models")["offline_asr"]["loaded"] is False  # and nothing loaded it
    finally:
        sim_reset(url)


@pytest.fixture(scope="module")
def rare_model_info(tmp_path_factory):
    """An exporter that reads /model/info on its schedule only once a minute, probing every 500 ms."""
    stack = Stack(tmp_path_factory.mktemp("rare-model-info"))
    try:
        url = stack.simulator("asr", "v2")
        port = free_port()
        stack.serve(f"""
exporter: {{listen: "{LOOPBACK}:{port}", log_format: json}}
targets:
  - {{name: asr, url: "{url}", probes: [batch, punctuation]}}
schedules:
  health: {{interval: 60s, timeout: 2s}}
  model_info: {{interval: 60s, timeout: 2s}}
  batch: {{interval: 500ms, timeout: 500ms}}
  punctuation: {{interval: 500ms, timeout: 500ms}}
""", port)
        yield stack
    finally:
        stack.stop()


def test_unload_between_the_scheduled_read_and_the_next_probe(rare_model_info):
    """The issue's reproduction: both models unloaded through whoAsr's own API after passing runs, long
    before the next scheduled /model/info scrape. The next runs read the state afresh and send nothing;
    no model is loaded back. The scheduled gauge still says loaded: the probes did not rely on it."""
    stack = rare_model_info
    url = stack.urls["asr"]

    def passed(kind):
        return (value(stack.metrics(), "whoasr_probe_success", target="asr", probe=kind) or 0) == 1.0

    def scraped():  # the first scheduled runs are spread over up to 10 s; the next come a minute later
        text = stack.metrics()
        return all(value(text, "whoasr_last_scrape_timestamp_seconds", target="asr", endpoint=e) is not None
                   for e in ("health", "model_info")) and \
            value(text, "whoasr_model_loaded", target="asr", model="offline_asr") == 1.0

    wait_until(lambda: passed("batch") and passed("punctuation") and scraped(), timeout=20, interval=0.2,
               what="batch and punctuation passing, model state scraped")
    for model in ("offline_asr", "punctuation"):
        assert http_post(f"{url}/model/unload/{model}")[0] == 200
    sim_admin(url, "DELETE", "stats")

    def refused(kind, count):
        return (value(stack.metrics(), "whoasr_probe_failures_total", target="asr", probe=kind,
                      reason="model_not_loaded") or 0) >= count

    wait_until(lambda: refused("batch", 4) and refused("punctuation", 4), timeout=30, interval=0.2,
               what="four refused runs of each")
    stats = sim_stats(url)
    assert stats["on_demand_loads"] == {m: 0 for m in stats["on_demand_loads"]}
    assert stats["requests"]["recognize"] == 0 and stats["requests"]["punctuation"] == 0
    assert stats["requests"]["model_info"] >= 8  # one fresh read per run
    models = sim_admin(url, "GET", "models")
    assert models["offline_asr"]["loaded"] is False and models["punctuation"]["loaded"] is False
    # Both scheduled scrapes ran before the unload and are not due again for a minute, so the scheduled
    # gauge is stale and still says loaded: the probes did not use it.
    assert sim_stats(url)["requests"].get("health", 0) == 0
    assert value(stack.metrics(), "whoasr_model_loaded", target="asr", model="offline_asr") == 1.0


def test_history_and_status_page_show_failures(stack):
    url = stack.urls["asr-v2"]
    sim_fault(url, "vad", status=500)
    try:
        wait_until(lambda: any(r["reason"] == "http_5xx" for r in history(stack, target="asr-v2", probe="vad")),
                   timeout=20, what="a vad http_5xx in history")
    finally:
        sim_reset(url)
    failure = next(r for r in history(stack, target="asr-v2", probe="vad") if r["reason"] == "http_5xx")
    assert failure["http_status"] == 500 and "injected" in failure["error_body"]
    assert len(history(stack, limit=1)) == 1
    assert http_get(f"{stack.base}/api/history?limit=0")[0] == 400
    # A failure followed by many healthy runs stays on the status page, with a link to its kept trace.
    wait_until(lambda: sum(r["started_at"] > failure["started_at"] for r in history(stack)) >= 40,
               timeout=30, interval=0.5, what="40 newer runs")
    page = http_get(stack.base + "/")[1].decode()
    assert "http_5xx" in page and "<td>asr-v2</td>" in page
    links = [html.unescape(link) for link in re.findall(r'href="(/api/history\?id=\d+)"', page)]
    linked = [json.loads(http_get(stack.base + link)[1]) for link in links]
    vad = [run for run in linked if run["target"] == "asr-v2" and run["probe"] == "vad"]
    assert vad, f"no link to the kept vad failure among {links}"
    assert all(run["reason"] == "http_5xx" and any("HTTP 500" in line for line in run["trace"]) for run in vad)
    kept = json.loads(http_get(f"{stack.base}/api/history?id={failure['id']}")[1])
    assert kept["reason"] == "http_5xx" and any("HTTP 500" in line for line in kept["trace"])
    assert http_get(f"{stack.base}/api/history?id=999999999")[0] == 404
    failures = history(stack, failed="true", trace="true")
    assert failures and all(not r["success"] and r["trace"] for r in failures)


def test_one_metric_name_has_one_type_on_metrics_and_probe(stack):
    """Scheduled /metrics and on-demand /probe end up in one Prometheus (deploy/prometheus/multi-target.yml):
    an OpenMetrics family name must have the same type in both answers."""
    wait_until(lambda: value(stack.metrics(), "whoasr_stream_first_result_seconds_count", target="asr-v2"),
               timeout=20, interval=0.2, what="a stream run")
    openmetrics = {"Accept": "application/openmetrics-text; version=1.0.0"}
    types: dict[str, set[str]] = {}
    answers = [http_get(stack.base + "/metrics", timeout=5, headers=openmetrics)[1]]
    for module in MODULES:
        answers.append(http_get(f"{stack.base}/probe?target=asr-v2&module={module}", timeout=10,
                                headers=openmetrics)[1])
    for body in answers:
        for line in body.decode().splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split()
                types.setdefault(name, set()).add(kind)
    assert "whoasr_probe_duration_seconds" in types and "whoasr_probe_run_duration_seconds" in types
    assert {name: kinds for name, kinds in types.items() if len(kinds) > 1} == {}
