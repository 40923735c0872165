"""Where results go: every run, scheduled or on demand, ends in one `ProbeResult` handed to a list of
sinks by `deliver`. Scheduled runs: the state (and so /metrics), the history and the log. `/probe`: the
log (its answer is rendered from the result itself). The probe CLI: the log and its table.

A sink is anything with `record(result)`; it never waits on a target.
"""

from __future__ import annotations

from typing import Iterable, Protocol

import structlog

from exporter.kinds import is_scrape
from exporter.results import ProbeResult


class Sink(Protocol):
    def record(self, result: ProbeResult) -> None: ...


def deliver(result: ProbeResult, sinks: Iterable[Sink]) -> None:
    for sink in sinks:
        sink.record(result)


class LogSink:
    """One log line per run: scheduled failures as warnings, on-demand ones at info (Prometheus may call
    /probe every few seconds), successes at debug."""

    def __init__(self, on_demand: bool = False):
        self.on_demand = on_demand
        self.log = structlog.get_logger("exporter.probe_endpoint" if on_demand else "exporter.daemon")

    def record(self, result: ProbeResult) -> None:
        passed = result.success or not result.applicable
        if self.on_demand:
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
