"""`report`'s own logic without Prometheus: arguments, the exit-1 gate, alert episodes, sparklines.
Against a real Prometheus: tests/e2e/test_report.py."""

from __future__ import annotations

import argparse
import base64

import pytest

from exporter.prometheus_api import Series
from exporter.report import Queries, Report, SLOReport, TargetReport, alert_episodes
from exporter.report_cli import UsageError, auth_headers, parse_range, prometheus_url
from exporter.report_text import duration, sparkline


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("24h", 86400), ("7d", 604800),
                                           ("2w", 1209600), ("1500ms", 1.5)])
def test_range(text, seconds):
    assert parse_range(text) == seconds


@pytest.mark.parametrize("text", ["", "24", "1y", "-5m", "1h30m", "0s", "500d"])
def test_bad_range_names_the_option(text):
    with pytest.raises(UsageError, match="--range"):
        parse_range(text)


def test_prometheus_url():
    assert prometheus_url("http://prom:9090/") == "http://prom:9090"
    assert prometheus_url("https://example.org/prometheus/") == "https://example.org/prometheus"
    for bad in ("prom:9090", "ftp://prom", "http://"):
        with pytest.raises(UsageError, match="--prometheus"):
            prometheus_url(bad)
    with pytest.raises(UsageError, match="not in the URL"):
        prometheus_url("http://user:pw@prom:9090")


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(bearer_token_file=kw.get("bearer"), basic_auth=kw.get("basic"))


def test_credentials_come_from_files(tmp_path):
    (tmp_path / "token").write_text("abc.def\n")
    (tmp_path / "pw").write_text("p:w d\n")
    assert auth_headers(_args(bearer=str(tmp_path / "token"))) == {"Authorization": "Bearer abc.def"}
    header = auth_headers(_args(basic=f"ops:{tmp_path / 'pw'}"))["Authorization"]
    assert base64.b64decode(header.removeprefix("Basic ")).decode() == "ops:p:w d"
    assert auth_headers(_args()) == {}
    (tmp_path / "empty").write_text("\n")
    for args, message in ((_args(bearer=str(tmp_path / "none")), "cannot read"),
                          (_args(bearer=str(tmp_path / "empty")), "is empty"),
                          (_args(basic="ops"), "USER:PASSWORD_FILE"),
                          (_args(bearer=str(tmp_path / "token"), basic=f"ops:{tmp_path / 'pw'}"), "exclude")):
        with pytest.raises(UsageError, match=message):
            auth_headers(args)


def test_target_filter_matches_names_and_urls_literally():
    sel = Queries(60, ("asr-1", "http://asr.example:8000")).sel()
    assert sel == '{target=~"asr-1|http://asr\\\\.example:8000"}'
    assert Queries(60).sel(True) == '{target!="", probe!~"health|model_info"}'


def _slo(objective: float, error: float | None, kind: str = "availability") -> SLOReport:
    return SLOReport(slo=f"t-batch-{kind}", probe="batch", kind=kind, objective=objective, error_ratio=error)


def test_budget_and_gate():
    half = _slo(0.99, 0.005)
    assert (half.budget_consumed, half.budget_remaining, half.exhausted) == (0.5, 0.5, False)
    spent = _slo(0.99, 0.01)
    assert (spent.budget_consumed, spent.budget_remaining, spent.exhausted) == (1.0, 0.0, True)
    unknown = _slo(0.99, None)
    assert (unknown.budget_consumed, unknown.budget_remaining, unknown.exhausted) == (None, None, False)

    def report(*targets: TargetReport) -> Report:
        return Report(range_seconds=3600, generated_at=0, prometheus="http://p", targets=list(targets), alerts=[])

    assert report(TargetReport("ok", up_ratio=0.995, slos=[half])).gate_failures == []
    down = TargetReport("down", up_ratio=0.98, slos=[half, _slo(0.95, 0.0, "latency")])
    assert down.availability_objective == 0.99
    [reason] = report(down).gate_failures
    assert reason.startswith("down was up 98.00% of the time, below its availability objective 99.00%")
    assert report(TargetReport("spent", up_ratio=1.0, slos=[spent])).gate_failures == [
        "spent t-batch-availability: error budget spent (100% used)"]
    # Without an SLO nothing says how much downtime is allowed: no verdict, not a made-up one.
    assert report(TargetReport("no-slo", up_ratio=0.5)).gate_failures == []


def test_alert_episodes():
    labels = {"__name__": "ALERTS", "alertname": "WhoasrTargetDown", "alertstate": "firing",
              "severity": "critical", "target": "asr-1"}
    points = [(t, 1.0) for t in (100, 110, 120, 200, 210)]  # two episodes, 10 s steps
    [alert] = alert_episodes([Series(labels, points)], step=10, end=210)
    assert (alert.times_fired, alert.firing_seconds, alert.firing_at_end) == (2, 50, True)
    assert alert.labels == {"alertname": "WhoasrTargetDown", "severity": "critical", "target": "asr-1"}
    [earlier] = alert_episodes([Series(labels, points[:3])], step=10, end=300)
    assert (earlier.times_fired, earlier.firing_seconds, earlier.firing_at_end) == (1, 30, False)


def test_sparkline():
    assert sparkline([0.0, 0.5, 1.0, None, 1.0], 0.0, 1.0) == "▁▅█ █"
    assert sparkline([0.2, 0.4]) == "▅█"  # scaled to the largest value
    assert sparkline([None, None]) == ""
    assert duration(90061) == "1d1h1m1s" and duration(0) == "0s"
