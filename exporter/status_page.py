"""The status page (`/`), read at a glance when something is wrong: for each target its state and models,
for each of its probes a state colour, a sparkline of the recent run durations with the failed runs
marked, and the last failure's reason linking to the kept run (with its trace) in /api/history.

Server-rendered HTML with inline CSS and SVG: no JavaScript, nothing fetched from elsewhere, so it works
behind any proxy and in a terminal browser. Targets with a problem come first.

Two steps, so that the page never stalls the event loop (200 targets take tens of milliseconds to
format): `snapshot` copies what the page shows, on the loop, in about a millisecond; `to_html` formats
that copy anywhere, the web handler in a worker thread.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from typing import Iterable, Optional
from urllib.parse import quote

from exporter import __version__
from exporter.client import public_url
from exporter.config import TargetConfig
from exporter.history import History
from exporter.kinds import PROBE_KINDS, SCRAPE_KINDS
from exporter.results import ProbeResult
from exporter.state import ExporterState, TargetState

RECENT_FAILURES = 30
SPARK_WIDTH, SPARK_HEIGHT = 100, 22  # CSS pixels; the SVG's own units are tenths of them (integer points)

# state -> (colour, symbol); the symbol keeps a state readable without colour
PROBE_STATES = {
    "ok": ("#2e7d32", "✓"),
    "recovered": ("#ef6c00", "✓"),  # passes now, but a recent run failed
    "failing": ("#c62828", "✗"),
    "pending": ("#9e9e9e", "…"),
    "na": ("#bdbdbd", "–"),  # does not apply to this target (timestamps on v1)
}
TARGET_STATES = {
    "up": ("#2e7d32", "up"),
    "unhealthy": ("#ef6c00", "unhealthy"),
    "down": ("#c62828", "down"),
    "pending": ("#9e9e9e", "pending"),
}
_SEVERITY = {"down": 3, "failing": 2, "unhealthy": 2, "recovered": 1}

esc = html.escape

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.2em;color:#212121;font-size:14px}
h1{font-size:1.4em;margin:0 0 .3em} h2{font-size:1.15em;margin:1.2em 0 .4em}
nav a{margin-right:1em} .summary span{display:inline-block;margin:.2em 1em .2em 0}
table{border-collapse:collapse} th,td{border:1px solid #ddd;padding:3px 6px;vertical-align:top;text-align:left}
th{background:#f5f5f5;position:sticky;top:0}
.dot{display:inline-block;width:.8em;height:.8em;border-radius:50%;margin-right:.35em;vertical-align:-.05em}
td.probe{border-left-width:5px;white-space:nowrap;min-width:9em} td.models{min-width:7em}
.spark{display:block;margin:1px 0} .spark polyline{fill:none;stroke:#546e7a;stroke-width:12}
.spark circle.fail{fill:#c62828} .spark circle.last{fill:#37474f}
.small{color:#616161;font-size:.85em} .bad{color:#c62828} .warn{color:#ef6c00} .good{color:#2e7d32}
a.reason{color:#c62828;font-weight:600} a.run{color:#546e7a}
"""


@dataclass(frozen=True)
class ProbeView:
    kind: str
    recent: list[ProbeResult]  # oldest first
    last_failure: Optional[tuple[int, ProbeResult]]  # (its id in the history, the result)


@dataclass(frozen=True)
class TargetView:
    name: str
    url: str  # without credentials
    api: Optional[str]
    state: str  # a TARGET_STATES key
    models: Optional[dict[str, bool]]
    scrape_failures: list[tuple[str, str, str]]  # (endpoint, reason, detail) of failing scrapes
    health_at: Optional[float]
    probes: dict[str, ProbeView]  # the target's probe kinds


@dataclass(frozen=True)
class Snapshot:
    kinds: list[str]  # the columns
    targets: list[TargetView]
    failures: list[tuple[int, ProbeResult]]  # newest first, with their ids


def target_state(state: TargetState) -> str:
    if state.up is None:
        return "pending"
    if not state.up:
        return "down"
    if state.health is not None and state.health.status not in (None, "healthy"):
        return "unhealthy"
    return "up"


def snapshot(targets: Iterable[TargetConfig], state: ExporterState, history: History) -> Snapshot:
    """What the page shows, copied (results are never changed once recorded, so they are shared)."""
    targets = list(targets)
    views = []
    for target in targets:
        tstate = state.targets.get(target.name)
        if tstate is None:
            continue
        scrape_failures = []
        for endpoint in SCRAPE_KINDS:
            scraped = tstate.endpoints.get(endpoint)
            if scraped is not None and scraped.last_success is False:
                scrape_failures.append((endpoint, scraped.last_reason or "failed", scraped.last_detail))
        health = tstate.endpoints.get("health")
        models = tstate.models_loaded()
        views.append(TargetView(
            name=target.name, url=public_url(target.url), api=tstate.api, state=target_state(tstate),
            models=dict(models) if models else None, scrape_failures=scrape_failures,
            health_at=health.last_scrape_timestamp if health is not None else None,
            probes={kind: ProbeView(kind, history.recent(target.name, kind), history.last_failure(target.name, kind))
                    for kind in target.enabled_probes()}))
    kinds = [kind for kind in PROBE_KINDS if any(kind in t.enabled_probes() for t in targets)]
    return Snapshot(kinds, views, history.recent_failures(RECENT_FAILURES))


def probe_state(recent: list[ProbeResult]) -> str:
    if not recent:
        return "pending"
    latest = recent[-1]
    if not latest.applicable:
        return "na"
    if not latest.success:
        return "failing"
    if any(not r.success and r.applicable for r in recent):
        return "recovered"
    return "ok"


def failure_link(seq: int) -> str:
    """The kept run behind a failure, trace included (/api/history?id=)."""
    return f"/api/history?id={seq}"


def _age(timestamp: Optional[float], now: float) -> str:
    if timestamp is None:
        return "never"
    seconds = max(now - timestamp, 0)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.0f}h ago"


def sparkline(recent: list[ProbeResult]) -> str:
    """Inline SVG: the durations of the recent runs (oldest left), a red dot on each failed run."""
    runs = [r for r in recent if r.applicable]
    if not runs:
        return ""
    width, height, pad = SPARK_WIDTH * 10, SPARK_HEIGHT * 10, 30
    top = max(r.duration_seconds for r in runs) or 1.0
    step = (width - 2 * pad) / max(len(runs) - 1, 1)
    scale = (height - 2 * pad) / top
    points = [(int(pad + i * step), int(height - pad - r.duration_seconds * scale)) for i, r in enumerate(runs)]
    failed = [point for point, run in zip(points, runs) if not run.success]
    parts = [f'<svg class="spark" width="{SPARK_WIDTH}" height="{SPARK_HEIGHT}" viewBox="0 0 {width} {height}" '
             f'role="img"><title>last {len(runs)} runs, {len(failed)} failed; longest {top:.2f}s</title>'
             '<polyline points="', " ".join(f"{x},{y}" for x, y in points), '"/>']
    parts.extend(f'<circle class="fail" cx="{x}" cy="{y}" r="26"/>' for x, y in failed)
    if runs[-1].success:
        parts.append(f'<circle class="last" cx="{points[-1][0]}" cy="{points[-1][1]}" r="18"/>')
    parts.append("</svg>")
    return "".join(parts)


def probe_cell(view: ProbeView, quoted_target: str, now: float) -> tuple[str, str]:
    """(state, <td>) of one probe of one target."""
    recent = view.recent
    state = probe_state(recent)
    colour, symbol = PROBE_STATES[state]
    lines = []
    if recent:
        latest = recent[-1]
        if state == "na":
            lines.append(f'<div class="small">n/a: {esc(latest.detail[:80])}</div>')
        else:
            figure = f"{latest.duration_seconds:.2f}s"
            if latest.cer is not None:
                figure += f" · CER {latest.cer:.2f}"
            lines.append(f'<div>{symbol} <span class="small">{figure} · {_age(latest.started_at, now)}</span></div>')
            lines.append(sparkline(recent))
    else:
        lines.append(f'<div>{symbol} <span class="small">no run yet</span></div>')
    if view.last_failure is not None:
        seq, failure = view.last_failure
        prefix = "" if state == "failing" else '<span class="small">last failure: </span>'
        lines.append(f'<div>{prefix}<a class="reason" href="{failure_link(seq)}" '
                     f'title="{esc(failure.detail[:200])}">{esc(failure.reason or "failed")}</a>'
                     f' <span class="small">{_age(failure.started_at, now)}</span></div>')
    lines.append(f'<div><a class="run small" href="/probe?target={quoted_target}&amp;module={view.kind}&amp;'
                 'debug=true" title="run it now, with a debug log of every request and check">run now</a></div>')
    cell = (f'<td class="probe {state}" data-probe="{view.kind}" data-state="{state}" '
            f'style="border-left-color:{colour}">{"".join(lines)}</td>')
    return state, cell


def models_cell(loaded: Optional[dict[str, bool]]) -> str:
    if not loaded:
        return '<td class="models small">unknown</td>'
    missing = sorted(name for name, ok in loaded.items() if not ok)
    if not missing:
        return f'<td class="models good" data-missing="">all {len(loaded)} loaded</td>'
    names = ", ".join(esc(name) for name in missing)
    return (f'<td class="models bad" data-missing="{esc(",".join(missing))}">'
            f'{len(loaded) - len(missing)}/{len(loaded)} loaded<br>missing: {names}</td>')


def scrape_note(view: TargetView, now: float) -> str:
    notes = [f'<span class="bad" title="{esc(detail[:300])}">{endpoint}: {esc(reason)}</span>'
             for endpoint, reason, detail in view.scrape_failures]
    if view.health_at is not None:
        notes.append(f'<span class="small">health {_age(view.health_at, now)}</span>')
    return "<br>".join(notes)


def render(targets: Iterable[TargetConfig], state: ExporterState, history: History,
           now: Optional[float] = None) -> str:
    return to_html(snapshot(targets, state, history), now)


def to_html(snap: Snapshot, now: Optional[float] = None) -> str:
    now = time.time() if now is None else now
    kinds = snap.kinds
    rows: list[tuple[int, int, str]] = []
    target_counts = dict.fromkeys(TARGET_STATES, 0)
    probe_counts = dict.fromkeys(PROBE_STATES, 0)
    for order, view in enumerate(snap.targets):
        up = view.state
        target_counts[up] += 1
        colour, label = TARGET_STATES[up]
        quoted = quote(view.name, safe="")
        cells = []
        worst = _SEVERITY.get(up, 0)
        for kind in kinds:
            probe = view.probes.get(kind)
            if probe is None:
                cells.append('<td class="probe none"></td>')
                continue
            pstate, cell = probe_cell(probe, quoted, now)
            probe_counts[pstate] += 1
            worst = max(worst, _SEVERITY.get(pstate, 0))
            cells.append(cell)
        row = (f'<tr class="target" data-target="{esc(view.name)}" data-state="{up}">'
               f'<td><span class="dot" style="background:{colour}"></span><b>{esc(view.name)}</b> '
               f'<span class="small">{label} · {esc(view.api or "api?")}</span><br>'
               f'<span class="small">{esc(view.url)}</span> <a class="small" href="/api/history?target={quoted}">'
               f'history</a><br>{scrape_note(view, now)}</td>'
               f'{models_cell(view.models)}{"".join(cells)}</tr>')
        rows.append((-worst, order, row))
    rows.sort(key=lambda item: (item[0], item[1]))

    summary = " ".join(
        f'<span><span class="dot" style="background:{TARGET_STATES[name][0]}"></span>{count} {name}</span>'
        for name, count in target_counts.items() if count) or "<span>no targets</span>"
    probe_summary = " ".join(
        f'<span><span class="dot" style="background:{PROBE_STATES[name][0]}"></span>{count} {label}</span>'
        for name, label in (("failing", "probes failing"), ("recovered", "recovered"), ("ok", "ok"),
                            ("pending", "pending"), ("na", "n/a"))
        if (count := probe_counts[name]))
    failures = []
    for seq, result in snap.failures:
        failures.append(
            f'<tr class="failure"><td>{time.strftime("%H:%M:%S", time.localtime(result.started_at))}</td>'
            f"<td>{esc(result.target)}</td><td>{esc(result.probe)}</td>"
            f'<td><a class="reason" href="{failure_link(seq)}">{esc(result.reason or "failed")}</a></td>'
            f"<td>{result.http_status or ''}</td><td>{esc(result.detail[:200])}</td>"
            f"<td>{esc(result.error_body or '')}</td></tr>")
    header = "".join(f"<th>{kind}</th>" for kind in kinds)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>whoasr-exporter</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body><h1>whoasr-exporter {esc(__version__)}</h1>
<nav><a href="/metrics">Metrics</a><a href="/api/history">History (JSON)</a><a href="/-/healthy">Healthy</a><a href="/-/ready">Ready</a><a href="/runbook">Runbook</a></nav>
<p class="summary" id="summary">{summary}<br>{probe_summary}</p>
<p class="small">Problems first. Per probe: the state of its last run, the recent run durations (a red dot
marks a failed run), the last failure's reason (it opens the kept run with its trace).</p>
<table id="targets"><thead><tr><th>Target</th><th>Models</th>{header}</tr></thead><tbody>
{''.join(row for _, _, row in rows) or f'<tr><td colspan="{len(kinds) + 2}">no targets configured</td></tr>'}
</tbody></table>
<h2>Recent failures</h2>
<table id="failures"><thead><tr><th>Time</th><th>Target</th><th>Probe</th><th>Reason</th><th>HTTP</th><th>Detail</th>
<th>Body</th></tr></thead><tbody>
{''.join(failures) or '<tr><td colspan="7">none</td></tr>'}
</tbody></table>
</body></html>"""
