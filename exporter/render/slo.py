"""SLOs per (target, probe) as Sloth-style recording rules and multiwindow multi-burn-rate alerts.

The rule and label names follow Sloth (`slo:sli_error:ratio_rate<window>`, `sloth_id`, `sloth_service`,
`sloth_slo`, ...) so that Sloth's Grafana dashboards work on these series unchanged. The SLI series keep
`job`, `target` and `probe` so that our own dashboards can filter them like every other series.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from exporter.config import Config
from exporter.kinds import PROBE_KINDS

from .promql import number_text, ratio_text, selector

SERVICE = "whoasr"
PERIOD = "30d"  # the SLO period: budget remaining and period burn rate are computed over it
PERIOD_DAYS = 30
SLO_KINDS = ("availability", "latency")
ALERT_NAMES = {"availability": "WhoasrProbeAvailabilityBudgetBurn", "latency": "WhoasrProbeLatencyBudgetBurn"}
BY = "job, target, probe"


@dataclass(frozen=True)
class BurnWindow:
    """One row of the SRE workbook's table: alert when both windows burn faster than `factor`."""

    severity: str  # Alertmanager routing: critical pages, warning opens a ticket
    sloth_severity: str  # Sloth's name for the same thing
    factor: str  # kept as text so the expression reads 14.4, not 14.400000000000002
    long: str
    short: str


# The window table, the one place it is defined: rules, alerts, tests and the SLO dashboard read it.
BURN_WINDOWS = (
    BurnWindow("critical", "page", "14.4", "1h", "5m"),
    BurnWindow("critical", "page", "6", "6h", "30m"),
    BurnWindow("warning", "ticket", "3", "1d", "2h"),
    BurnWindow("warning", "ticket", "1", "3d", "6h"),
)

_UNIT = {"m": 60, "h": 3600, "d": 86400}


def _window_seconds(window: str) -> int:
    return int(window[:-1]) * _UNIT[window[-1]]


# Every window an alert needs, shortest first (5m, 30m, 1h, 2h, 6h, 1d, 3d).
SLI_WINDOWS = tuple(
    sorted({w for row in BURN_WINDOWS for w in (row.long, row.short)}, key=_window_seconds)
)


# Where each probe kind's latency SLI comes from: (histogram, the threshold that is its good bucket).
# A streaming session lasts as long as its clip, played in real time: the voice path's latency is the
# time to the first result. stream_vad has no latency SLO (its session is the clip, nothing else).
LATENCY_SOURCES = {
    "batch": ("whoasr_probe_duration_seconds", "response_time_seconds"),
    "punctuation": ("whoasr_probe_duration_seconds", "response_time_seconds"),
    "vad": ("whoasr_probe_duration_seconds", "response_time_seconds"),
    "timestamp": ("whoasr_probe_duration_seconds", "response_time_seconds"),
    "stream": ("whoasr_stream_first_result_seconds", "stream_first_result_seconds"),
}


@dataclass(frozen=True)
class SLO:
    probe: str
    kind: str  # availability | latency
    objective_percent: float
    latency_seconds: float = 0.0  # the latency SLI's bound (its histogram has a bucket there)
    latency_metric: str = ""

    @property
    def name(self) -> str:
        return f"{self.probe}-{self.kind}"

    @property
    def id(self) -> str:
        return f"{SERVICE}-{self.name}"

    @property
    def objective_ratio(self) -> str:
        return ratio_text(self.objective_percent)

    @property
    def objective_text(self) -> str:
        return number_text(self.objective_percent)

    @property
    def latency_le(self) -> str:
        return latency_le(self.latency_seconds)

    @property
    def error_budget(self) -> str:
        """1 - objective, as exact decimal text (99.9 -> 0.001)."""
        budget = (Decimal(100) - Decimal(repr(self.objective_percent))) / 100
        return format(budget.normalize(), "f")

    def sloth_labels(self) -> dict[str, str]:
        return {"sloth_id": self.id, "sloth_service": SERVICE, "sloth_slo": self.name}

    def sloth_selector(self) -> str:
        return selector(self.sloth_labels())

    def sli_error(self, window: str) -> str:
        """Ratio of bad runs in the window, per job, target and probe; no sample at all when no run
        finished in it: a NaN (0/0) would stay in the 30-day average (sum_over_time) for 30 days, so one
        quiet window, such as the first after a start, would blank the period's burn rate and budget.
        Scheduled mode's counters and histograms, or else (multi-target mode, where those series do not
        exist) the relabelled /probe gauges of each run."""
        sel = {"probe": self.probe}
        if self.kind == "availability":
            runs = f"sum by ({BY}) (rate(whoasr_probe_runs_total{selector(sel)}[{window}]))"
            failures = f"sum by ({BY}) (rate(whoasr_probe_failures_total{selector(sel)}[{window}]))"
            # No failure yet means no failure series at all: count it as zero, not as "no data".
            scheduled = f"(\n  {failures}\n  or\n  0 * {runs}\n)\n/\n({runs} > 0)"
            on_demand = (f"(1 - avg by ({BY}) (avg_over_time(whoasr_probe_success{selector(sel)}[{window}])))\n"
                         f"unless on ({BY}) whoasr_probe_runs_total{selector(sel)}")
            return f"(\n{scheduled}\n)\nor\n{on_demand}"
        metric = self.latency_metric
        # The voice-path histograms carry no probe label: select none, add it by the rule's labels.
        hsel = sel if metric == "whoasr_probe_duration_seconds" else {}
        by = BY if hsel else "job, target"
        total = f"sum by ({by}) (rate({metric}_count{selector(hsel) if hsel else ''}[{window}]))"
        good = f"sum by ({by}) (rate({metric}_bucket{selector({**hsel, 'le': self.latency_le})}[{window}]))"
        scheduled = f"(\n  {total}\n  -\n  {good}\n)\n/\n({total} > 0)"
        # One /probe gauge per run: the share of the window's minutes whose latest run was too slow.
        gauge = RUN_GAUGES[metric]
        bound = number_text(self.latency_seconds)
        on_demand = (f"avg by ({by}) (avg_over_time(({gauge}{selector(sel)} > bool {bound})"
                     f"[{window}:1m]))\nunless on ({by}) {metric}_count{selector(hsel) if hsel else ''}")
        return f"(\n{scheduled}\n)\nor\n{on_demand}"


# Scheduled mode's histogram -> multi-target mode's /probe gauge of one run (rules.py reads it too).
RUN_GAUGES = {
    "whoasr_probe_duration_seconds": "whoasr_probe_run_duration_seconds",
    "whoasr_stream_first_result_seconds": "whoasr_stream_run_first_result_seconds",
    "whoasr_stream_result_lag_seconds": "whoasr_stream_run_result_lag_seconds",  # the run's largest lag
}


def latency_le(seconds: float) -> str:
    """The `le` label value prometheus_client writes for a bucket bound (5.0 -> "5.0")."""
    from prometheus_client.utils import floatToGoString

    return floatToGoString(seconds)


def slos(config: Config) -> list[SLO]:
    """An availability SLO for every probe kind and a latency SLO for those with a latency SLI. The SLIs
    are per job, target and probe; no target is named, so the rules hold for any set of targets."""
    thresholds = config.thresholds
    out = []
    for probe in PROBE_KINDS:
        out.append(SLO(probe, "availability", thresholds.slo_availability_percent))
        if probe in LATENCY_SOURCES:
            metric, bound = LATENCY_SOURCES[probe]
            out.append(SLO(probe, "latency", thresholds.slo_latency_percent, getattr(thresholds, bound), metric))
    return out


def _record(name: str, expr: str, labels: dict[str, str]) -> dict:
    return {"record": name, "expr": expr, "labels": labels}


def recording_rules(slo: SLO) -> list[dict]:
    """Sloth's recording rules for one SLO: the SLIs per window, then the metadata."""
    labels = slo.sloth_labels()
    sel = slo.sloth_selector()
    sli_rules = [
        _record(f"slo:sli_error:ratio_rate{w}", slo.sli_error(w), {**labels, "probe": slo.probe, "sloth_window": w})
        for w in SLI_WINDOWS
    ]
    # The period SLI averages the 5m SLI, as Sloth does: a 30d rate() over raw counters is too costly.
    first = f"slo:sli_error:ratio_rate{SLI_WINDOWS[0]}{sel}"
    sli_rules.append(
        _record(
            f"slo:sli_error:ratio_rate{PERIOD}",
            f"sum_over_time({first}[{PERIOD}])\n/ ignoring (sloth_window)\ncount_over_time({first}[{PERIOD}])",
            {**labels, "sloth_window": PERIOD},
        )
    )
    static = {**labels, "probe": slo.probe}
    # The metadata is per target too (one series per target the probe runs on, in either mode), so a
    # query for one target's SLOs finds its objective beside its SLI.
    probed = f"group by ({BY}) (whoasr_probe_success{selector({'probe': slo.probe})})"
    on = f"on ({BY}, sloth_id, sloth_slo, sloth_service) group_left ()"
    meta_rules = [
        _record("slo:objective:ratio", f"{slo.objective_ratio} * {probed}", static),
        _record("slo:error_budget:ratio", f"{slo.error_budget} * {probed}", static),
        _record("slo:time_period:days", f"{PERIOD_DAYS} * {probed}", static),
        _record(
            "slo:current_burn_rate:ratio",
            f"slo:sli_error:ratio_rate{SLI_WINDOWS[0]}{sel}\n/ {on}\nslo:error_budget:ratio{sel}",
            labels,
        ),
        _record(
            "slo:period_burn_rate:ratio",
            f"slo:sli_error:ratio_rate{PERIOD}{sel}\n/ {on}\nslo:error_budget:ratio{sel}",
            labels,
        ),
        _record(
            "slo:period_error_budget_remaining:ratio",
            f"1 - slo:period_burn_rate:ratio{sel}",
            labels,
        ),
        _record(
            "sloth_slo_info",
            probed,
            {
                **static,
                "sloth_mode": "whoasr-exporter-render",
                "sloth_objective": slo.objective_text,
                "sloth_spec": "prometheus/v1",
            },
        ),
    ]
    return sli_rules + meta_rules


def _burn_condition(slo: SLO, row: BurnWindow) -> str:
    sel = slo.sloth_selector()

    def over(window: str) -> str:
        return (
            f"max(slo:sli_error:ratio_rate{window}{sel} > ({row.factor} * {slo.error_budget}))"
            " without (sloth_window)"
        )

    # The short window first: its value is the one the description shows (how bad it is right now).
    # A target that was down within the short window burns its budget through an outage that
    # WhoasrTargetDown pages for already: that burn stays silent, so one outage pages once.
    return (f"(\n  {over(row.short)}\n  and\n  {over(row.long)}\n)\n"
            f"unless on (target)\nmin_over_time(whoasr_up[{row.short}]) == 0")


def burn_alerts(slo: SLO, links: dict[str, str]) -> list[dict]:
    """A page (critical) and a ticket (warning) alert for one SLO, each an `or` of its window rows."""
    alerts = []
    for severity in ("critical", "warning"):
        rows = [row for row in BURN_WINDOWS if row.severity == severity]
        sloth_severity = rows[0].sloth_severity
        speed = "fast" if severity == "critical" else "steadily"
        factors = " or ".join(f"{row.factor}x over {row.long} and {row.short}" for row in rows)
        what = "failed" if slo.kind == "availability" else (
            f"took longer than {number_text(slo.latency_seconds)}s"
        )
        alerts.append(
            {
                "alert": ALERT_NAMES[slo.kind],
                "expr": "\nor\n".join(_burn_condition(slo, row) for row in rows),
                "labels": {"severity": severity, "sloth_severity": sloth_severity, **slo.sloth_labels()},
                "annotations": {
                    "summary": (
                        f"{slo.kind.capitalize()} error budget of the {slo.probe} probe on "
                        f"{{{{ $labels.target }}}} is burning {speed}."
                    ),
                    "description": (
                        f"{{{{ $value | humanizePercentage }}}} of recent {slo.probe} probe runs on "
                        f"{{{{ $labels.target }}}} {what}: the error budget of the {slo.objective_text}% "
                        f"{slo.kind} objective ({PERIOD}) burns faster than {factors}."
                    ),
                    **links,
                },
            }
        )
    return alerts


def group(slo: SLO, links: dict[str, str]) -> dict:
    """One rule group per SLO. Sloth uses three, but rules in one group run in order, so the alerts
    always read the SLIs of the same evaluation, in Prometheus and in promtool alike."""
    return {"name": f"sloth-slo-{slo.id}", "rules": recording_rules(slo) + burn_alerts(slo, links)}
