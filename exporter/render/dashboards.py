"""Grafana dashboards from the config, built with grafanalib and brought up to the current JSON model.

grafanalib 0.7 writes some panels in their pre-Grafana-8 shape (bar gauge `fieldOptions`, the old heatmap,
string "null" threshold bases) and has no `__requires`; `_finish_panel` and `_finish_dashboard` rewrite
those parts, so what Grafana imports is what the linter in tests/test_render.py checks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

from grafanalib import core as g
from grafanalib._gen import DashboardEncoder

from exporter.config import Config

from . import slo as slo_rules
from .promql import duration, number_text, ratio_text

SCHEMA_VERSION = 39  # Grafana 10.3 / 10.4
GRAFANA_VERSION = "10.4.0"
DS = {"type": "prometheus", "uid": "${datasource}"}
DS_INPUT = "DS_PROMETHEUS"
SEL = 'job=~"$job", target=~"$target"'
PSEL = 'job=~"$job", target=~"$target", probe=~"$probe"'
SSEL = 'job=~"$job", target=~"$target", probe="stream"'
SLOSEL = f'job=~"$job", target=~"$target", sloth_service="{slo_rules.SERVICE}"'
RI = "$__rate_interval"
QUANTILES = (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))
def value_texts(zero: str, one: str) -> list[dict]:
    """Value mappings for a 0/1 series: red text for 0, green for 1."""
    return [
        {
            "type": "value",
            "options": {
                "0": {"color": "red", "index": 0, "text": zero},
                "1": {"color": "green", "index": 1, "text": one},
            },
        }
    ]


PASS_FAIL = value_texts("fail", "pass")


def steps(base: str, *points: tuple[float, str]) -> dict:
    """Absolute thresholds: `base` below the first point, then each (value, color) upwards."""
    return {
        "mode": "absolute",
        "steps": [{"color": base, "value": None}]
        + [{"color": color, "value": value} for value, color in points],
    }


def ratio(percent: float) -> float:
    return float(ratio_text(percent))


@dataclass
class Panel:
    """A grafanalib panel plus what grafanalib cannot express for every panel type."""

    panel: g.Panel
    unit: str
    width: int = 12
    height: int = 8
    thresholds: dict = field(default_factory=lambda: steps("green"))
    min: Optional[float] = None
    max: Optional[float] = None
    mappings: list = field(default_factory=list)
    options: Optional[dict] = None  # replaces grafanalib's `options` wholesale


def q(expr: str, legend: str = "", ref: str = "A", instant: bool = False, fmt: str = "time_series") -> g.Target:
    return g.Target(
        expr=expr, legendFormat=legend, refId=ref, instant=instant, format=fmt, datasource=DS, intervalFactor=1
    )


# Multi-target mode has no histograms: each /probe scrape gives one run's value in a gauge. Every panel
# reads scheduled mode's series `or` else these (the quantiles are then over the runs in the interval).
RUN_GAUGES = {
    "whoasr_probe_duration_seconds": "whoasr_probe_run_duration_seconds",
    "whoasr_stream_connect_seconds": "whoasr_stream_run_connect_seconds",
    "whoasr_stream_first_result_seconds": "whoasr_stream_run_first_result_seconds",
    "whoasr_stream_result_lag_seconds": "whoasr_stream_run_result_lag_seconds",  # each run's largest lag
    "whoasr_stream_final_result_seconds": "whoasr_stream_run_final_result_seconds",
}


def quantiles(metric: str, selector: str, by: str) -> list[g.Target]:
    """p50/p95/p99 targets from one histogram, or its per-run gauge in multi-target mode."""
    refs = "ABC"
    return [
        q(
            f"histogram_quantile({quantile}, sum by ({by}, le) (rate({metric}_bucket{{{selector}}}[{RI}])))\n"
            f"or\nmax by ({by}) (quantile_over_time({quantile}, {RUN_GAUGES[metric]}{{{selector}}}[{RI}]))",
            f"{{{{{by.split(', ')[-1]}}}}} {name}" if by else name,
            refs[i],
        )
        for i, (quantile, name) in enumerate(QUANTILES)
    ]


def p95(metric: str, selector: str) -> str:
    """The p95 of a histogram over everything selected (multi-target mode: of its per-run gauge)."""
    return (f"histogram_quantile(0.95, sum by (le) (rate({metric}_bucket{{{selector}}}[{RI}])))\n"
            f"or\nmax(quantile_over_time(0.95, {RUN_GAUGES[metric]}{{{selector}}}[{RI}]))")


def timeseries(title: str, description: str, targets: list[g.Target], unit: str, *,
               thresholds: Optional[dict] = None, min: Optional[float] = None, max: Optional[float] = None,
               bars: bool = False, width: int = 12, height: int = 8) -> Panel:
    panel = g.TimeSeries(
        title=title,
        description=description,
        dataSource=DS,
        targets=targets,
        unit=unit,
        drawStyle="bars" if bars else "line",
        fillOpacity=50 if bars else 10,
        showPoints="never",
        spanNulls=True,
        legendDisplayMode="table",
        legendPlacement="bottom",
        legendCalcs=["lastNotNull", "max"],
        tooltipMode="multi",
        tooltipSort="desc",
        thresholdsStyleMode="line+area" if thresholds else "off",
        stacking={"group": "A", "mode": "none"},
    )
    return Panel(panel, unit, width, height, thresholds or steps("green"), min, max)


def stat(title: str, description: str, target: g.Target, unit: str, *, thresholds: Optional[dict] = None,
         mappings: Optional[list] = None, min: Optional[float] = None, max: Optional[float] = None,
         width: int = 4, height: int = 4) -> Panel:
    panel = g.Stat(
        title=title,
        description=description,
        dataSource=DS,
        targets=[target],
        format=unit,
        reduceCalc="lastNotNull",
        graphMode="area",
        colorMode="value",
        textMode="auto",
    )
    return Panel(panel, unit, width, height, thresholds or steps("green"), min, max, mappings or [])


def _reduce_options() -> dict:
    return {"calcs": ["lastNotNull"], "fields": "", "values": False}


def gauge(title: str, description: str, target: g.Target, unit: str, thresholds: dict, *,
          min: float = 0, max: float = 1, width: int = 8, height: int = 6) -> Panel:
    panel = g.GaugePanel(title=title, description=description, dataSource=DS, targets=[target], format=unit)
    options = {
        "orientation": "auto",
        "reduceOptions": _reduce_options(),
        "showThresholdLabels": False,
        "showThresholdMarkers": True,
        "minVizHeight": 75,
        "minVizWidth": 75,
        "sizing": "auto",
    }
    return Panel(panel, unit, width, height, thresholds, min, max, options=options)


def bargauge(title: str, description: str, target: g.Target, unit: str, thresholds: dict, *,
             min: float = 0, max: float = 1, mappings: Optional[list] = None,
             width: int = 12, height: int = 8) -> Panel:
    panel = g.BarGauge(title=title, description=description, dataSource=DS, targets=[target], format=unit)
    options = {
        "displayMode": "basic",
        "orientation": "horizontal",
        "reduceOptions": _reduce_options(),
        "showUnfilled": True,
        "valueMode": "color",
        "namePlacement": "auto",
        "sizing": "auto",
        "minVizHeight": 16,
        "minVizWidth": 8,
        "maxVizHeight": 300,
    }
    return Panel(panel, unit, width, height, thresholds, min, max, mappings or [], options)


def table(title: str, description: str, targets: list[g.Target], unit: str, transformations: list[dict], *,
          thresholds: Optional[dict] = None, overrides: Optional[list] = None,
          width: int = 12, height: int = 8) -> Panel:
    panel = g.Table(
        title=title,
        description=description,
        dataSource=DS,
        targets=targets,
        unit=unit,
        transformations=transformations,
        overrides=overrides or [],
        displayMode="color-text",
    )
    return Panel(panel, unit, width, height, thresholds or steps("green"))


def heatmap(title: str, description: str, metric: str, selector: str, y_unit: str, *,
            width: int = 12, height: int = 8) -> Panel:
    """A heatmap of a Prometheus histogram: runs per bucket per interval, buckets as they are."""
    target = q(
        f"sum by (le) (increase({metric}_bucket{{{selector}}}[{RI}]))", "{{le}}", fmt="heatmap"
    )
    panel = g.Heatmap(title=title, description=description, dataSource=DS, targets=[target])
    options = {
        "calculate": False,
        "cellGap": 1,
        "cellValues": {"unit": "short"},
        "color": {
            "exponent": 0.5, "fill": "dark-orange", "mode": "scheme", "reverse": False,
            "scale": "exponential", "scheme": "Oranges", "steps": 64,
        },
        "exemplars": {"color": "rgba(255,0,255,0.7)"},
        "filterValues": {"le": 1e-9},
        "legend": {"show": True},
        "rowsFrame": {"layout": "auto"},
        "tooltip": {"mode": "single", "showColorScale": False, "yHistogram": True},
        "yAxis": {"axisPlacement": "left", "reverse": False, "unit": y_unit},
    }
    return Panel(panel, "short", width, height, options=options)


def merge_and_rename(names: dict[str, str], hide: tuple[str, ...] = ("Time",)) -> list[dict]:
    """Table transformations: join instant queries on their labels, rename and hide columns."""
    return [
        {"id": "merge", "options": {}},
        {
            "id": "organize",
            "options": {
                "excludeByName": {name: True for name in hide},
                "indexByName": {},
                "renameByName": names,
            },
        },
    ]


def field_mappings(field_name: str, mappings: list) -> dict:
    return {
        "matcher": {"id": "byName", "options": field_name},
        "properties": [
            {"id": "mappings", "value": mappings},
            {"id": "custom.cellOptions", "value": {"type": "color-text"}},
        ],
    }


# ---------------------------------------------------------------------------------------------- variables

def _variables(with_probe: bool) -> list[g.Template]:
    variables = [
        g.Template(name="datasource", label="Data source", type="datasource", query="prometheus",
                   default=f"${{{DS_INPUT}}}", refresh=1, hide=0),
        g.Template(name="job", label="Job", query="label_values(whoasr_up, job)", dataSource=DS,
                   includeAll=True, multi=True, allValue=".+", default="$__all", refresh=2, sort=1),
        g.Template(name="target", label="Target", query='label_values(whoasr_up{job=~"$job"}, target)',
                   dataSource=DS, includeAll=True, multi=True, allValue=".+", default="$__all",
                   refresh=2, sort=1),
    ]
    if with_probe:
        variables.append(
            g.Template(name="probe", label="Probe",
                       query=f"label_values(whoasr_probe_runs_total{{{SEL}}}, probe)",
                       dataSource=DS, includeAll=True, multi=True, allValue=".+", default="$__all",
                       refresh=2, sort=1)
        )
    return variables


# ---------------------------------------------------------------------------------------------- dashboards

def overview(config: Config) -> tuple[str, str, list[list[Panel]]]:
    t = config.thresholds
    resources = (
        ("CPU", "whoasr_system_cpu_usage_ratio", t.cpu_usage_percent, t.cpu_usage_critical_percent),
        ("Memory", "whoasr_system_memory_usage_ratio", t.memory_usage_percent, t.memory_usage_critical_percent),
        ("Disk", "whoasr_system_disk_usage_ratio", t.disk_usage_percent, t.disk_usage_critical_percent),
    )

    def resource_steps(warn: float, crit: float) -> dict:
        return steps("green", (ratio(warn), "orange"), (ratio(crit), "red"))

    success_ratio = (
        f"1 - (\n  sum by (probe) (rate(whoasr_probe_failures_total{{{SEL}}}[{RI}]))\n  or\n"
        f"  0 * sum by (probe) (rate(whoasr_probe_runs_total{{{SEL}}}[{RI}]))\n)\n"
        f"/ sum by (probe) (rate(whoasr_probe_runs_total{{{SEL}}}[{RI}]))\n"
        f"or\navg by (probe) (avg_over_time(whoasr_probe_success{{{SEL}}}[{RI}]))"
    )
    rows = [
        [
            stat("Targets up", "Targets whose last GET /health answered 200 with valid JSON (whoasr_up).",
                 q(f"sum(whoasr_up{{{SEL}}})"), "none"),
            stat("Targets down", "Targets whose last GET /health failed; WhoasrTargetDown fires after "
                 f"{duration(t.for_short)}.",
                 q(f"count(whoasr_up{{{SEL}}} == 0) or vector(0)"), "none",
                 thresholds=steps("green", (1, "red"))),
            stat("Probes failing", "Probe kinds (per target) whose last run failed.",
                 q(f"count(whoasr_probe_success{{{SEL}}} == 0) or vector(0)"), "none",
                 thresholds=steps("green", (1, "red"))),
            stat("Models loaded", "Models the targets report as loaded (total_loaded of /model/info).",
                 q(f"sum(whoasr_models_loaded{{{SEL}}})"), "none"),
            stat("Active connections", "Connections the targets report (only servers of the documented "
                 "schema send it).", q(f"sum(whoasr_active_connections{{{SEL}}})"), "none"),
            stat("Probe success over the range", "Share of time the last probe run was a success, over the "
                 f"dashboard's time range; green from the {number_text(t.slo_availability_percent)}% "
                 "availability objective.",
                 q(f"avg(avg_over_time(whoasr_probe_success{{{SEL}}}[$__range]))"), "percentunit",
                 thresholds=steps("red", (1 - ratio(t.error_rate_percent), "orange"),
                                  (ratio(t.slo_availability_percent), "green")),
                 min=0, max=1),
        ],
        [
            table(
                "Targets", "Each target's state from its last scrapes: /health answered, status healthy, "
                "models loaded, and the detected API generation and version.",
                [
                    q(f"max by (target) (whoasr_up{{{SEL}}})", ref="A", instant=True, fmt="table"),
                    q(f"max by (target) (whoasr_healthy{{{SEL}}})", ref="B", instant=True, fmt="table"),
                    q(f"max by (target) (whoasr_models_loaded{{{SEL}}})", ref="C", instant=True, fmt="table"),
                    q(f"max by (target, api, version) (whoasr_info{{{SEL}}})", ref="D", instant=True,
                      fmt="table"),
                ],
                "none",
                merge_and_rename(
                    {"target": "Target", "Value #A": "Up", "Value #B": "Healthy",
                     "Value #C": "Models loaded", "api": "API", "version": "Version"},
                    hide=("Time", "Value #D"),
                ),
                overrides=[field_mappings("Up", value_texts("down", "up")),
                           field_mappings("Healthy", value_texts("no", "yes"))],
            ),
            bargauge("Models loaded by type", "1 when the target reports the model as loaded. Probes that "
                     "need a model that is not loaded fail with model_not_loaded.",
                     q(f"max by (target, model) (whoasr_model_loaded{{{SEL}}})", "{{target}} {{model}}"),
                     "bool_yes_no", steps("red", (1, "green"))),
        ],
        [
            gauge(f"{what} usage now", f"{what} usage the targets report in /health; orange from "
                  f"{number_text(warn)}%, red from {number_text(crit)}% (the alert thresholds).",
                  q(f"max by (target) ({metric}{{{SEL}}})", "{{target}}"), "percentunit",
                  resource_steps(warn, crit))
            for what, metric, warn, crit in resources
        ],
        [
            timeseries(f"{what} usage", f"{what} usage the targets report in /health, with the warning "
                       f"({number_text(warn)}%) and critical ({number_text(crit)}%) alert thresholds drawn.",
                       [q(f"max by (target) ({metric}{{{SEL}}})", "{{target}}")], "percentunit",
                       thresholds=resource_steps(warn, crit), min=0, max=1, width=8)
            for what, metric, warn, crit in resources
        ],
        [
            timeseries("Probe success ratio by kind", "Successful runs / runs per probe kind; orange below "
                       f"{number_text(100 - t.error_rate_percent)}% (the error-rate alert), green from the "
                       f"{number_text(t.slo_availability_percent)}% availability objective.",
                       [q(success_ratio, "{{probe}}")], "percentunit",
                       thresholds=steps("red", (1 - ratio(t.error_rate_percent), "orange"),
                                        (ratio(t.slo_availability_percent), "green")),
                       min=0, max=1),
            bargauge("Last probe result", "Result of the last run of each probe on each target.",
                     q(f"min by (target, probe) (whoasr_probe_success{{{SEL}}})", "{{target}} {{probe}}"),
                     "none", steps("red", (1, "green")), mappings=PASS_FAIL),
        ],
        [
            timeseries("Scrape duration", "How long the last /health and /model/info scrapes took. whoAsr's "
                       "/health samples CPU for a second and blocks the server meanwhile, so about 1 s is normal.",
                       [q(f"max by (target, endpoint) (whoasr_scrape_duration_seconds{{{SEL}}})",
                          "{{target}} {{endpoint}}")], "s", width=8),
            timeseries("Scrape errors by reason", "Failed scrapes of /health and /model/info per interval.",
                       [q(f"sum by (target, endpoint, reason) (increase(whoasr_scrape_errors_total{{{SEL}}}[{RI}]))",
                          "{{target}} {{endpoint}} {{reason}}")], "short", bars=True, width=8),
            timeseries("Model memory", "Memory per model, when the server reports it (documented schema).",
                       [q(f"max by (target, model) (whoasr_model_memory_bytes{{{SEL}}})", "{{target}} {{model}}")],
                       "bytes", width=8),
        ],
    ]
    return "whoAsr / Overview", "Targets up, models loaded, resources against the alert thresholds and probe " \
        "success by kind.", rows


def probes(config: Config) -> tuple[str, str, list[list[Panel]]]:
    t = config.thresholds
    slow = steps("green", (t.response_time_seconds, "red"))
    failure_steps = steps("green", (ratio(t.error_rate_percent), "red"))
    cer_steps = steps("green", (t.character_error_rate, "red"))
    stale = steps("green", (t.stale_after, "red"))
    rows = [
        [
            stat("Probes passing", "Probe kinds (per target) whose last run passed every check.",
                 q(f"sum(whoasr_probe_success{{{PSEL}}})"), "none"),
            stat("Probes failing", "Probe kinds (per target) whose last run failed.",
                 q(f"count(whoasr_probe_success{{{PSEL}}} == 0) or vector(0)"), "none",
                 thresholds=steps("green", (1, "red"))),
            stat("Runs per minute", "Probe runs finished per minute.",
                 q(f"sum(rate(whoasr_probe_runs_total{{{PSEL}}}[{RI}])) * 60\n"
                   f"or\nsum(count_over_time(whoasr_probe_success{{{PSEL}}}[1m]))"), "opm"),
            stat("Failure ratio", f"Failed runs / runs; red above {number_text(t.error_rate_percent)}%.",
                 q(f"(sum(rate(whoasr_probe_failures_total{{{PSEL}}}[{RI}])) or vector(0))\n"
                   f"/ sum(rate(whoasr_probe_runs_total{{{PSEL}}}[{RI}]))\n"
                   f"or\n1 - avg(avg_over_time(whoasr_probe_success{{{PSEL}}}[{RI}]))"),
                 "percentunit", thresholds=failure_steps),
            stat("Duration p95", f"p95 of the probe run duration; red above {number_text(t.response_time_seconds)} s.",
                 q(p95("whoasr_probe_duration_seconds", PSEL)),
                 "s", thresholds=slow),
            stat("Skipped runs", "Runs not started: the previous run was still going (interval shorter than "
                 "the probe takes), or a /health of the target held its gate past half the run's timeout; "
                 "multi-target mode: /probe scrapes that got no answer or whose run could not start.",
                 q(f"sum(increase(whoasr_probe_skipped_total{{{PSEL}}}[{RI}]))\n"
                   f"or\nsum(count_over_time(up{{{PSEL}}}[{RI}])) - sum(sum_over_time(up{{{PSEL}}}[{RI}]))\n"
                   f"  + (sum(sum_over_time(whoasr_probe_not_started{{{PSEL}}}[{RI}])) or vector(0))"),
                 "short",
                 thresholds=steps("green", (1, "orange"))),
        ],
        [
            timeseries("Probe duration p50 / p95 / p99", "Wall time of probe runs, end to end; the line is the "
                       f"response-time threshold ({number_text(t.response_time_seconds)} s) of the latency alert "
                       "and SLO.",
                       quantiles("whoasr_probe_duration_seconds", PSEL, "probe"), "s", thresholds=slow),
            heatmap("Probe duration distribution", "Probe runs per duration bucket and interval.",
                    "whoasr_probe_duration_seconds", PSEL, "s"),
        ],
        [
            timeseries("Failure ratio by reason", "Failed runs / runs per probe kind, split by the first reason "
                       f"that applied; the line is the error-rate threshold ({number_text(t.error_rate_percent)}%).",
                       [q(f"sum by (probe, reason) (rate(whoasr_probe_failures_total{{{PSEL}}}[{RI}]))\n"
                          f"/ ignoring (reason) group_left ()\n"
                          f"sum by (probe) (rate(whoasr_probe_runs_total{{{PSEL}}}[{RI}]))",
                          "{{probe}} {{reason}}")],
                       "percentunit", thresholds=failure_steps, min=0),
            timeseries("Failures by reason", "Failed runs per interval, by target, probe and reason.",
                       [q(f"sum by (target, probe, reason) (increase(whoasr_probe_failures_total{{{PSEL}}}[{RI}]))",
                          "{{target}} {{probe}} {{reason}}")], "short", bars=True),
        ],
        [
            timeseries("Real-time factor", "Server processing time / audio duration: below 1 the server "
                       "transcribes faster than real time.",
                       [q(f"sum by (target, probe) (rate(whoasr_probe_processing_seconds_total{{{PSEL}}}[{RI}]))\n"
                          f"/ sum by (target, probe) (rate(whoasr_probe_audio_seconds_total{{{PSEL}}}[{RI}]))\n"
                          f"or\navg by (target, probe) (avg_over_time(whoasr_probe_real_time_factor{{{PSEL}}}[{RI}]))",
                          "{{target}} {{probe}}")],
                       "none", thresholds=steps("green", (1, "red")), min=0),
            timeseries("Character error rate", "Character errors / reference characters of the probe "
                       "transcripts; the line is the bound of the accuracy alert "
                       f"({number_text(t.character_error_rate)}).",
                       [q(f"sum by (target, probe) (rate(whoasr_probe_character_errors_total{{{PSEL}}}[{RI}]))\n"
                          f"/ sum by (target, probe) (rate(whoasr_probe_reference_characters_total{{{PSEL}}}[{RI}]))\n"
                          f"or\navg by (target, probe) "
                          f"(avg_over_time(whoasr_probe_character_error_rate{{{PSEL}}}[{RI}]))",
                          "{{target}} {{probe}}")],
                       "percentunit", thresholds=cer_steps, min=0),
        ],
        [
            table("Time since last run", "Seconds since each probe last finished and last succeeded; red "
                  f"beyond {number_text(t.stale_after)} s (the stale-probe alert).",
                  [
                      q(f"time() - max by (target, probe) (whoasr_probe_last_run_timestamp_seconds{{{PSEL}}})\n"
                        f"or\ntime() - max by (target, probe) (timestamp(whoasr_probe_success{{{PSEL}}}))",
                        ref="A", instant=True, fmt="table"),
                      q(f"time() - max by (target, probe) (whoasr_probe_last_success_timestamp_seconds{{{PSEL}}})\n"
                        f"or\ntime() - max by (target, probe) "
                        f"(max_over_time(timestamp(whoasr_probe_success{{{PSEL}}} == 1)[1h:1m]))",
                        ref="B", instant=True, fmt="table"),
                  ],
                  "s",
                  merge_and_rename({"target": "Target", "probe": "Probe", "Value #A": "Since last run",
                                    "Value #B": "Since last success"}),
                  thresholds=stale),
            timeseries("Last run real-time factor and CER", "Real-time factor and character error rate of "
                       "the last run of each probe (gauges, not averages).",
                       [q(f"max by (target, probe) (whoasr_probe_real_time_factor{{{PSEL}}})",
                          "{{target}} {{probe}} RTF", "A"),
                        q(f"max by (target, probe) (whoasr_probe_character_error_rate{{{PSEL}}})",
                          "{{target}} {{probe}} CER", "B")],
                       "none", min=0),
        ],
    ]
    return "whoAsr / Probes", "Synthetic probes: latency, failures by reason, real-time factor and accuracy.", rows


def voice_path(config: Config) -> tuple[str, str, list[list[Panel]]]:
    t = config.thresholds
    first = steps("green", (t.stream_first_result_seconds, "red"))
    lag = steps("green", (t.stream_result_lag_seconds, "red"))
    rows = [
        [
            stat("Stream probe", "Result of the last streaming session per target (worst shown).",
                 q(f"min(whoasr_probe_success{{{SSEL}}})"), "none",
                 thresholds=steps("red", (1, "green")), mappings=PASS_FAIL, width=6),
            stat("First result p95", "p95 time from the start of speech to the first recognition "
                 f"result; red above {number_text(t.stream_first_result_seconds)} s (the alert threshold).",
                 q(p95("whoasr_stream_first_result_seconds", SEL)),
                 "s", thresholds=first, width=6),
            stat("Final result p95", "p95 time from stop_recording to the end of the session.",
                 q(p95("whoasr_stream_final_result_seconds", SEL)),
                 "s", width=6),
            stat("Partial results per session", "Partial results received per streaming session: a server "
                 "can look fast by sending fewer.",
                 q(f"sum(increase(whoasr_stream_partial_results_total{{{SEL}}}[{RI}]))\n"
                   f"/ sum(increase(whoasr_probe_runs_total{{{SSEL}}}[{RI}]))\n"
                   f"or\navg(avg_over_time(whoasr_stream_run_partial_results{{{SEL}}}[{RI}]))"),
                 "none", width=6),
        ],
        [
            timeseries("First result latency", "Start of speech to the first recognition_result, per "
                       "session (never below one 600 ms stride on whoAsr); the line is the threshold of the alert "
                       f"({number_text(t.stream_first_result_seconds)} s).",
                       quantiles("whoasr_stream_first_result_seconds", SEL, "target"), "s", thresholds=first),
            heatmap("First result latency distribution", "Sessions per first-result latency bucket and interval.",
                    "whoasr_stream_first_result_seconds", SEL, "s"),
        ],
        [
            timeseries("Result lag", "Per recognition result: its arrival minus the instant the audio it was "
                       "computed from had been fully spoken. The server's own delay (queueing and one model "
                       "call), free of the 600 ms it waits to fill a stride; the line is the threshold of the "
                       f"alert ({number_text(t.stream_result_lag_seconds)} s).",
                       quantiles("whoasr_stream_result_lag_seconds", SEL, "target"), "s", thresholds=lag),
            heatmap("Result lag distribution", "Results per lag bucket and interval.",
                    "whoasr_stream_result_lag_seconds", SEL, "s"),
        ],
        [
            timeseries("Final result latency", "stop_recording sent to the end of the session (final result "
                       "or the Recording stopped status).",
                       quantiles("whoasr_stream_final_result_seconds", SEL, "target"), "s"),
            timeseries("Connect latency", "TCP and WebSocket handshake of the streaming session.",
                       quantiles("whoasr_stream_connect_seconds", SEL, "target"), "s"),
        ],
        [
            timeseries("Partial results per session", "Partial results received per streaming session.",
                       [q(f"sum by (target) (increase(whoasr_stream_partial_results_total{{{SEL}}}[{RI}]))\n"
                          f"/ sum by (target) (increase(whoasr_probe_runs_total{{{SSEL}}}[{RI}]))\n"
                          f"or\navg by (target) (avg_over_time(whoasr_stream_run_partial_results{{{SEL}}}[{RI}]))",
                          "{{target}}")], "none", width=8),
            timeseries("Session failures by reason", "Failed streaming sessions per interval, by the first "
                       "reason that applied (handshake_rejected, closed_early, no_result, ...).",
                       [q(f"sum by (target, reason) (increase(whoasr_probe_failures_total{{{SSEL}}}[{RI}]))",
                          "{{target}} {{reason}}")], "short", bars=True, width=8),
            timeseries("Streaming character error rate", "Character errors / reference characters of the "
                       "streamed transcripts; the line is the bound of the accuracy alert "
                       f"({number_text(t.character_error_rate)}).",
                       [q(f"sum by (target) (rate(whoasr_probe_character_errors_total{{{SSEL}}}[{RI}]))\n"
                          f"/ sum by (target) (rate(whoasr_probe_reference_characters_total{{{SSEL}}}[{RI}]))\n"
                          f"or\navg by (target) (avg_over_time(whoasr_probe_character_error_rate{{{SSEL}}}[{RI}]))",
                          "{{target}}")],
                       "percentunit", thresholds=steps("green", (t.character_error_rate, "red")), min=0, width=8),
        ],
    ]
    return "whoAsr / Voice path", "The streaming (WebSocket) recognition path: latency per message, partial " \
        "results and session failures.", rows


def slo(config: Config) -> tuple[str, str, list[list[Panel]]]:
    t = config.thresholds
    burn_colors = ("yellow", "orange", "red", "dark-red")
    factors = sorted({float(row.factor) for row in slo_rules.BURN_WINDOWS})
    burn_steps = steps("green", *zip(factors, burn_colors))
    budget_steps = steps("red", (0, "orange"), (0.25, "green"))
    windows = ", ".join(f"{row.factor}x over {row.long} and {row.short} ({row.sloth_severity})"
                        for row in slo_rules.BURN_WINDOWS)
    le = number_text(t.response_time_seconds)
    rows = [
        [
            bargauge(f"Error budget remaining ({slo_rules.PERIOD})", "Share of the error budget left over the "
                     f"SLO period. Objectives: availability {number_text(t.slo_availability_percent)}%, "
                     f"latency {number_text(t.slo_latency_percent)}% of runs within {le} s.",
                     q(f"slo:period_error_budget_remaining:ratio{{{SLOSEL}}}", "{{target}} {{sloth_slo}}"),
                     "percentunit", budget_steps, min=0, max=1),
            table("Error ratio by window", "The SLI error ratio of every SLO over every window the burn-rate "
                  "alerts use.",
                  [q(f'label_join({{__name__=~"slo:sli_error:ratio_rate.+", {SLOSEL}}}, "slo", " ", "target", '
                     '"sloth_slo")', instant=True, fmt="table")],
                  "percentunit",
                  [{"id": "groupingToMatrix",
                    "options": {"columnField": "sloth_window", "rowField": "slo", "valueField": "Value"}}]),
        ],
        [
            timeseries("Current burn rate", "Error ratio over 5m / error budget; 1 spends the budget exactly "
                       f"over {slo_rules.PERIOD}. The lines are the alert factors: {windows}.",
                       [q(f"slo:current_burn_rate:ratio{{{SLOSEL}}}", "{{target}} {{sloth_slo}}")], "none",
                       thresholds=burn_steps, min=0),
            timeseries(f"Burn rate over the period ({slo_rules.PERIOD})", "Average burn rate over the SLO "
                       "period; above 1 the objective is missed.",
                       [q(f"slo:period_burn_rate:ratio{{{SLOSEL}}}", "{{target}} {{sloth_slo}}")], "none",
                       thresholds=steps("green", (1, "red")), min=0),
        ],
        [
            timeseries("Availability SLI (1h)", "Successful probe runs / runs over the last hour; green from the "
                       f"{number_text(t.slo_availability_percent)}% objective.",
                       [q(f'1 - slo:sli_error:ratio_rate1h{{{SLOSEL}, sloth_slo=~".+-availability"}}',
                          "{{target}} {{probe}}")],
                       "percentunit", thresholds=steps("red", (ratio(t.slo_availability_percent), "green")),
                       max=1),
            timeseries("Latency SLI (1h)", f"Probe runs that took at most {le} s (streaming sessions: whose "
                       f"first result came within {number_text(t.stream_first_result_seconds)} s) / runs, over "
                       f"the last hour; green from the {number_text(t.slo_latency_percent)}% objective.",
                       [q(f'1 - slo:sli_error:ratio_rate1h{{{SLOSEL}, sloth_slo=~".+-latency"}}',
                          "{{target}} {{probe}}")],
                       "percentunit", thresholds=steps("red", (ratio(t.slo_latency_percent), "green")),
                       max=1),
        ],
        [
            timeseries("Error budget remaining over time", f"Share of the {slo_rules.PERIOD} error budget left, "
                       "per SLO.",
                       [q(f"slo:period_error_budget_remaining:ratio{{{SLOSEL}}}", "{{target}} {{sloth_slo}}")],
                       "percentunit", thresholds=budget_steps, max=1, width=24),
        ],
    ]
    return "whoAsr / SLOs", "Availability and latency SLOs per target and probe: error budget and burn rates " \
        "(Sloth-compatible series).", rows


# (uid and file name, builder, has a probe variable, default time range)
DASHBOARDS = (
    ("whoasr-overview", overview, False, "6h"),
    ("whoasr-probes", probes, True, "6h"),
    ("whoasr-voice-path", voice_path, False, "6h"),
    ("whoasr-slo", slo, False, "7d"),
)


# ---------------------------------------------------------------------------------------------- assembly

def _finish_panel(data: dict, spec: Panel) -> dict:
    """Bring one panel's JSON to the current model and drop what grafanalib fills with nulls."""
    defaults = data.setdefault("fieldConfig", {}).setdefault("defaults", {})
    defaults["unit"] = spec.unit
    defaults["thresholds"] = spec.thresholds
    defaults["mappings"] = spec.mappings
    defaults.setdefault("color", {"mode": "thresholds"})
    if defaults["color"] is None:
        defaults["color"] = {"mode": "thresholds"}
    for key, value in (("min", spec.min), ("max", spec.max)):
        if value is None:
            defaults.pop(key, None)
        else:
            defaults[key] = value
    for key in ("calcs", "decimals", "limit", "links", "override", "title", "values", "noValue"):
        if defaults.get(key) in (None, "none"):
            defaults.pop(key, None)
    if data["type"] in ("gauge", "bargauge"):
        for key in ("calcs", "limit", "override", "values", "title"):
            defaults.pop(key, None)
        data["fieldConfig"].pop("showThresholdLabels", None)
        data["fieldConfig"].pop("showThresholdMarkers", None)
    data["fieldConfig"].setdefault("overrides", [])
    if data["type"] == "heatmap":
        for key in ("cards", "color", "dataFormat", "heatmap", "hideZeroBuckets", "highlightCards", "legend",
                    "reverseYBuckets", "tooltip", "xAxis", "xBucketNumber", "xBucketSize", "yAxis",
                    "yBucketBound", "yBucketNumber", "yBucketSize"):
            data.pop(key, None)
    if data["type"] == "table":
        for key in ("color", "columns", "fontSize", "mappings"):
            data.pop(key, None)
    if spec.options is not None:
        data["options"] = spec.options
    data["targets"] = [
        {
            "datasource": DS,
            "editorMode": "code",
            "expr": target["expr"],
            "format": target["format"],
            "instant": target["instant"],
            "legendFormat": target["legendFormat"] or "__auto",
            "range": not target["instant"],
            "refId": target["refId"],
        }
        for target in data["targets"]
    ]
    for key in ("span", "height", "minSpan", "error", "cacheTimeout", "interval", "timeFrom", "timeShift",
                "maxDataPoints",
                "repeat", "repeatDirection", "maxPerRow", "hideTimeOverride", "thresholds", "thresholdType"):
        data.pop(key, None)
    return data


def _variable(data: dict) -> dict:
    for key in ("auto", "auto_count", "auto_min", "tagValuesQuery", "tagsQuery", "useTags"):
        data.pop(key, None)
    if data["type"] == "datasource":
        data["current"] = {"selected": False, "text": f"${{{DS_INPUT}}}", "value": f"${{{DS_INPUT}}}"}
        data.pop("datasource", None)
        data.pop("allValue", None)
        data["regex"] = ""
    else:
        data["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
        data["definition"] = data["query"]
        data["query"] = {"query": data["query"], "refId": "PrometheusVariableQueryEditor-VariableQuery"}
        data["regex"] = ""
    return data


def build(uid: str, config: Config) -> dict:
    """One dashboard as the JSON model Grafana imports."""
    name, make, with_probe, time_from = next(entry for entry in DASHBOARDS if entry[0] == uid)
    title, description, rows = make(config)
    specs: list[Panel] = []
    panels: list[g.Panel] = []
    y = 0
    for row in rows:
        x = 0
        for spec in row:
            if x + spec.width > 24:
                raise ValueError(f"{uid}: row too wide at {spec.panel.title!r}")
            spec.panel.gridPos = g.GridPos(h=spec.height, w=spec.width, x=x, y=y)
            spec.panel.id = len(specs) + 1
            specs.append(spec)
            panels.append(spec.panel)
            x += spec.width
        y += max(spec.height for spec in row)
    dashboard = g.Dashboard(
        title=title,
        description=description,
        uid=name,  # stable: links and provisioning refer to it
        tags=["whoasr", "whoasr-exporter"],
        panels=panels,
        templating=g.Templating(list=_variables(with_probe)),
        time=g.Time(f"now-{time_from}", "now"),
        timezone="browser",
        refresh="1m",
        schemaVersion=SCHEMA_VERSION,
        graphTooltip=1,
        editable=True,
        version=1,
        inputs=[
            g.DataSourceInput(name=DS_INPUT, label="Prometheus", pluginId="prometheus",
                              pluginName="Prometheus", description="Prometheus that scrapes whoasr-exporter"),
        ],
        links=[{"asDropdown": True, "includeVars": True, "keepTime": True, "tags": ["whoasr"],
                "targetBlank": False, "title": "whoAsr dashboards", "type": "dashboards", "icon": "external link",
                "tooltip": "", "url": ""}],
    )
    data = json.loads(json.dumps(dashboard.to_json_data(), cls=DashboardEncoder))
    data["panels"] = [_finish_panel(panel, spec) for panel, spec in zip(data["panels"], specs)]
    data["templating"]["list"] = [_variable(variable) for variable in data["templating"]["list"]]
    for key in ("rows", "hideControls", "sharedCrosshair", "style", "gnetId", "id"):
        data.pop(key, None)
    data["id"] = None
    data["annotations"] = {
        "list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard",
        }]
    }
    data["__requires"] = [
        {"type": "grafana", "id": "grafana", "name": "Grafana", "version": GRAFANA_VERSION},
        {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
    ] + [
        {"type": "panel", "id": kind, "name": kind, "version": ""}
        for kind in sorted({panel["type"] for panel in data["panels"]})
    ]
    return data


def panel_ids(config: Config) -> dict[tuple[str, str], int]:
    """(dashboard uid, panel title) -> panel id, for links into a panel (the first of a title wins)."""
    ids: dict[tuple[str, str], int] = {}
    for name, *_ in DASHBOARDS:
        for panel in build(name, config)["panels"]:
            ids.setdefault((name, panel["title"]), panel["id"])
    return ids


def render_dashboards(config: Config) -> dict[str, str]:
    """File name -> JSON text, with sorted keys and a final newline so that output compares byte for byte."""
    return {
        f"{name}.json": json.dumps(build(name, config), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        for name, *_ in DASHBOARDS
    }
