"""What `whoasr-exporter report` reads: how the last N hours went, per target, from what Prometheus stored.

It reads the series the exporter exports, in either mode: scheduled mode's counters and histograms, and,
where a (target, probe) has none, multi-target mode's per-scrape gauges from `/probe` (each sample is one
run). Counters are counted exactly where they can be (value at the end minus value at the start, from 0
for a series born in the range) and by Prometheus' `increase()` only across a counter reset; Prometheus'
plain `increase()` would miss the first failure of a series born with value 1. SLO budgets use the
recorded SLIs of the rendered SLO rules, averaged over the range the way those rules average over their
period. Absent data stays None (null), never 0.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional

from exporter.kinds import PROBE_KINDS, SCRAPE_KINDS
from exporter.prometheus_api import PrometheusAPI, Sample, Series, finite
from exporter.render.slo import SERVICE as SLO_SERVICE
from exporter.render.slo import SLI_WINDOWS

FORMATS = ("table", "markdown", "json")
RESOURCES = ("cpu", "memory", "disk")
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
SPARK_POINTS = 24  # points per sparkline: one character each
SLI_POINTS = 2_000  # samples of an SLO's recorded SLI averaged over the range
MAX_ALERT_POINTS = 10_000  # Prometheus refuses more than 11,000 points per series in a range query

# Metric names the report reads (the metric contract; see README "Metrics").
RUNS = "whoasr_probe_runs_total"
FAILURES = "whoasr_probe_failures_total"
DURATION_BUCKETS = "whoasr_probe_duration_seconds_bucket"
# /probe's own (gauge) series: one sample per scrape, i.e. per run.
ON_DEMAND_SUCCESS = "whoasr_probe_success"
ON_DEMAND_FAILURE = "whoasr_probe_failure_info"
ON_DEMAND_DURATION = "whoasr_probe_run_duration_seconds"


# --- PromQL ---------------------------------------------------------------------------------------
def _regex_escape(value: str) -> str:
    return re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", value)


def _quoted(value: str) -> str:
    return json.dumps(value)


@dataclass(frozen=True)
class Queries:
    """The PromQL of one report: its range and the target filter every selector carries."""

    range_seconds: float
    targets: tuple[str, ...] = ()

    @property
    def window(self) -> str:
        return f"{int(self.range_seconds)}s"

    def sel(self, probes: bool = False, **labels: str) -> str:
        """A selector: the target filter, optionally only probe kinds (not /probe's health modules)."""
        parts = [f"{key}={_quoted(value)}" for key, value in labels.items()]
        if self.targets:
            parts.append("target=~" + _quoted("|".join(_regex_escape(t) for t in self.targets)))
        else:
            parts.append('target!=""')
        if probes:
            parts.append("probe!~" + _quoted("|".join(SCRAPE_KINDS)))
        return "{" + ", ".join(parts) + "}"

    def counter_increase(self, metric: str, by: str, probes: bool = False) -> str:
        """Increase over the range, exact where it can be: end minus start without a reset, the end value
        for a series born in the range, Prometheus' increase() only across resets."""
        series = f"{metric}{self.sel(probes)}"
        w = self.window
        return (f"sum by ({by}) (\n"
                f"  ((last_over_time({series}[{w}]) - {series} offset {w}) unless resets({series}[{w}]) > 0)\n"
                f"  or (last_over_time({series}[{w}]) unless {series} offset {w})\n"
                f"  or increase({series}[{w}])\n)")

    def histogram_quantile(self, q: float, buckets: str, gauge: str, window: Optional[str] = None) -> str:
        """From the histogram (scheduled mode), else from /probe's per-run gauge."""
        w = window or self.window
        return (f"histogram_quantile({q}, sum by (target, probe, le) (rate({buckets}{self.sel(True)}[{w}])))\n"
                f"or max by (target, probe) (quantile_over_time({q}, {gauge}{self.sel(True)}[{w}]))")

    def counter_ratio(self, numerator: str, denominator: str, gauge: str) -> str:
        """A ratio of two counters over the range (CER, RTF), else the mean of /probe's per-run gauge."""
        by = "target, probe"
        return (f"({self.counter_increase(numerator, by, True)}\n/\n{self.counter_increase(denominator, by, True)})\n"
                f"or avg by (target, probe) (avg_over_time({gauge}{self.sel(True)}[{self.window}]))")

    # Per target
    def up_ratio(self) -> str:
        return f"avg by (target) (avg_over_time(whoasr_up{self.sel()}[{self.window}]))"

    def resource(self, resource: str, stat: str) -> str:
        outer = {"avg": "avg", "min": "min", "max": "max"}[stat]
        return (f"{outer} by (target) ({stat}_over_time(whoasr_system_{resource}_usage_ratio{self.sel()}"
                f"[{self.window}]))")

    def model_loaded(self) -> str:
        return f"max by (target, model) (last_over_time(whoasr_model_loaded{self.sel()}[{self.window}]))"

    def model_memory(self) -> str:
        return f"max by (target, model) (last_over_time(whoasr_model_memory_bytes{self.sel()}[{self.window}]))"

    def model_requests(self) -> str:
        return self.counter_increase("whoasr_model_requests_total", "target, model")

    # Per (target, probe)
    def runs(self) -> str:
        return (f"{self.counter_increase(RUNS, 'target, probe', True)}\n"
                f"or sum by (target, probe) (count_over_time({ON_DEMAND_SUCCESS}{self.sel(True)}[{self.window}]))")

    def failures(self) -> str:
        return (f"{self.counter_increase(FAILURES, 'target, probe, reason', True)}\n"
                f"or sum by (target, probe, reason) "
                f"(count_over_time({ON_DEMAND_FAILURE}{self.sel(True)}[{self.window}]))")

    def latency(self, q: float) -> str:
        return self.histogram_quantile(q, DURATION_BUCKETS, ON_DEMAND_DURATION)

    def cer(self) -> str:
        return self.counter_ratio("whoasr_probe_character_errors_total", "whoasr_probe_reference_characters_total",
                                  "whoasr_probe_character_error_rate")

    def rtf(self) -> str:
        return self.counter_ratio("whoasr_probe_processing_seconds_total", "whoasr_probe_audio_seconds_total",
                                  "whoasr_probe_real_time_factor")

    def stream_p95(self, family: str, on_demand: str) -> str:
        """Voice-path histograms carry no `probe` label (they are the stream probe's by definition);
        `on_demand` is /probe's gauge of one run."""
        w = self.window
        return (f"histogram_quantile(0.95, sum by (target, le) (rate({family}_bucket{self.sel()}[{w}])))\n"
                f"or max by (target) (quantile_over_time(0.95, {on_demand}{self.sel(probe='stream')}[{w}]))")

    # SLOs: the rendered rules' series (Sloth names), averaged over the range as the rules average
    # their shortest-window SLI over the SLO period; but a NaN point (a window without runs) is skipped
    # rather than turning the whole range into NaN. The subquery samples the SLI at most
    # SLI_POINTS times (a 30-day range at the evaluation interval would load millions of samples).
    def slo_error_ratio(self) -> str:
        sli = f"slo:sli_error:ratio_rate{SLI_WINDOWS[0]}{self.sel(sloth_service=SLO_SERVICE)}"
        step = max(1, math.ceil(self.range_seconds / SLI_POINTS))
        return (f"avg by (sloth_id, sloth_slo, target, probe) "
                f"(avg_over_time(({sli} >= 0)[{self.window}:{step}s]))")

    def slo_objective(self) -> str:
        """Objectives per SLO; with a `target` label where the rules have one SLO per target, without
        where one SLO covers the fleet (so no target filter here)."""
        objective = f'slo:objective:ratio{{sloth_service="{SLO_SERVICE}"}}'
        return (f"max by (sloth_id, sloth_slo, target, probe) "
                f"(last_over_time({objective}[{self.window}]))")

    # Over time
    def success_over_time(self, step: str) -> str:
        return f"avg by (target, probe) (avg_over_time({ON_DEMAND_SUCCESS}{self.sel(True)}[{step}]))"

    def latency_over_time(self, step: str) -> str:
        return self.histogram_quantile(0.95, DURATION_BUCKETS, ON_DEMAND_DURATION, window=step)

    def firing_alerts(self) -> str:
        firing = 'alertstate="firing"'
        if not self.targets:
            return f"ALERTS{{{firing}}}"
        # Alerts about the chosen targets, and the ones about no target (the exporter itself).
        return f"ALERTS{self.sel(alertstate='firing')} or ALERTS{{{firing}, target=\"\"}}"


# --- the document ---------------------------------------------------------------------------------
@dataclass
class ProbeReport:
    runs: Optional[int] = None
    success_ratio: Optional[float] = None
    latency_seconds: dict[str, Optional[float]] = field(default_factory=lambda: dict.fromkeys(QUANTILES))
    failures: dict[str, int] = field(default_factory=dict)
    cer: Optional[float] = None
    rtf: Optional[float] = None
    first_result_p95_seconds: Optional[float] = None  # stream only
    result_lag_p95_seconds: Optional[float] = None  # stream only
    success_over_time: list[Optional[float]] = field(default_factory=list)  # table and markdown only
    p95_over_time: list[Optional[float]] = field(default_factory=list)

    def to_dict(self, kind: str) -> dict:
        out = {"runs": self.runs, "success_ratio": self.success_ratio, "latency_seconds": self.latency_seconds,
               "failures": dict(sorted(self.failures.items(), key=lambda kv: (-kv[1], kv[0]))),
               "cer": self.cer, "rtf": self.rtf}
        if kind == "stream":
            out["first_result_p95_seconds"] = self.first_result_p95_seconds
            out["result_lag_p95_seconds"] = self.result_lag_p95_seconds
        return out


@dataclass
class SLOReport:
    slo: str
    probe: str
    kind: str
    objective: Optional[float]
    error_ratio: Optional[float]

    @property
    def budget_consumed(self) -> Optional[float]:
        """Share of the error budget used: the range's error ratio over the allowed one (1.0: all of it),
        as the rules' period_burn_rate with the range as the period."""
        if self.error_ratio is None or self.objective is None or self.objective >= 1:
            return None
        return round(self.error_ratio / (1 - self.objective), 9)  # 1/0.01 is 99.99999999999991 in floats

    @property
    def budget_remaining(self) -> Optional[float]:
        consumed = self.budget_consumed
        return None if consumed is None else round(1 - consumed, 9)

    @property
    def exhausted(self) -> bool:
        remaining = self.budget_remaining
        return remaining is not None and remaining <= 0

    def to_dict(self) -> dict:
        return {"slo": self.slo, "probe": self.probe, "kind": self.kind, "objective": self.objective,
                "error_ratio": self.error_ratio, "budget_consumed": self.budget_consumed,
                "budget_remaining": self.budget_remaining}


@dataclass
class TargetReport:
    target: str
    up_ratio: Optional[float] = None
    resources: dict[str, dict[str, Optional[float]]] = field(
        default_factory=lambda: {r: {"avg": None, "min": None, "max": None} for r in RESOURCES})
    models: dict[str, dict] = field(default_factory=dict)
    probes: dict[str, ProbeReport] = field(default_factory=dict)
    slos: list[SLOReport] = field(default_factory=list)

    @property
    def availability_objective(self) -> Optional[float]:
        """The strictest availability objective of the target's SLOs: what `up_ratio` is held to."""
        objectives = [s.objective for s in self.slos if s.kind == "availability" and s.objective is not None]
        return max(objectives) if objectives else None

    @property
    def down_too_long(self) -> bool:
        objective = self.availability_objective
        return self.up_ratio is not None and objective is not None and self.up_ratio < objective

    @property
    def has_data(self) -> bool:
        return bool(self.up_ratio is not None or self.models or self.probes or self.slos
                    or any(v is not None for stats in self.resources.values() for v in stats.values()))

    @property
    def worst_success_ratio(self) -> Optional[float]:
        ratios = [p.success_ratio for p in self.probes.values() if p.success_ratio is not None]
        return min(ratios) if ratios else None

    def sort_key(self) -> tuple:
        worst = self.worst_success_ratio
        up = self.up_ratio
        return (1.0 if worst is None else worst, 1.0 if up is None else up, self.target)

    def to_dict(self) -> dict:
        return {"target": self.target, "up_ratio": self.up_ratio, "resources": self.resources,
                "models": {m: self.models[m] for m in sorted(self.models)},
                "probes": {k: self.probes[k].to_dict(k) for k in _kind_order(self.probes)},
                "slos": [s.to_dict() for s in self.slos]}


@dataclass
class AlertReport:
    alertname: str
    severity: Optional[str]
    target: Optional[str]
    labels: dict[str, str]
    firing_seconds: float
    times_fired: int
    first_firing_at: float
    last_firing_at: float
    firing_at_end: bool

    def to_dict(self) -> dict:
        return {"alertname": self.alertname, "severity": self.severity, "target": self.target,
                "labels": self.labels, "firing_seconds": self.firing_seconds, "times_fired": self.times_fired,
                "first_firing_at": iso_time(self.first_firing_at), "last_firing_at": iso_time(self.last_firing_at),
                "firing_at_end": self.firing_at_end}


@dataclass
class Report:
    range_seconds: float
    generated_at: float  # the end of the range, unix seconds
    prometheus: str
    targets: list[TargetReport]
    alerts: list[AlertReport]
    spark_step_seconds: float = 0.0

    @property
    def gate_failures(self) -> list[str]:
        """Why the report exits 1: spent budgets and targets down longer than their objective allows."""
        reasons = []
        for t in self.targets:
            if t.down_too_long:
                reasons.append(f"{t.target} was up {t.up_ratio:.2%} of the time, below its availability "
                               f"objective {t.availability_objective:.2%}")
            reasons += [f"{t.target} {s.slo}: error budget spent ({s.budget_consumed:.0%} used)" for s in t.slos
                        if s.exhausted]
        return reasons

    def to_dict(self) -> dict:
        seconds = self.range_seconds
        return {"range_seconds": int(seconds) if seconds.is_integer() else seconds,
                "generated_at": iso_time(self.generated_at), "prometheus": self.prometheus,
                "targets": [t.to_dict() for t in self.targets], "alerts": [a.to_dict() for a in self.alerts]}


def iso_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _kind_order(kinds) -> list[str]:
    known = [k for k in PROBE_KINDS if k in kinds]
    return known + sorted(k for k in kinds if k not in PROBE_KINDS)


# --- collecting -----------------------------------------------------------------------------------
async def collect(api: PrometheusAPI, queries: Queries, end: float) -> Report:
    """Runs every query (a few at a time) and assembles the report."""
    instant: dict[str, str] = {
        "up": queries.up_ratio(),
        "model_loaded": queries.model_loaded(),
        "model_memory": queries.model_memory(),
        "model_requests": queries.model_requests(),
        "runs": queries.runs(),
        "failures": queries.failures(),
        "cer": queries.cer(),
        "rtf": queries.rtf(),
        "first_result": queries.stream_p95("whoasr_stream_first_result_seconds",
                                           "whoasr_stream_run_first_result_seconds"),
        "result_lag": queries.stream_p95("whoasr_stream_result_lag_seconds", "whoasr_stream_run_result_lag_seconds"),
        "slo_error": queries.slo_error_ratio(),
        "slo_objective": queries.slo_objective(),
    }
    for resource in RESOURCES:
        for stat in ("avg", "min", "max"):
            instant[f"{resource}.{stat}"] = queries.resource(resource, stat)
    for name, q in QUANTILES.items():
        instant[f"latency.{name}"] = queries.latency(q)

    step = max(1.0, math.ceil(queries.range_seconds / SPARK_POINTS))
    spark_start = end - step * (SPARK_POINTS - 1)
    alert_step = max(1.0, math.ceil(queries.range_seconds / MAX_ALERT_POINTS))
    ranged = {
        "success_over_time": (queries.success_over_time(f"{int(step)}s"), spark_start, step),
        "p95_over_time": (queries.latency_over_time(f"{int(step)}s"), spark_start, step),
        "alerts": (queries.firing_alerts(), end - queries.range_seconds, alert_step),
    }
    names = list(instant) + list(ranged)
    answers = await asyncio.gather(
        *(api.query(expr, end) for expr in instant.values()),
        *(api.query_range(expr, start, end, s) for expr, start, s in ranged.values()),
    )
    got = dict(zip(names, answers))

    targets: dict[str, TargetReport] = {name: TargetReport(name) for name in queries.targets}

    def target(labels: dict[str, str]) -> TargetReport:
        name = labels.get("target", "")
        if name not in targets:
            targets[name] = TargetReport(name)
        return targets[name]

    def probe(labels: dict[str, str]) -> ProbeReport:
        reports = target(labels).probes
        return reports.setdefault(labels.get("probe", ""), ProbeReport())

    for s in got["up"]:
        target(s.labels).up_ratio = finite(s.value)
    for resource in RESOURCES:
        for stat in ("avg", "min", "max"):
            for s in got[f"{resource}.{stat}"]:
                target(s.labels).resources[resource][stat] = finite(s.value)
    for key, field_name in (("model_loaded", "loaded"), ("model_memory", "memory_bytes"),
                            ("model_requests", "requests")):
        for s in got[key]:
            models = target(s.labels).models
            entry = models.setdefault(s.labels.get("model", ""),
                                      {"loaded": None, "memory_bytes": None, "requests": None})
            value = finite(s.value)
            if value is None:
                continue
            if field_name == "loaded":
                entry["loaded"] = value >= 1
            elif field_name == "requests":
                entry["requests"] = round(value)
            else:
                entry["memory_bytes"] = int(value) if value.is_integer() else value

    for s in got["runs"]:
        value = finite(s.value)
        probe(s.labels).runs = None if value is None else round(value)
    for s in got["failures"]:
        value = finite(s.value)
        if value is not None and round(value) > 0:
            probe(s.labels).failures[s.labels.get("reason", "")] = round(value)
    for name in QUANTILES:
        for s in got[f"latency.{name}"]:
            probe(s.labels).latency_seconds[name] = finite(s.value)
    for key in ("cer", "rtf"):
        for s in got[key]:
            setattr(probe(s.labels), key, finite(s.value))
    for key, attr in (("first_result", "first_result_p95_seconds"), ("result_lag", "result_lag_p95_seconds")):
        for s in got[key]:
            setattr(probe({**s.labels, "probe": "stream"}), attr, finite(s.value))
    for report in targets.values():
        for kind in report.probes.values():
            if kind.runs:
                failed = sum(kind.failures.values())
                kind.success_ratio = max(0.0, 1 - failed / kind.runs)

    _attach_slos(queries, got["slo_error"], got["slo_objective"], target)
    _attach_over_time(got["success_over_time"], "success_over_time", spark_start, step, probe)
    _attach_over_time(got["p95_over_time"], "p95_over_time", spark_start, step, probe)

    ordered = sorted(targets.values(), key=TargetReport.sort_key)
    return Report(range_seconds=queries.range_seconds, generated_at=end, prometheus=api.url, targets=ordered,
                  alerts=alert_episodes(got["alerts"], alert_step, end), spark_step_seconds=step)


def _attach_slos(queries: Queries, errors: list[Sample], objectives: list[Sample], target) -> None:
    """One SLOReport per (target, SLO): where the target has the SLO's recorded SLI, and where the rules
    name the target in the SLO's objective (then also without SLI data: error ratio None)."""
    objective_of = {(s.labels.get("sloth_id", ""), s.labels.get("target", "")): finite(s.value) for s in objectives}
    found: dict[tuple[str, str], dict] = {}
    for s in objectives:
        name = s.labels.get("target", "")
        if name and (not queries.targets or name in queries.targets):
            found[(name, s.labels.get("sloth_id", ""))] = {**s.labels, "error": None}
    for s in errors:
        found[(s.labels.get("target", ""), s.labels.get("sloth_id", ""))] = {**s.labels, "error": finite(s.value)}
    for (name, sloth_id), labels in sorted(found.items(), key=lambda kv: (kv[0][0], kv[1].get("sloth_slo", ""))):
        objective = objective_of.get((sloth_id, name), objective_of.get((sloth_id, "")))
        slo_name = labels.get("sloth_slo", sloth_id)
        target(labels).slos.append(SLOReport(slo=slo_name, probe=labels.get("probe", ""),
                                             kind=slo_name.rsplit("-", 1)[-1], objective=objective,
                                             error_ratio=labels["error"]))


def _attach_over_time(series: list[Series], attr: str, start: float, step: float, probe) -> None:
    for s in series:
        values: list[Optional[float]] = [None] * SPARK_POINTS
        for t, v in s.points:
            index = round((t - start) / step)
            if 0 <= index < SPARK_POINTS:
                values[index] = finite(v)
        setattr(probe(s.labels), attr, values)


def alert_episodes(series: list[Series], step: float, end: float) -> list[AlertReport]:
    """Each firing alert (label set): how long it fired in the range, measured in steps of the range query."""
    alerts = []
    for s in series:
        if not s.points:
            continue
        times = [t for t, _ in s.points]
        episodes = 1 + sum(1 for a, b in zip(times, times[1:]) if b - a > step * 1.5)
        labels = {k: v for k, v in sorted(s.labels.items()) if k not in ("__name__", "alertstate")}
        alerts.append(AlertReport(
            alertname=labels.get("alertname", ""), severity=labels.get("severity"), target=labels.get("target"),
            labels=labels, firing_seconds=len(times) * step, times_fired=episodes,
            first_firing_at=times[0], last_firing_at=times[-1], firing_at_end=times[-1] >= end - step / 2))
    alerts.sort(key=lambda a: (-a.firing_seconds, a.alertname, a.target or ""))
    return alerts
