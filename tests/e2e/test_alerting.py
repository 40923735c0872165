"""The alert chain with real parts: the exporter's series -> Prometheus's rules -> Alertmanager -> a webhook.

Each scenario breaks its own target (see conftest.TARGETS), restores it in `finally`, and ends by checking
what Alertmanager delivered: alert name, labels (target, severity, ...) and status.
"""

from __future__ import annotations

import pytest
import yaml

from exporter.config import parse_duration
from tests.e2e.stack import HEALTHY, JOB, NOT_APPLICABLE, RESPONSE_TIME_SECONDS, Stack, expected_probes
from tests.support import wait_until

pytestmark = pytest.mark.e2e


def _about_healthy(labels: dict) -> bool:
    """An alert concerning a healthy target, or the whole exporter (no target label)."""
    return labels.get("target") in HEALTHY or "target" not in labels


def test_healthy_targets_fire_nothing(healthy_stack: Stack):
    stack = healthy_stack
    assert stack.value(f'up{{job="{JOB}"}}') == 1
    for target in HEALTHY:
        assert stack.value(f'whoasr_up{{job="{JOB}", target="{target}"}}') == 1
        assert stack.value(f'whoasr_healthy{{job="{JOB}", target="{target}"}}') == 1
        for kind in expected_probes(target):
            assert stack.value(f'whoasr_probe_success{{job="{JOB}", target="{target}", probe="{kind}"}}') == 1
        for kind in NOT_APPLICABLE.get(target, ()):
            assert stack.value(f'whoasr_probe_success{{job="{JOB}", target="{target}", probe="{kind}"}}') is None

    # Until the first scrape, absent(whoasr_up{...}) made WhoasrTargetMissing pending (never firing: its
    # `for:` outlasts that). Let every rule group evaluate twice on the healthy series before watching.
    def evaluated(times: int, since: dict[str, float]):
        now = stack.rule_evaluations()
        return all(now.get(group, 0) - count >= times for group, count in since.items())

    before = stack.rule_evaluations()
    assert before, "Prometheus has evaluated no rule group"
    wait_until(lambda: evaluated(2, before), timeout=10, interval=0.2, what="rule groups to evaluate twice")

    # Then watch them evaluate (once a second) longer than the longest `for:` of the rendered rules, plus a
    # margin: nothing about a healthy target may even be pending in that time.
    rules = yaml.safe_load((stack.render_dir / "alerts" / "whoasr-rules.yml").read_text())
    longest_for = max(parse_duration(rule["for"]) for group in rules["groups"] for rule in group["rules"]
                      if "for" in rule)
    start = stack.rule_evaluations()
    seen: list[dict] = []

    def watched_long_enough() -> bool:
        seen.extend(a for a in stack.alerts() if _about_healthy(a["labels"]))
        return evaluated(longest_for + 3, start)

    wait_until(watched_long_enough, timeout=30, interval=0.5, what="rule groups to evaluate a few times")
    assert not seen, "alerts about healthy targets: " + "; ".join(
        sorted({f"{a['labels']['alertname']}{ {k: v for k, v in a['labels'].items() if k != 'alertname'} } "
                f"{a['state']}" for a in seen}))
    delivered = [a["labels"] for a in stack.webhook.alerts() if _about_healthy(a["labels"])]
    assert not delivered, f"Alertmanager delivered alerts about healthy targets: {delivered}"
    assert not stack.webhook.errors()


def test_target_down_fires_then_resolves(healthy_stack: Stack):
    stack, target = healthy_stack, "asr-down"
    wait_until(lambda: stack.value(f'whoasr_up{{target="{target}"}}') == 1, timeout=20, what=f"{target} up")
    stack.stop_simulator(target)
    try:
        fired = stack.wait_delivered("WhoasrTargetDown", "firing", target=target)
        assert fired["labels"]["severity"] == "critical"
        assert fired["labels"]["job"] == JOB
        assert target in fired["annotations"]["summary"]
        assert fired["annotations"]["runbook_url"].endswith("#whoasrtargetdown")
        assert stack.value(f'whoasr_up{{target="{target}"}}') == 0
    finally:
        stack.restart_simulator(target)
    resolved = stack.wait_delivered("WhoasrTargetDown", "resolved", target=target)
    assert resolved["labels"] == fired["labels"]
    assert resolved["received"] > fired["received"]
    assert stack.value(f'whoasr_up{{target="{target}"}}') == 1


def test_stream_model_not_loaded(healthy_stack: Stack):
    stack, target = healthy_stack, "asr-model"
    failures = f'whoasr_probe_failures_total{{target="{target}", probe="stream", reason="model_not_loaded"}}'
    stack.sim_request(target, "PUT", "/-/sim/models/streaming_asr", {"loaded": False})
    try:
        wait_until(lambda: (stack.value(failures) or 0) >= 1, timeout=20, interval=0.5,
                   what="a model_not_loaded stream failure in Prometheus")
        alert = stack.wait_delivered("WhoasrProbeModelNotLoaded", "firing", target=target, model="streaming_asr")
        assert alert["labels"]["probe"] == "stream"
        assert alert["labels"]["severity"] == "critical"
        # The probe-failing alert names the failure reason in its description (a query in the template).
        failing = stack.wait_delivered("WhoasrProbeFailing", "firing", target=target, probe="stream")
        assert "model_not_loaded" in failing["annotations"]["description"], failing["annotations"]
    finally:
        stack.sim_request(target, "PUT", "/-/sim/models/streaming_asr", {"loaded": True})


def test_latency_above_response_time(healthy_stack: Stack):
    stack, target = healthy_stack, "asr-slow"
    # 1.5 s on every recognition: above response_time_seconds (1 s), within the batch probe's timeout.
    stack.sim_request(target, "PUT", "/-/sim/faults/recognize", {"latency": 1.5})
    try:
        alert = stack.wait_delivered("WhoasrProbeLatencyHigh", "firing", timeout=45, target=target, probe="batch")
        assert alert["labels"]["severity"] == "warning"
        assert f"(threshold {RESPONSE_TIME_SECONDS:g}s)" in alert["annotations"]["description"], alert["annotations"]
    finally:
        stack.sim_request(target, "DELETE", "/-/sim/faults")


def test_cpu_above_thresholds(healthy_stack: Stack):
    stack, target = healthy_stack, "asr-cpu"
    stack.sim_request(target, "PUT", "/-/sim/system", {"cpu_percent": 97.5})
    try:
        wait_until(lambda: stack.value(f'whoasr_system_cpu_usage_ratio{{target="{target}"}}') == 0.975,
                   timeout=10, what="CPU 97.5% in Prometheus")
        # 97.5 % is above both the warning (80 %) and the critical (95 %) threshold.
        for severity in ("warning", "critical"):
            alert = stack.wait_delivered("WhoasrCPUUsageHigh", "firing", target=target, severity=severity)
            assert "97.5%" in alert["annotations"]["description"], alert["annotations"]
    finally:
        stack.sim_request(target, "PUT", "/-/sim/system", {"cpu_percent": 12.5})
