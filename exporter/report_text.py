"""The report for people: a terminal table (worst target first, sparklines over the range), Markdown for a
ticket, or the JSON document (README "Reports")."""

from __future__ import annotations

import json
from typing import Callable, Optional

from exporter.report import AlertReport, ProbeReport, Report, TargetReport, _kind_order, iso_time

SPARK = "▁▂▃▄▅▆▇█"
NO_DATA = "-"


def render(report: Report, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report.to_dict(), ensure_ascii=False, indent=2)
    if fmt == "markdown":
        return markdown(report)
    return table(report)


# --- numbers --------------------------------------------------------------------------------------
def percent(value: Optional[float], digits: int = 1) -> str:
    return NO_DATA if value is None else f"{value * 100:.{digits}f}%"


def seconds(value: Optional[float]) -> str:
    if value is None:
        return NO_DATA
    if value < 1:
        return f"{value * 1000:.0f}ms"
    return f"{value:.2f}s"


def number(value: Optional[float], digits: int = 3) -> str:
    return NO_DATA if value is None else f"{value:.{digits}f}"


def duration(total: float) -> str:
    total = int(round(total))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "", f"{minutes}m" if minutes else "",
             f"{secs}s" if secs or not total else ""]
    return "".join(p for p in parts if p)


def bytes_text(value: Optional[float]) -> str:
    if value is None:
        return NO_DATA
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def sparkline(values: list[Optional[float]], low: float = 0.0, high: Optional[float] = None) -> str:
    """One character per point; a blank where there was no data. `high` defaults to the largest value."""
    present = [v for v in values if v is not None]
    if not present:
        return ""
    top = max(present) if high is None else high
    span = top - low
    chars = []
    for value in values:
        if value is None:
            chars.append(" ")
        elif span <= 0:
            chars.append(SPARK[-1] if value > low or high is None else SPARK[0])
        else:
            level = (min(max(value, low), top) - low) / span
            chars.append(SPARK[round(level * (len(SPARK) - 1))])
    return "".join(chars)


def failures_text(failures: dict[str, int]) -> str:
    if not failures:
        return NO_DATA
    return ", ".join(f"{reason} {count}" for reason, count in sorted(failures.items(), key=lambda kv: (-kv[1], kv[0])))


def resources_text(target: TargetReport) -> str:
    parts = []
    for name, stats in target.resources.items():
        if stats["avg"] is None:
            continue
        parts.append(f"{name} avg {percent(stats['avg'])} (min {percent(stats['min'])}, max {percent(stats['max'])})")
    return "; ".join(parts) or "no resource figures"


def models_text(target: TargetReport) -> str:
    parts = []
    for model in sorted(target.models):
        entry = target.models[model]
        state = {True: "loaded", False: "NOT loaded", None: "state unknown"}[entry["loaded"]]
        extra = [x for x in (bytes_text(entry["memory_bytes"]) if entry["memory_bytes"] is not None else "",
                             f"{entry['requests']} requests" if entry["requests"] is not None else "") if x]
        parts.append(f"{model} {state}" + (f" ({', '.join(extra)})" if extra else ""))
    return "; ".join(parts) or "no model figures"


def stream_text(probe: ProbeReport) -> str:
    return (f"stream: first result p95 {seconds(probe.first_result_p95_seconds)}, "
            f"result lag p95 {seconds(probe.result_lag_p95_seconds)}")


def slo_row(slo) -> list[str]:
    state = "EXHAUSTED" if slo.exhausted else ("ok" if slo.budget_remaining is not None else NO_DATA)
    return [slo.slo, percent(slo.objective, 2), percent(slo.error_ratio, 2), percent(slo.budget_consumed, 0),
            percent(slo.budget_remaining, 0), state]


def probe_row(kind: str, probe: ProbeReport) -> list[str]:
    return [kind, NO_DATA if probe.runs is None else str(probe.runs), percent(probe.success_ratio),
            *(seconds(probe.latency_seconds[q]) for q in ("p50", "p95", "p99")), number(probe.cer),
            number(probe.rtf), failures_text(probe.failures)]


SHOWN_APART = ("alertname", "severity", "target", "job", "instance")


def alert_row(alert: AlertReport) -> list[str]:
    """The labels that tell one alert from another; Sloth's bookkeeping labels are left to the JSON."""
    shown = {("slo" if k == "sloth_slo" else k): v for k, v in alert.labels.items()
             if k not in SHOWN_APART and (k == "sloth_slo" or not k.startswith("sloth_"))}
    return [alert.alertname, alert.severity or NO_DATA, alert.target or NO_DATA,
            ", ".join(f"{k}={v}" for k, v in shown.items()) or NO_DATA,
            str(alert.times_fired), duration(alert.firing_seconds), "yes" if alert.firing_at_end else "no"]


PROBE_HEADER = ["PROBE", "RUNS", "SUCCESS", "P50", "P95", "P99", "CER", "RTF", "FAILURES"]
SLO_HEADER = ["SLO", "OBJECTIVE", "ERRORS", "BUDGET USED", "REMAINING", "STATE"]
ALERT_HEADER = ["ALERT", "SEVERITY", "TARGET", "LABELS", "TIMES", "FIRING FOR", "AT END"]


def _heading(report: Report) -> tuple[str, str]:
    start = iso_time(report.generated_at - report.range_seconds)
    return (f"whoAsr report: last {duration(report.range_seconds)} ({start} .. {iso_time(report.generated_at)})",
            f"from {report.prometheus}")


# --- table ----------------------------------------------------------------------------------------
def _columns(rows: list[list[str]], right: Callable[[int], bool] = lambda i: False) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(widths[i]) if right(i) else cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return lines


def table(report: Report) -> str:
    title, source = _heading(report)
    lines = [f"{title}, {source}", f"{len(report.targets)} targets, worst first; "
             f"sparklines: one character per {duration(report.spark_step_seconds)}", ""]
    if not report.targets:
        lines.append("No whoAsr series in this range (is this the Prometheus that scrapes the exporter?).")
    for target in report.targets:
        lines += _target_block(target)
    lines.append("Alerts that fired" if report.alerts else "No alerts fired.")
    if report.alerts:
        lines += ["  " + line for line in _columns([ALERT_HEADER] + [alert_row(a) for a in report.alerts])]
    gate = report.gate_failures
    lines += ["", "RESULT: " + ("; ".join(gate) if gate else "every SLO within budget")]
    return "\n".join(lines)


def _target_block(target: TargetReport) -> list[str]:
    flag = "  (down longer than its availability objective allows)" if target.down_too_long else ""
    lines = [f"== {target.target}  up {percent(target.up_ratio, 2)}{flag}",
             f"   resources: {resources_text(target)}", f"   models: {models_text(target)}"]
    if target.probes:
        rows = [PROBE_HEADER + ["SUCCESS OVER TIME", "P95 OVER TIME"]]
        for kind in _kind_order(target.probes):
            probe = target.probes[kind]
            rows.append(probe_row(kind, probe) + [sparkline(probe.success_over_time, 0.0, 1.0),
                                                  sparkline(probe.p95_over_time)])
        lines += ["   " + line for line in _columns(rows, right=lambda i: i in (1, 2))]
        if "stream" in target.probes:
            lines.append("   " + stream_text(target.probes["stream"]))
    else:
        lines.append("   no probe runs in this range")
    if target.slos:
        lines += ["   " + line for line in _columns([SLO_HEADER] + [slo_row(s) for s in target.slos])]
    lines.append("")
    return lines


# --- markdown -------------------------------------------------------------------------------------
def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cell(text: str) -> str:
        return text.replace("|", "\\|") or " "

    return ["| " + " | ".join(cell(h.lower()) for h in header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(cell(c) for c in row) + " |" for row in rows]


def markdown(report: Report) -> str:
    title, source = _heading(report)
    lines = [f"# {title}", "", f"Data {source}; targets worst first.", ""]
    if not report.targets:
        lines += ["No whoAsr series in this range.", ""]
    for target in report.targets:
        flag = " — **down longer than its availability objective allows**" if target.down_too_long else ""
        lines += [f"## {target.target}", "", f"- up: {percent(target.up_ratio, 2)}{flag}",
                  f"- resources: {resources_text(target)}", f"- models: {models_text(target)}"]
        if "stream" in target.probes:
            lines.append(f"- {stream_text(target.probes['stream'])}")
        lines.append("")
        if target.probes:
            rows = [probe_row(k, target.probes[k]) + [
                f"`{sparkline(target.probes[k].success_over_time, 0.0, 1.0)}`",
                f"`{sparkline(target.probes[k].p95_over_time)}`"] for k in _kind_order(target.probes)]
            lines += _md_table(PROBE_HEADER + ["success over time", "p95 over time"], rows) + [""]
        if target.slos:
            lines += _md_table(SLO_HEADER, [slo_row(s) for s in target.slos]) + [""]
    lines += ["## Alerts", ""]
    if report.alerts:
        lines += _md_table(ALERT_HEADER, [alert_row(a) for a in report.alerts]) + [""]
    else:
        lines += ["No alerts fired.", ""]
    gate = report.gate_failures
    lines.append("**Result:** " + ("; ".join(gate) if gate else "every SLO within budget"))
    return "\n".join(lines)
