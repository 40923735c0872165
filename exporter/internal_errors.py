"""Bugs of the exporter itself, as opposed to failures of a target.

An unexpected exception anywhere on a run's way (scrape, probe, recording the result, the scheduler's
task) must not leave a signal frozen: the run still ends in a failed result (reason `bad_response`: most often a target's unusual
answer is what led the code astray; step `internal` tells it apart from a target's bad answer), and the exception is counted here by stage and logged with its traceback the first time it is seen.
"""

from __future__ import annotations

from collections import Counter
import structlog

log = structlog.get_logger("exporter.internal_errors")

STAGES = ("scrape", "probe", "record", "scheduler")  # the `stage` label of whoasr_exporter_internal_errors_total
MAX_TRACEBACKS = 256  # distinct (stage, probe, exception type) logged with a traceback; later ones on one line
DETAIL_CHARS = 200


class InternalErrors:
    def __init__(self) -> None:
        self.counts: Counter = Counter({stage: 0 for stage in STAGES})
        self._seen: set[tuple[str, str, str]] = set()

    def report(self, stage: str, exc: BaseException, target: str = "", probe: str = "") -> str:
        """Counts and logs one exception; returns a short description for the failed result's detail."""
        self.counts[stage] += 1
        detail = describe(exc)
        key = (stage, probe, type(exc).__name__)
        fields = dict(target=target, probe=probe, stage=stage, reason="internal_error", error=detail)
        if key in self._seen or len(self._seen) >= MAX_TRACEBACKS:
            log.error("internal error", **fields)
        else:
            self._seen.add(key)
            log.error("internal error", exc_info=exc, **fields)
        return detail


def describe(exc: BaseException) -> str:
    return f"internal error: {type(exc).__name__}: {exc}"[:DETAIL_CHARS]
