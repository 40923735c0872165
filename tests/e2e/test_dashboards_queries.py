"""The rendered Grafana dashboards' PromQL against the real Prometheus of the e2e stack.

Grafana's variables are replaced with what Grafana would send: `$job` the exporter's job, `$target` and
`$probe` an "All" selection written as a regex, `$__rate_interval` and friends the values for a dashboard
range of a few hours at a 1 s scrape interval. Every expression must run, and every query of every
dashboard must return a number for the healthy targets, but for the listed panels that by nature have none.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from tests.e2e.stack import HEALTHY, JOB, MULTI_HEALTHY, MULTI_JOB, PROBE_KINDS, Stack
from tests.support import wait_until

pytestmark = pytest.mark.e2e

VARIABLES = {
    "job": JOB,
    "target": "|".join(HEALTHY),
    "probe": "|".join(PROBE_KINDS),
    "__rate_interval": "30s",
    "__interval": "2s",
    "__interval_ms": "2000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_LABEL_VALUES = re.compile(r"^label_values\((?:(.+),\s*)?(\w+)\)$", re.S)

# Dashboards whose every query must return data when the targets are healthy (the issue asks for the
# overview and probes dashboards; the voice path and SLO dashboards have data too, so they are held to it).
MUST_HAVE_DATA = ("whoasr-overview", "whoasr-probes", "whoasr-voice-path", "whoasr-slo")
# Panels that by nature have no series while everything is healthy (uid, panel title) -> why.
NO_DATA_WHEN_HEALTHY = {
    ("whoasr-overview", "Scrape errors by reason"):
        "whoasr_scrape_errors_total has a series only once a scrape failed",
    ("whoasr-probes", "Failure ratio by reason"):
        "whoasr_probe_failures_total has a series per reason only once a run failed",
    ("whoasr-probes", "Failures by reason"):
        "whoasr_probe_failures_total has a series per reason only once a run failed",
    ("whoasr-voice-path", "Session failures by reason"):
        "whoasr_probe_failures_total has a series per reason only once a run failed",
}


# Multi-target mode has no histograms (each /probe scrape is one run's gauge): the heatmaps of bucket
# counts have nothing to show there. The p50/p95/p99 panels beside them do show the runs' quantiles.
NO_DATA_IN_MULTI_TARGET_MODE = {
    ("whoasr-probes", "Probe duration distribution"): "a heatmap of histogram buckets",
    ("whoasr-voice-path", "First result latency distribution"): "a heatmap of histogram buckets",
    ("whoasr-voice-path", "Result lag distribution"): "a heatmap of histogram buckets",
}


def substitute(expr: str, variables: dict | None = None) -> str:
    """Replaces Grafana variables ($var, ${var}, ${var:fmt}, [[var]]); an unknown one is an error."""
    variables = variables or VARIABLES

    def value(match: re.Match) -> str:
        name = next(group for group in match.groups() if group)
        assert name in variables, f"unknown dashboard variable ${name} in {expr!r}"
        return variables[name]

    return _VARIABLE.sub(value, expr)


def multi_target_variables(stack: Stack) -> dict:
    """What Grafana sends in multi-target mode: the /probe job, the healthy URLs."""
    urls = "|".join(stack.simulators[name].url for name in MULTI_HEALTHY)  # "." matches itself too
    return {**VARIABLES, "job": MULTI_JOB, "target": urls}


def _panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _count_exprs(node) -> int:
    if isinstance(node, dict):
        return ("expr" in node) + sum(_count_exprs(v) for v in node.values())
    if isinstance(node, list):
        return sum(_count_exprs(v) for v in node)
    return 0


def panel_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) for every query of every panel and annotation, rows included."""
    found = [(panel.get("title", "?"), target["expr"]) for panel in _panels(dashboard.get("panels", []))
             for target in panel.get("targets", []) if target.get("expr")]
    found += [(f"annotation {a.get('name')}", a["expr"]) for a in dashboard.get("annotations", {}).get("list", [])
              if a.get("expr")]
    assert len(found) == _count_exprs(dashboard), f"{dashboard['uid']}: an expr outside panels and annotations"
    return found


def variable_queries(dashboard: dict) -> list[tuple[str, str, str]]:
    """(variable name, series selector, label) of every label_values() query variable."""
    found = []
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(query.strip())
        assert match and match.group(1), f"{dashboard['uid']}: ${variable['name']}: unsupported query {query!r}"
        found.append((variable["name"], match.group(1), match.group(2)))
    return found


def _dashboards(stack: Stack) -> dict[str, dict]:
    files = sorted((stack.render_dir / "dashboards").glob("*.json"))
    assert files, "write_all rendered no dashboards"
    dashboards = {}
    for path in files:
        dashboard = json.loads(Path(path).read_text())
        dashboards[dashboard["uid"]] = dashboard
    assert set(MUST_HAVE_DATA) <= set(dashboards), sorted(dashboards)
    return dashboards


def _has_number(result: list[dict]) -> bool:
    return any(not math.isnan(float(series["value"][1])) for series in result)


def test_every_dashboard_expression_runs(healthy_stack: Stack):
    errors = []
    for uid, dashboard in _dashboards(healthy_stack).items():
        for title, expr in panel_queries(dashboard):
            try:
                healthy_stack.query(substitute(expr))
            except AssertionError as exc:
                errors.append(f"{uid} / {title}: {exc}")
        for name, selector, label in variable_queries(dashboard):
            try:
                result = healthy_stack.query(substitute(selector))
                if not any(label in series["metric"] for series in result):
                    errors.append(f"{uid} / ${name}: {selector} has no series with label {label!r}")
            except AssertionError as exc:
                errors.append(f"{uid} / ${name}: {exc}")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("mode", ["scheduled", "multi-target"])
def test_every_panel_has_data_when_healthy(healthy_stack: Stack, mode: str):
    stack = healthy_stack if mode == "scheduled" else healthy_stack.multi_target()
    variables = VARIABLES if mode == "scheduled" else multi_target_variables(healthy_stack)
    dashboards = _dashboards(stack)
    for uid, title in NO_DATA_WHEN_HEALTHY:  # an exception must name a panel that still exists
        assert any(p.get("title") == title for p in _panels(dashboards[uid]["panels"])), (uid, title)
    exceptions = {**NO_DATA_WHEN_HEALTHY, **(NO_DATA_IN_MULTI_TARGET_MODE if mode == "multi-target" else {})}
    pending = {(uid, title, expr) for uid in MUST_HAVE_DATA for title, expr in panel_queries(dashboards[uid])
               if (uid, title) not in exceptions}

    def all_have_data() -> bool:
        # Rates need two scrapes and a histogram quantile needs a run inside the window: poll, dropping
        # each query once it has returned a number.
        for item in sorted(pending):
            if _has_number(stack.query(substitute(item[2], variables))):
                pending.discard(item)
        return not pending

    try:
        wait_until(all_have_data, timeout=40, interval=1, what="data in every panel")
    except TimeoutError:
        pass
    assert not pending, f"panels without data for healthy targets ({mode}):\n" + "\n".join(
        f"{uid} / {title}: {expr}" for uid, title, expr in sorted(pending))
