"""/probe when the target's /health gate keeps a run from starting (a real exporter process and a real
simulator): Prometheus scrapes /probe?module=health and the probe modules independently, so a /health
often arrives while a probe of the same target runs. It must not become a false whoasr_up 0 (it was one:
a multi-target report showed a healthy target up 85 % of the time). A /health that cannot start answers
the target's last verdict while that is recent; a run with nothing to answer gives no verdict at all."""

from __future__ import annotations

import threading
import time
import urllib.parse

import pytest

from tests.metrics_text import value
from tests.support import LOOPBACK, Stack, free_port, http_get, sim_fault, sim_reset, sim_stats, wait_until

pytestmark = pytest.mark.timeout(60)
HEADERS = {"X-Prometheus-Scrape-Timeout-Seconds": "2"}  # a 1.5 s budget: the gate is waited for 0.75 s
HEALTH_INTERVAL = 6  # seconds: how old a last verdict may be and still be answered


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("probe-gate"))
    try:
        url = stack.simulator("v2", "v2")
        port = free_port()
        # The target is a raw URL: no scheduled run of it holds the gate or answers for it.
        stack.serve(f"""
exporter:
  listen: "{LOOPBACK}:{port}"
  log_format: json
  allowed_targets: ['{url.replace(".", "[.]")}/?']
targets: []
schedules:
  health: {{interval: {HEALTH_INTERVAL}s, timeout: 5s}}
""", port)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(autouse=True)
def clean(stack):
    sim_reset(stack.urls["v2"])
    yield
    sim_reset(stack.urls["v2"])


def probe(stack, module: str, headers: dict | None = HEADERS) -> tuple[int, str]:
    query = urllib.parse.urlencode({"target": stack.urls["v2"], "module": module})
    status, body, _ = http_get(f"{stack.base}/probe?{query}", timeout=20, headers=headers)
    return status, body.decode()


def requests(stack, endpoint: str) -> int:
    return sim_stats(stack.urls["v2"])["requests"].get(endpoint, 0)


class Held:
    """A /probe of `module` running in a thread while the test goes on (within its schedule timeout)."""

    def __init__(self, stack, module: str, endpoint: str):
        self.answer: tuple[int, str] | None = None
        self.thread = threading.Thread(target=lambda: setattr(self, "answer", probe(stack, module, None)))
        before = requests(stack, endpoint)
        self.thread.start()
        wait_until(lambda: requests(stack, endpoint) > before, timeout=5, what=f"{module} to reach the simulator")

    def join(self) -> tuple[int, str]:
        self.thread.join(timeout=20)
        assert self.answer is not None
        return self.answer


def test_health_held_back_by_a_probe_answers_the_last_verdict_then_none(stack):
    asked = time.time()
    status, text = probe(stack, "health")
    assert status == 200 and value(text, "whoasr_up") == 1.0
    assert value(text, "whoasr_probe_result_age_seconds") == 0.0  # a fresh run

    sim_fault(stack.urls["v2"], "punctuation", latency=2.5)
    held = Held(stack, "punctuation", "punctuation")
    health_calls = requests(stack, "health")
    status, text = probe(stack, "health")
    assert status == 200
    assert value(text, "whoasr_up") == 1.0  # not a timeout: the target did not fail, the run never started
    assert value(text, "whoasr_probe_success") == 1.0
    age = value(text, "whoasr_probe_result_age_seconds")
    assert age is not None and 0 < age <= time.time() - asked
    assert value(text, "whoasr_probe_not_started") is None
    assert requests(stack, "health") == health_calls  # no /health sent alongside the probe
    assert value(held.join()[1], "whoasr_probe_success") == 1.0

    # Older than schedules.health.interval: no verdict, neither up nor down (Prometheus records a gap).
    wait_until(lambda: time.time() - asked > HEALTH_INTERVAL + 0.5, timeout=HEALTH_INTERVAL + 2,
               what="the last verdict to age")
    held = Held(stack, "punctuation", "punctuation")
    status, text = probe(stack, "health")
    assert status == 200
    assert value(text, "whoasr_probe_not_started") == 1.0
    for family in ("whoasr_up", "whoasr_probe_success", "whoasr_probe_failure_info", "whoasr_probe_result_age_seconds"):
        assert family not in text, text
    held.join()


def test_probe_held_back_by_health_gives_no_verdict(stack):
    sim_fault(stack.urls["v2"], "health", hang=True)  # (a slow /health would stall the simulator itself)
    held = Held(stack, "health", "health")
    vad_calls = requests(stack, "vad")
    status, text = probe(stack, "vad")
    assert status == 200
    assert value(text, "whoasr_probe_not_started") == 1.0
    assert "whoasr_probe_success" not in text and "whoasr_probe_failure_info" not in text, text
    assert requests(stack, "vad") == vad_calls
    assert value(held.join()[1], "whoasr_up") == 0.0  # the hang timed out after 5 s
    sim_reset(stack.urls["v2"])
    status, text = probe(stack, "vad")  # and with the gate free, a verdict as usual
    assert value(text, "whoasr_probe_success") == 1.0 and "whoasr_probe_not_started" not in text
