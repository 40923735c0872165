"""The alert chain in multi-target mode: a second Prometheus scrapes /probe?target=URL&module=KIND with the
job of deploy/prometheus/multi-target.yml (relabelling as shipped: `target` = the URL, `probe` = the module),
evaluates the same rendered rules and sends to the same Alertmanager (deploy/alertmanager.yml as shipped).
The rules know no mode: each scenario checks what the webhook received for the target's URL.
"""

from __future__ import annotations

import json

import pytest
import yaml

from exporter.config import parse_duration
from tests.e2e.stack import MULTI_HEALTHY as HEALTHY
from tests.e2e.stack import MULTI_JOB, MULTI_MODULES, Stack
from tests.support import http_get, wait_until

pytestmark = pytest.mark.e2e
SYNTHETIC = ("batch", "stream", "punctuation", "vad", "timestamp")


@pytest.fixture(scope="module")
def multi(healthy_stack: Stack) -> Stack:
    """The stack through the multi-target Prometheus, once every healthy URL passes every module."""
    stack = healthy_stack.multi_target()

    def missing() -> list[str]:
        passing = {(s["metric"]["target"], s["metric"]["probe"])
                   for s in stack.query(f'whoasr_probe_success{{job="{MULTI_JOB}"}} == 1')}
        up = {s["metric"]["target"] for s in stack.query(f'whoasr_up{{job="{MULTI_JOB}"}} == 1')}
        return ([f"{name} {module}" for name in HEALTHY for module in SYNTHETIC
                 if (name, module) != ("mt-v1", "timestamp") and name in MULTI_MODULES[module][0]
                 and (stack.simulators[name].url, module) not in passing]
                + [f"{name} up" for name in HEALTHY if name in MULTI_MODULES["health"][0]
                   and stack.simulators[name].url not in up])

    try:
        wait_until(lambda: not missing(), timeout=60, interval=1, what="every healthy URL passing in multi-target mode")
    except TimeoutError as exc:
        status, body, _ = http_get(f"{stack.prometheus}/api/v1/targets")
        errors = sorted({(t["labels"].get("probe"), t["lastError"]) for t in json.loads(body)["data"]["activeTargets"]
                         if t["lastError"]})
        raise AssertionError(f"{exc}: {missing()}\nscrape errors: {errors}") from None
    return stack


def url(stack: Stack, name: str) -> str:
    return stack.simulators[name].url


def test_healthy_targets_fire_nothing_in_multi_target_mode(multi: Stack):
    healthy = {url(multi, name) for name in HEALTHY}
    # v1's timestamp module answers whoasr_probe_applicable 0 and no success series: nothing to alert on.
    v1 = url(multi, "mt-v1")
    assert multi.value(f'whoasr_probe_applicable{{target="{v1}", probe="timestamp"}}') == 0
    assert multi.value(f'whoasr_probe_success{{target="{v1}", probe="timestamp"}}') is None
    # The SLIs are recorded from the /probe gauges.
    # The SLIs are recorded from the /probe gauges (a rule evaluation after the first runs).
    slis = [f'whoasr:probe_error:ratio_rate5m{{target="{url(multi, name)}", probe="batch"}} == 0'
            for name in ("mt-v1", "mt-v2")]
    slis.append(f'whoasr:stream_first_result_seconds:p95_rate5m{{target="{url(multi, "mt-stream")}"}} > 0')
    wait_until(lambda: all(multi.query(expr) for expr in slis), timeout=20, interval=0.5,
               what="the SLIs recorded from the /probe gauges")

    rules = yaml.safe_load((multi.render_dir / "alerts" / "whoasr-rules.yml").read_text())
    longest_for = max(parse_duration(rule["for"]) for group in rules["groups"] for rule in group["rules"]
                      if "for" in rule)
    start = multi.rule_evaluations()
    seen: list[dict] = []

    def watched_long_enough() -> bool:
        seen.extend(a for a in multi.alerts() if a["labels"].get("target") in healthy)
        now = multi.rule_evaluations()
        return all(now.get(group, 0) - count >= longest_for + 3 for group, count in start.items())

    wait_until(watched_long_enough, timeout=60, interval=0.5, what="rule groups to evaluate a few times")
    assert not seen, "alerts about healthy URLs: " + "; ".join(
        sorted({f"{a['labels']['alertname']} {a['labels'].get('probe')} {a['state']}" for a in seen}))
    assert not [a for a in multi.webhook.alerts() if a["labels"].get("target") in healthy]


def test_target_down_pages_in_multi_target_mode(multi: Stack):
    target = url(multi, "mt-down")
    wait_until(lambda: multi.value(f'whoasr_up{{job="{MULTI_JOB}", target="{target}"}}') == 1, timeout=30,
               what="mt-down up in multi-target mode")
    multi.stop_simulator("mt-down")
    try:
        fired = multi.wait_delivered("WhoasrTargetDown", "firing", timeout=45, target=target, job=MULTI_JOB)
        assert fired["receiver"] == "oncall" and fired["labels"]["probe"] == "health"
    finally:
        multi.restart_simulator("mt-down")
    multi.wait_delivered("WhoasrTargetDown", "resolved", timeout=45, target=target, job=MULTI_JOB)


def test_model_not_loaded_in_multi_target_mode(multi: Stack):
    target = url(multi, "mt-model")
    multi.sim_request("mt-model", "PUT", "/-/sim/models/streaming_asr", {"loaded": False})
    try:
        alert = multi.wait_delivered("WhoasrProbeModelNotLoaded", "firing", timeout=60, target=target,
                                     job=MULTI_JOB, model="streaming_asr")
        assert alert["labels"]["probe"] == "stream" and alert["labels"]["severity"] == "critical"
        failing = multi.wait_delivered("WhoasrProbeFailing", "firing", timeout=60, target=target, job=MULTI_JOB,
                                       probe="stream")
        assert "model_not_loaded" in failing["annotations"]["description"], failing["annotations"]
    finally:
        multi.sim_request("mt-model", "PUT", "/-/sim/models/streaming_asr", {"loaded": True})


def test_latency_in_multi_target_mode(multi: Stack):
    target = url(multi, "mt-slow")
    multi.sim_request("mt-slow", "PUT", "/-/sim/faults/recognize", {"latency": 6})
    try:
        alert = multi.wait_delivered("WhoasrProbeLatencyHigh", "firing", timeout=90, target=target, job=MULTI_JOB,
                                     probe="batch")
        assert "(threshold 5s)" in alert["annotations"]["description"], alert["annotations"]
    finally:
        multi.sim_request("mt-slow", "DELETE", "/-/sim/faults")


def test_cpu_in_multi_target_mode(multi: Stack):
    target = url(multi, "mt-cpu")
    multi.sim_request("mt-cpu", "PUT", "/-/sim/system", {"cpu_percent": 97.5})
    try:
        alert = multi.wait_delivered("WhoasrCPUUsageHigh", "firing", timeout=45, target=target, job=MULTI_JOB,
                                     severity="critical")
        assert "97.5%" in alert["annotations"]["description"], alert["annotations"]
    finally:
        multi.sim_request("mt-cpu", "PUT", "/-/sim/system", {"cpu_percent": 12.5})


def test_error_rate_in_multi_target_mode(multi: Stack):
    target = url(multi, "mt-slow")
    multi.sim_request("mt-slow", "PUT", "/-/sim/faults/recognize", {"status": 500})
    try:
        alert = multi.wait_delivered("WhoasrProbeErrorRateHigh", "firing", timeout=90, target=target, job=MULTI_JOB,
                                     probe="batch")
        # the most frequent reason, from the runs' whoasr_probe_failure_info
        assert "the most frequent reason is http_5xx" in alert["annotations"]["description"], alert["annotations"]
        assert alert["receiver"] == "team"
    finally:
        multi.sim_request("mt-slow", "DELETE", "/-/sim/faults")
