"""The alert chain with real parts: the exporter's series -> Prometheus's rules -> Alertmanager -> a webhook.

Each scenario breaks its own target (see conftest.TARGETS), restores it in `finally`, and ends by checking
what Alertmanager delivered: alert name, labels (target, severity, ...) and status.
"""

from __future__ import annotations

import json
import time

import pytest
import yaml

from exporter.config import parse_duration
from tests.e2e.stack import (FOR_LONG, HEALTHY, INVENTORY_DIR, JOB, NOT_APPLICABLE, RESPONSE_TIME_SECONDS, Stack,
                             expected_probes)
from tests.support import http_get, wait_until

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

    # A quiet day: default thresholds, the stream probe paced in real time (every session lasts the
    # 5.19 s clip, above response_time_seconds). Let every rule group evaluate twice before watching.
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

    wait_until(watched_long_enough, timeout=60, interval=0.5, what="rule groups to evaluate a few times")
    # The stream sessions really were paced in real time: each lasted about the clip (5.19 s), and the
    # latency rules had data to judge (the voice path by its first result and result lag).
    for target in HEALTHY:
        mean = stack.value(f'sum(whoasr_probe_duration_seconds_sum{{target="{target}", probe="stream"}}) / '
                           f'sum(whoasr_probe_duration_seconds_count{{target="{target}", probe="stream"}})')
        assert mean is not None and mean > RESPONSE_TIME_SECONDS, (target, mean)
        assert stack.value(f'whoasr:stream_first_result_seconds:p95_rate5m{{target="{target}"}}') is not None
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
        assert fired["annotations"]["runbook_url"] == f"{stack.exporter}/runbook#whoasrtargetdown"
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
        alert = stack.wait_delivered("WhoasrProbeModelNotLoaded", "firing", timeout=60, target=target,
                                     model="streaming_asr")
        assert alert["labels"]["probe"] == "stream"
        assert alert["labels"]["severity"] == "critical"
        # The probe-failing alert names the failure reason in its description (a query in the template).
        failing = stack.wait_delivered("WhoasrProbeFailing", "firing", timeout=60, target=target, probe="stream")
        assert "model_not_loaded" in failing["annotations"]["description"], failing["annotations"]
    finally:
        stack.sim_request(target, "PUT", "/-/sim/models/streaming_asr", {"loaded": True})


def test_latency_above_response_time(healthy_stack: Stack):
    stack, target = healthy_stack, "asr-slow"
    # 6 s on every recognition: above response_time_seconds (5 s), within the batch probe's timeout (8 s).
    stack.sim_request(target, "PUT", "/-/sim/faults/recognize", {"latency": 6})
    try:
        alert = stack.wait_delivered("WhoasrProbeLatencyHigh", "firing", timeout=90, target=target, probe="batch")
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
        # 97.5 % is above both the warning (80 %) and the critical (95 %) threshold: both fire in
        # Prometheus, and deploy/alertmanager.yml delivers the critical one only (it mutes the warning).
        alert = stack.wait_delivered("WhoasrCPUUsageHigh", "firing", target=target, severity="critical")
        assert "97.5%" in alert["annotations"]["description"], alert["annotations"]
        assert alert["receiver"] == "oncall"
        firing = {a["labels"]["severity"] for a in stack.alerts()
                  if a["labels"].get("alertname") == "WhoasrCPUUsageHigh" and a["labels"].get("target") == target
                  and a["state"] == "firing"}
        assert firing == {"warning", "critical"}
        assert not stack.webhook.delivered("WhoasrCPUUsageHigh", "firing", target=target, severity="warning")
    finally:
        stack.sim_request(target, "PUT", "/-/sim/system", {"cpu_percent": 12.5})


def test_one_outage_pages_once_and_resolves_as_one(healthy_stack: Stack):
    """asr-outage (v1, every default probe, timestamp not applicable) goes away for longer than every
    probe alert's `for:`, then comes back: Alertmanager, configured as shipped, pages once, sends at most
    one more notification group, and resolves the page once. The delivered links lead somewhere."""
    stack, target = healthy_stack, "asr-outage"
    passing = f'whoasr_probe_success{{job="{JOB}", target="{target}"}} == 1'
    wait_until(lambda: {s["metric"]["probe"] for s in stack.query(passing)} >= set(expected_probes(target)),
               timeout=60, interval=0.5, what=f"every probe passing on {target}")
    since = time.time()
    stack.stop_simulator(target)
    try:
        page = stack.wait_delivered("WhoasrTargetDown", "firing", target=target)
        assert page["receiver"] == "oncall"
        # Stay down longer than the longest `for:` of any alert on this target's probes (two intervals of
        # the 9 s batch probe), so a symptom that was going to fire would have.
        rules = yaml.safe_load((stack.render_dir / "alerts" / "whoasr-rules.yml").read_text())
        longest = max(parse_duration(rule["for"]) for group in rules["groups"] for rule in group["rules"]
                      if "for" in rule and rule["alert"] != "WhoasrExporterDown")
        time.sleep(longest + 3)
        pending = [a["labels"] for a in stack.alerts() if a["labels"].get("target") == target
                   and a["labels"]["alertname"] != "WhoasrTargetDown"]
        assert not pending, f"symptoms of the outage pending or firing in Prometheus: {pending}"
    finally:
        stack.restart_simulator(target)
    resolved = stack.wait_delivered("WhoasrTargetDown", "resolved", target=target)
    assert resolved["labels"] == page["labels"]
    # Back and probed again; then as long again for whatever the recovery might still fire.
    wait_until(lambda: {s["metric"]["probe"] for s in stack.query(passing)} >= set(expected_probes(target)),
               timeout=60, interval=0.5, what=f"every probe passing on {target} again")
    time.sleep(FOR_LONG + 3)

    mine = [n for n in stack.webhook.notifications() if n["received"] >= since
            and any(a["labels"].get("target") == target for a in n["alerts"])]
    pages = [n for n in mine if n["receiver"] == "oncall" and n["status"] == "firing"]
    assert len(pages) == 1, f"pages: {[(n['groupKey'], [a['labels'] for a in n['alerts']]) for n in pages]}"
    groups = {n["groupKey"] for n in mine if n["status"] == "firing"}
    assert len(groups) <= 2, f"notification groups: {sorted(groups)}"
    resolved_pages = [n for n in mine if n["receiver"] == "oncall" and n["status"] == "resolved"]
    assert len(resolved_pages) == 1 and resolved_pages[0]["groupKey"] == pages[0]["groupKey"], resolved_pages

    # The links: the runbook section is served by the exporter, the history holds the target's failures.
    status, body, _ = http_get(page["annotations"]["runbook_url"].split("#")[0])
    assert status == 200 and 'id="whoasrtargetdown"' in body.decode(), status
    assert page["annotations"]["runbook_url"].endswith("#whoasrtargetdown")
    status, body, _ = http_get(page["annotations"]["history_url"])
    history = json.loads(body)
    assert status == 200 and any(not result["success"] for result in history), page["annotations"]["history_url"]
    assert page["annotations"]["dashboard_url"].startswith(
        f"http://grafana.invalid:3000/d/whoasr-overview/whoasr-overview?viewPanel=")


def test_invalid_targets_file_warns_and_keeps_probing(healthy_stack: Stack):
    """An inventory job writes a broken targets file: the exporter keeps its last good targets, Prometheus
    fires WhoasrExporterTargetsFileInvalid (exporter-wide: no target label) to the team, and it resolves
    once the file is fixed, without a reload."""
    stack = healthy_stack
    inventory = stack.tmp / INVENTORY_DIR / "fleet.yml"
    good = inventory.read_text()
    ok = f'whoasr_exporter_targets_files_last_read_successful{{job="{JOB}"}}'
    wait_until(lambda: stack.value(ok) == 1, timeout=20, what="the inventory read")
    errors_before = stack.value(f'whoasr_exporter_targets_file_errors_total{{job="{JOB}"}}')
    inventory.write_text("- targets: [http://127.0.0.1:1\n")  # an unclosed flow sequence
    try:
        alert = stack.wait_delivered("WhoasrExporterTargetsFileInvalid", "firing", timeout=45)
        assert alert["labels"]["severity"] == "warning" and alert["receiver"] == "team"
        assert "target" not in alert["labels"] and alert["labels"]["job"] == JOB
        assert alert["annotations"]["runbook_url"] == f"{stack.exporter}/runbook#whoasrexportertargetsfileinvalid"
        assert stack.value(f'whoasr_exporter_targets_file_errors_total{{job="{JOB}"}}') > errors_before
        for target in HEALTHY:  # the configured targets are still probed
            assert stack.value(f'whoasr_up{{job="{JOB}", target="{target}"}}') == 1
    finally:
        inventory.write_text(good)
    stack.wait_delivered("WhoasrExporterTargetsFileInvalid", "resolved", timeout=45)
    assert stack.value(ok) == 1
