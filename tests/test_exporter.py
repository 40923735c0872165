"""The exporter as a real process against real simulator processes: exact values, every failure mode."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import time

import pytest

from tests.metrics_text import label_sets, value
from tests.support import LOOPBACK, Stack, free_port, http_get, sim_delete, sim_fault, sim_model, sim_put, wait_until

GIB = 1024**3


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("exporter"))
    try:
        v1_url = stack.simulator("v1", "v1")
        v2_url = stack.simulator("v2", "v2", "--unloaded", "vad,timestamp")
        doc_url = stack.simulator("doc", "v2", "--health-schema", "documented")
        faulty_url = stack.simulator("faulty", "v2")
        port = free_port()
        stack.serve(f"""
exporter: {{listen: "{LOOPBACK}:{port}", log_format: json, log_level: info}}
targets:
  - {{name: asr-v1, url: "{v1_url}", probes: []}}
  - {{name: asr-v2, url: "{v2_url}", probes: []}}
  - {{name: asr-doc, url: "{doc_url}", probes: []}}
  - {{name: asr-faulty, url: "{faulty_url}", probes: []}}
  - {{name: asr-refused, url: "http://{LOOPBACK}:{free_port()}", probes: []}}
schedules:
  health: {{interval: 1s, timeout: 500ms}}
  model_info: {{interval: 1s, timeout: 500ms}}
""", port)
        yield stack
    finally:
        stack.stop()


def test_v2_current_schema_values(stack):
    stack.wait_metric("whoasr_up", 1.0, target="asr-v2")
    stack.wait_metric("whoasr_info", 1.0, target="asr-v2", api="v2", version="1.0.0")
    text = stack.metrics()
    assert value(text, "whoasr_healthy", target="asr-v2") == 1.0
    assert value(text, "whoasr_system_cpu_usage_ratio", target="asr-v2") == 0.125
    assert value(text, "whoasr_system_memory_usage_ratio", target="asr-v2") == 0.375
    assert value(text, "whoasr_system_memory_total_bytes", target="asr-v2") == 16 * GIB
    assert value(text, "whoasr_system_memory_available_bytes", target="asr-v2") == 10 * GIB
    loaded = {l["model"]: value(text, "whoasr_model_loaded", target="asr-v2", model=l["model"])
              for l in label_sets(text, "whoasr_model_loaded") if l["target"] == "asr-v2"}
    assert loaded == {"streaming_asr": 1.0, "offline_asr": 1.0, "punctuation": 1.0, "vad": 0.0, "timestamp": 0.0}
    assert value(text, "whoasr_models_loaded", target="asr-v2") == 3.0
    # the current schema sends no disk or connection figures: no series, not zeros
    assert value(text, "whoasr_system_disk_usage_ratio", target="asr-v2") is None
    assert value(text, "whoasr_active_connections", target="asr-v2") is None


def test_v1_is_detected(stack):
    # /model/info (no gate) may answer before /health does: its API detection can come first.
    stack.wait_metric("whoasr_info", 1.0, target="asr-v1", api="v1", version="1.0.0")
    stack.wait_metric("whoasr_up", 1.0, target="asr-v1")


def test_documented_schema_values(stack):
    stack.wait_metric("whoasr_up", 1.0, target="asr-doc")
    text = stack.metrics()
    assert value(text, "whoasr_system_cpu_usage_ratio", target="asr-doc") == 0.125
    assert value(text, "whoasr_system_memory_usage_ratio", target="asr-doc") == 0.375
    assert value(text, "whoasr_system_disk_usage_ratio", target="asr-doc") == 0.25
    assert value(text, "whoasr_active_connections", target="asr-doc") == 0.0
    memory = {l["model"] for l in label_sets(text, "whoasr_model_memory_bytes") if l["target"] == "asr-doc"}
    assert memory, "documented schema reports model memory"
    for model in memory:
        assert value(text, "whoasr_model_memory_bytes", target="asr-doc", model=model) > 0
    requests = [l for l in label_sets(text, "whoasr_model_requests_total") if l["target"] == "asr-doc"]
    assert requests


def test_runtime_changes_follow_the_simulator(stack):
    url = stack.urls["v2"]
    sim_model(url, "vad", loaded=True)
    sim_put(url, "system", {"cpu_percent": 87.5, "memory_percent": "unknown"})
    try:
        stack.wait_metric("whoasr_model_loaded", 1.0, target="asr-v2", model="vad")
        stack.wait_metric("whoasr_system_cpu_usage_ratio", 0.875, target="asr-v2")
        stack.wait_metric("whoasr_system_memory_usage_ratio", None, target="asr-v2")  # "unknown": no series
        assert value(stack.metrics(), "whoasr_up", target="asr-v2") == 1.0
    finally:
        sim_model(url, "vad", loaded=False)
        sim_put(url, "system", {"cpu_percent": 12.5, "memory_percent": 37.5})


def test_refused_connection(stack):
    stack.wait_metric("whoasr_up", 0.0, target="asr-refused")
    text = stack.metrics()
    assert value(text, "whoasr_scrape_errors_total", target="asr-refused", endpoint="health",
                 reason="connect_error") >= 1
    assert value(text, "whoasr_info", target="asr-refused") is None  # never detected


@pytest.mark.parametrize("fault,reason", [
    ({"hang": True}, "timeout"),
    ({"latency": 2.0}, "timeout"),
    ({"status": 500}, "http_5xx"),
    ({"status": 404}, "http_4xx"),
    ({"garbage": True}, "bad_response"),
    ({"wrong_shape": True}, "bad_response"),
])
def test_failing_target_is_down_with_reason_and_metrics_stay_prompt(stack, fault, reason):
    url = stack.urls["faulty"]

    def errors():
        return value(stack.metrics(), "whoasr_scrape_errors_total", target="asr-faulty", endpoint="health",
                     reason=reason) or 0.0

    before = errors()
    sim_fault(url, "health", **fault)
    try:
        wait_until(lambda: errors() > before, timeout=10, what=f"a {reason} scrape error")
        stack.wait_metric("whoasr_up", 0.0, target="asr-faulty")
        assert value(stack.metrics(), "whoasr_healthy", target="asr-faulty") is None
        # /metrics reads state only: it answers at once while the target hangs or fails
        worst = 0.0
        for _ in range(20):
            started = time.monotonic()
            status, _, _ = http_get(stack.base + "/metrics", timeout=2)
            worst = max(worst, time.monotonic() - started)
            assert status == 200
        assert worst < 0.5, f"/metrics took {worst:.3f}s while the target was failing"
    finally:
        sim_delete(url, "faults")
    stack.wait_metric("whoasr_up", 1.0, target="asr-faulty")
    assert stack.exporter.alive()


def test_model_info_failure_is_counted_separately(stack):
    url = stack.urls["faulty"]
    sim_fault(url, "model_info", status=503)
    try:
        wait_until(lambda: (value(stack.metrics(), "whoasr_scrape_errors_total", target="asr-faulty",
                                  endpoint="model_info", reason="http_5xx") or 0) > 0, timeout=10,
                   what="model_info error")
    finally:
        sim_delete(url, "faults")


def test_openmetrics_and_text_formats(stack):
    status, body, headers = http_get(stack.base + "/metrics", headers={"Accept": "application/openmetrics-text"})
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.decode().rstrip().endswith("# EOF")
    status, body, headers = http_get(stack.base + "/metrics")
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "whoasr_exporter_build_info{" in body.decode()


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool not installed (Debian package prometheus)")
def test_promtool_check_metrics(stack):
    stack.wait_metric("whoasr_up", 1.0, target="asr-doc")
    body = http_get(stack.base + "/metrics")[1]
    proc = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()


def test_landing_page_and_health_endpoints(stack):
    stack.wait_metric("whoasr_info", 1.0, target="asr-v1", api="v1", version="1.0.0")
    status, body, headers = http_get(stack.base + "/")
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    for name in ("asr-v1", "asr-v2", "asr-doc", "asr-refused"):
        assert f'data-target="{name}"' in page
    assert "up · v1</span>" in page and "up · v2</span>" in page
    assert 'href="/metrics"' in page
    assert http_get(stack.base + "/-/healthy")[0] == 200
    assert http_get(stack.base + "/-/ready")[0] == 200


def test_logs_are_json_lines_with_target_and_reason(stack):
    stack.wait_metric("whoasr_up", 0.0, target="asr-refused")
    events = [json.loads(line) for line in stack.exporter.output().splitlines() if line.startswith("{")]
    failures = [e for e in events if e.get("event") == "scrape failed" and e.get("target") == "asr-refused"]
    assert failures and failures[0]["reason"] == "connect_error" and failures[0]["endpoint"] in ("health", "model_info")


@pytest.mark.parametrize("accept_encoding,compressed", [
    ("gzip", True), ("deflate, gzip;q=0.5, br", True), ("*", True), ("x-gzip", True),
    (None, False), ("identity", False), ("gzip;q=0", False), ("br, deflate", False), ("*, gzip;q=0", False),
])
def test_metrics_are_gzipped_when_asked_and_only_then(stack, accept_encoding, compressed):
    headers = {"Accept-Encoding": accept_encoding} if accept_encoding is not None else {}
    status, body, got = http_get(stack.base + "/metrics", headers=headers)
    assert status == 200 and got["Vary"] == "Accept-Encoding"
    assert got.get("Content-Encoding") == ("gzip" if compressed else None)
    text = (gzip.decompress(body) if compressed else body).decode()
    assert text.startswith("# HELP whoasr_") and "\nwhoasr_exporter_build_info{" in text
    assert int(got["Content-Length"]) == len(body)
    if compressed:
        assert len(body) < len(text) / 4
