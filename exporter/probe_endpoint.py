"""`GET /probe?target=&module=[&debug=true]`: one run now, into a fresh registry (blackbox_exporter's
multi-target pattern), so one exporter can serve many whoAsr instances found by service discovery.

The run goes through the scheduled runs' own `Runner` (same health gate, clip loading and probes); its
result goes only to the log sink, not into the scheduled state nor the history: Prometheus may call
/probe every few seconds, and those runs would push the scheduled failures out of the ring buffers the
status page reads. `&debug=true` is where an on-demand run can be read.

Guards: raw URL targets only when `exporter.allowed_targets` has a pattern matching the whole URL (not an
open proxy); at most `max_concurrent_probes` runs at once, the excess answered 503 at once (no queue).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import time
from collections import OrderedDict
from typing import Optional, Protocol

import aiohttp
import structlog
from aiohttp import web
from pydantic import ValidationError

from exporter.client import TargetClient, public_url
from exporter.config import Config, TargetConfig
from exporter.kinds import MODULES, is_scrape
from exporter.metrics import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, render_result, wants_openmetrics
from exporter.results import ProbeResult, Trace
from exporter.runner import Runner
from exporter.sinks import LogSink, Sink, deliver

log = structlog.get_logger("exporter.probe_endpoint")
TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
TIMEOUT_OFFSET = 0.5  # seconds kept back from Prometheus' scrape timeout to write the answer
HARD_CUT_MARGIN = 0.25  # beyond the budget, the handler answers whatever the run is doing
MAX_TARGET_CHARS = 2048
ADHOC_CLIENTS = 32  # URL targets whose client (and detected API generation) is kept for reuse



class ProbeSource(Protocol):
    """What /probe needs from the daemon: the live config, its clients, session and runner."""

    config: Config
    clients: dict[str, TargetClient]
    session: Optional[aiohttp.ClientSession]
    runner: Runner


class BadRequest(Exception):
    """A one-line reason for a 400."""


class ProbeLimiter:
    """Counts runs in flight; refuses beyond the limit instead of queueing (a queue only adds latency
    until Prometheus' own scrape timeout, and lets a burst pile up work on the machine)."""

    def __init__(self) -> None:
        self.in_flight = 0

    def try_acquire(self, limit: int) -> bool:
        if self.in_flight >= limit:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight -= 1


class ProbeHandler:
    def __init__(self, daemon: ProbeSource):
        self.daemon = daemon
        self.sinks: list[Sink] = [LogSink(on_demand=True)]
        self.limiter = ProbeLimiter()
        self._adhoc: OrderedDict[str, TargetClient] = OrderedDict()
        self._last_health: OrderedDict[str, ProbeResult] = OrderedDict()  # target name -> last /health verdict

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        try:
            module = _module(query.get("module", ""))
            client = self.resolve_target(query.get("target", ""))
            budget, budget_note = self.budget(module, request.headers.get(TIMEOUT_HEADER))
        except BadRequest as exc:
            return web.Response(status=400, text=f"{exc}\n", headers=_PLAIN_HEADERS)
        debug = query.get("debug", "").lower() in ("true", "1", "yes")
        limit = self.daemon.config.exporter.max_concurrent_probes
        if not self.limiter.try_acquire(limit):
            log.info("probe refused", target=client.name, probe=module, reason="too_many_concurrent_probes",
                     limit=limit)
            return web.Response(status=503, text=f"too many concurrent probes (limit {limit}); try again later\n",
                                headers=_PLAIN_HEADERS)
        try:
            trace = Trace()
            if module == "health" and not debug:
                # Requests that arrive while a /health of this target runs share the next one.
                result = await self.daemon.runner.gate(client.name).on_demand_health.run(
                    lambda: self.run(client, module, budget, trace))
            else:
                result = await self.run(client, module, budget, trace)
        finally:
            self.limiter.release()
        deliver(result, self.sinks, self.daemon.runner.errors)
        answer, age = self.verdict(client, module, result)
        if debug:
            text = debug_report(client, module, budget_note, trace, result,
                                render_result(answer, age_seconds=age).decode())
            return web.Response(text=text, headers=_PLAIN_HEADERS)
        openmetrics = wants_openmetrics(request.headers.get("Accept", ""))
        return web.Response(body=render_result(answer, openmetrics, age),
                            headers={"Content-Type": OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE})

    def verdict(self, client: TargetClient, module: str, result: ProbeResult) -> tuple[ProbeResult, Optional[float]]:
        """What to answer, and its age if it is an earlier run's. A /health that could not start (probes of
        the target held it: whoAsr's /health stalls the server, so it never runs alongside them) answers
        with the target's last /health verdict if that is at most `schedules.health.interval` old, as
        /metrics would in scheduled mode; otherwise, and for a probe that could not start, no verdict."""
        if module != "health":
            return result, None
        if not result.skipped:
            self._last_health[client.name] = result
            self._last_health.move_to_end(client.name)
            while len(self._last_health) > len(self.daemon.clients) + ADHOC_CLIENTS:
                self._last_health.popitem(last=False)
            return result, 0.0
        last = self._last_health.get(client.name)
        if last is None:
            return result, None
        age = max(0.0, time.time() - last.finished_at)
        if age > self.daemon.config.schedules.health.interval:
            return result, None
        log.info("probe answered with last verdict", target=client.name, probe=module, reason="gate_wait",
                 age_seconds=round(age, 3))
        return last, age

    # --- request -> what to run ---------------------------------------------------------------
    def resolve_target(self, value: str) -> TargetClient:
        """A configured name, or a URL that an `allowed_targets` pattern matches in full."""
        if not value:
            raise BadRequest("missing parameter 'target' (a configured target name, or an allowed URL)")
        if len(value) > MAX_TARGET_CHARS:
            raise BadRequest(f"parameter 'target' is longer than {MAX_TARGET_CHARS} characters")
        daemon = self.daemon
        client = daemon.clients.get(value)
        if client is not None:
            return client
        if "://" not in value:
            raise BadRequest(f"unknown target {value!r}: not a configured target name, and not a URL")
        if not any(re.fullmatch(pattern, value) for pattern in daemon.config.exporter.allowed_targets):
            raise BadRequest("target URL refused: it matches no pattern in exporter.allowed_targets")
        try:
            target = TargetConfig(name=_adhoc_name(value), url=value)
        except ValidationError as exc:
            raise BadRequest(f"invalid target URL: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
        # The URL of a configured target: its own client, so its health gate keeps the two runs apart.
        for configured in daemon.clients.values():
            if configured.base_url == target.url:
                return configured
        client = self._adhoc.get(target.url)
        if client is None or client.session is not daemon.session:
            client = TargetClient(daemon.session, target)
            self._adhoc[target.url] = client
            while len(self._adhoc) > ADHOC_CLIENTS:
                _, old = self._adhoc.popitem(last=False)
                daemon.runner.gates.pop(old.name, None)
        self._adhoc.move_to_end(target.url)
        return client

    def budget(self, module: str, header: Optional[str]) -> tuple[float, str]:
        """min(scrape timeout - offset, the kind's schedule timeout); the header absent: the latter."""
        schedule_timeout = self.daemon.config.schedules.for_kind(module).timeout
        if header is None:
            return schedule_timeout, f"{schedule_timeout:g}s (the {module} schedule timeout; no {TIMEOUT_HEADER})"
        try:
            scrape_timeout = float(header)
        except ValueError:
            raise BadRequest(f"{TIMEOUT_HEADER}: expected a number of seconds, got {header[:40]!r}") from None
        if not math.isfinite(scrape_timeout) or scrape_timeout <= 0:
            raise BadRequest(f"{TIMEOUT_HEADER}: expected a positive number of seconds, got {header[:40]!r}")
        # A scrape timeout at or below the offset still leaves the run half of it.
        from_header = max(scrape_timeout - TIMEOUT_OFFSET, scrape_timeout / 2)
        budget = min(from_header, schedule_timeout)
        return budget, (f"{budget:g}s ({TIMEOUT_HEADER} {scrape_timeout:g} minus {TIMEOUT_OFFSET:g}s offset, "
                        f"capped by the {module} schedule timeout {schedule_timeout:g}s)")

    # --- the run --------------------------------------------------------------------------------
    async def run(self, client: TargetClient, module: str, budget: float, trace: Trace) -> ProbeResult:
        """One run within `budget`; time spent waiting for the target's health gate counts too."""
        started, started_at = time.monotonic(), time.time()
        try:
            async with asyncio.timeout(budget + HARD_CUT_MARGIN):
                # Fresh model state (one cheap /model/info) rather than the scheduled scrape's.
                return await self.daemon.runner.run(client, module, budget, trace)
        except TimeoutError:
            trace(f"FAILED timeout at deadline: no result within the {budget:g}s budget")
            return ProbeResult(target=client.name, probe=module, success=False, started_at=started_at,
                               duration_seconds=time.monotonic() - started, reason="timeout", step="deadline",
                               detail=f"no result within the {budget:g}s budget", trace=trace.lines)


def add_routes(app: web.Application, daemon: ProbeSource) -> ProbeHandler:
    handler = ProbeHandler(daemon)
    app.router.add_get("/probe", handler)
    return handler


_PLAIN_HEADERS = {"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff"}


def _module(value: str) -> str:
    if not value:
        raise BadRequest(f"missing parameter 'module' (one of {', '.join(MODULES)})")
    if value not in MODULES:
        raise BadRequest(f"unknown module {value[:40]!r}; expected one of {', '.join(MODULES)}")
    return value


def _adhoc_name(url: str) -> str:
    """A bounded, URL-free name: the URL never becomes a label or a log field."""
    return "adhoc-" + hashlib.sha256(url.encode("utf-8")).hexdigest()[:10]


# --- &debug=true ------------------------------------------------------------------------------------
def debug_report(client: TargetClient, module: str, budget_note: str, trace: Trace, result: ProbeResult,
                 metrics_text: str) -> str:
    """A readable account of the run: what was sent and received, the checks, the result, the metrics."""
    lines = [
        "whoasr-exporter on-demand probe",
        f"target:  {client.name} ({public_url(client.base_url)})",
        f"module:  {module}",
        f"budget:  {budget_note}",
        "",
        "Trace (seconds since the run started):",
        *(f"  {line}" for line in trace.lines or ["(nothing recorded)"]),
        "",
        "Result:",
        *(f"  {line}" for line in result_lines(result)),
        "",
        "Metrics that would be returned:",
        metrics_text.rstrip("\n"),
        "",
    ]
    return "\n".join(lines)


def result_lines(result: ProbeResult) -> list[str]:
    """The result as `key: value` lines; only what the run produced."""
    verdict = "yes" if result.success else "no"
    if not result.applicable:
        verdict = "not applicable to this target"
    lines = [f"success:      {verdict}"]
    if result.reason:
        lines.append(f"reason:       {result.reason}")
    if result.step:
        lines.append(f"failed step:  {result.step}")
    if result.detail:
        lines.append(f"detail:       {result.detail}")
    lines.append(f"duration:     {result.duration_seconds:.3f}s")
    if result.http_status is not None:
        lines.append(f"http status:  {result.http_status}")
    if is_scrape(result.probe):
        return lines + _scrape_lines(result)
    if result.error_body:
        lines.append(f"error body:   {result.error_body}")
    if result.checks:
        lines.append("checks:")
        lines.extend(f"  {'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}" for check in result.checks)
    if result.transcript is not None:
        lines.append(f"transcript:   {result.transcript}")
    if result.expected_transcript is not None:
        lines.append(f"expected:     {result.expected_transcript}")
    if result.cer is not None:
        counts = (f" ({result.character_errors}/{result.reference_characters} characters)"
                  if result.reference_characters else "")
        lines.append(f"CER:          {result.cer:.3f}{counts}")
    if result.audio_seconds is not None:
        rtf = result.real_time_factor
        lines.append(f"audio:        {result.audio_seconds:.2f}s"
                     + (f", processing {result.processing_seconds:.3f}s" if result.processing_seconds is not None
                        else "")
                     + (f", RTF {rtf:.3f}" if rtf is not None else ""))
    if result.stream is not None:
        lines.append("stream:       " + ", ".join(f"{key} {_fmt(value)}" for key, value in vars(result.stream).items()
                                                 if value is not None))
    return lines


def _scrape_lines(result: ProbeResult) -> list[str]:
    lines = []
    if result.api:
        lines.append(f"api:          {result.api}")
    state = result.model_info or result.health
    if state is not None and state.models_loaded:
        models = ", ".join(f"{model}{'' if loaded else ' (not loaded)'}"
                           for model, loaded in sorted(state.models_loaded.items()))
        lines.append(f"models:       {models}")
    health = result.health
    if health is not None:
        lines.append(f"status:       {health.status}" + (f", version {health.version}" if health.version else ""))
        for name, value in (("cpu", health.cpu_ratio), ("memory", health.memory_ratio), ("disk", health.disk_ratio)):
            if value is not None:
                lines.append(f"{name + ':':<13} {value:.1%}")
    return lines


def _fmt(value) -> str:
    if isinstance(value, list):
        return "[" + " ".join(_fmt(item) for item in value) + "]"
    return f"{value:.3f}s" if isinstance(value, float) else str(value)
