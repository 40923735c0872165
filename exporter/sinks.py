"""Where results go: every run, scheduled or on demand, ends in one `ProbeResult` handed to a list of
sinks by `deliver`. Scheduled runs: the state (and so /metrics), the history and the log. `/probe`: the
log (its answer is rendered from the result itself). The probe CLI: the log and its table.

A sink is anything with `record(result)`; it never waits on a target.
"""

from __future__ import annotations

from typing import Iterable, Optional, Protocol

import structlog

from exporter.internal_errors import InternalErrors
from exporter.kinds import is_scrape
from exporter.results import ProbeResult


class Sink(Protocol):
    def record(self, result: ProbeResult) -> None: ...


def deliver(result: ProbeResult, sinks: Iterable[Sink], errors: Optional[InternalErrors] = None) -> None:
    """Hands the result to every sink. A sink that fails on it (a bug) is counted and logged, then given
    a bare failed result instead, so its signals (up, last run, timestamps) still move."""
    for sink in sinks:
        try:
            sink.record(result)
        except Exception as exc:  # noqa: BLE001 - one sink's bug must not stop the others or freeze its own
            detail = (errors or InternalErrors()).report("record", exc, result.target, result.probe)
            try:
                sink.record(bare_failure(result, detail))
            except Exception:  # noqa: BLE001 - counted and logged above; nothing more to do
                pass


def bare_failure(result: ProbeResult, detail: str) -> ProbeResult:
    """The run as a failure with nothing the server said: what a sink that choked on it can still record."""
    return ProbeResult(target=result.target, probe=result.probe, success=False, started_at=result.started_at,
                       duration_seconds=result.duration_seconds, reason="bad_response", detail=detail,
                       step="internal", trace=result.trace)


class LogSink:
    """One log line per run: scheduled failures as warnings, on-demand ones at info (Prometheus may call
    /probe every few seconds), successes at debug."""

    def __init__(self, on_demand: bool = False):
        self.on_demand = on_demand
        self.log = structlog.get_logger("exporter.probe_endpoint" if on_demand else "exporter.daemon")

    def record(self, result: ProbeResult) -> None:
        passed = result.success or not result.applicable
        if result.skipped:
            self.log.info("run skipped", target=result.target, probe=result.probe, reason="gate_wait",
                          detail=result.detail)
        elif self.on_demand:
            if passed:
                self.log.debug("on-demand probe done", target=result.target, probe=result.probe,
                               success=result.success)
            else:
                self.log.info("on-demand probe failed", target=result.target, probe=result.probe,
                              reason=result.reason)
        elif is_scrape(result.probe):
            if not result.success:
                self.log.warning("scrape failed", target=result.target, endpoint=result.probe, reason=result.reason,
                                 detail=result.detail)
        elif not passed:
            self.log.warning("probe failed", target=result.target, probe=result.probe, reason=result.reason,
                             step=result.step, detail=result.detail)
        else:
            self.log.debug("probe done", target=result.target, probe=result.probe, success=result.success,
                           duration_seconds=round(result.duration_seconds, 4))
