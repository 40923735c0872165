"""Synthetic probes: one module per kind, each `async def run(ctx: ProbeContext) -> ProbeResult`.

A probe measures and returns a plain result; it knows nothing of Prometheus or scheduling. It stops at
the first failing step by raising `Failure`; `run_probe` turns that, a blown deadline or a bug into a
failed result, so nothing a target does can crash the daemon.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Awaitable, Callable, Optional

from pydantic import BaseModel

from exporter.client import TargetClient
from exporter.internal_errors import InternalErrors
from exporter.results import Failure, ProbeResult, Trace

if TYPE_CHECKING:  # clips pull in numpy and libsndfile: loaded only once a probe needs a clip
    from exporter.clips import Clip

GUARD_SECONDS = 2.0  # beyond its own timeout, how long a probe may take before it is cut off


@dataclass
class ProbeContext:
    client: TargetClient
    settings: BaseModel  # the probes.<kind> section of the config
    timeout: float
    clip: Optional["Clip"] = None
    trace: Trace = field(default_factory=Trace)
    progress: Optional[Callable[[str], None]] = None  # live progress for people (the probe CLI)
    errors: Optional[InternalErrors] = None  # where a probe's own bug is counted and logged

    def __post_init__(self) -> None:
        self._started = time.monotonic()
        self._excluded = 0.0  # time spent on reads that are not the probe's request (model_check.py)
        self.deadline = self._started + self.timeout

    def remaining(self) -> float:
        """Seconds left before this run's deadline (never below a small floor, so calls can fail cleanly)."""
        return max(self.deadline - time.monotonic(), 0.001)

    def new_result(self, kind: str) -> ProbeResult:
        return ProbeResult(target=self.client.name, probe=kind, success=False, started_at=time.time(),
                           duration_seconds=0.0)

    def elapsed(self) -> float:
        """The run's duration so far, without the time excluded (the deadline still counts all of it)."""
        return time.monotonic() - self._started - self._excluded

    def exclude_from_duration(self, seconds: float) -> None:
        self._excluded += seconds


ProbeFunction = Callable[[ProbeContext], Awaitable[ProbeResult]]


def probe_function(kind: str) -> ProbeFunction:
    module = importlib.import_module(f"exporter.probes.{kind}")
    return module.run


async def run_probe(kind: str, ctx: ProbeContext) -> ProbeResult:
    """Runs one probe to a result, whatever happens: its deadline is enforced here as a last resort."""
    result: Optional[ProbeResult] = None
    try:
        async with asyncio.timeout(ctx.timeout + GUARD_SECONDS):
            result = await probe_function(kind)(ctx)
    except Failure as failure:
        result = failed(ctx, kind, failure)
    except (asyncio.TimeoutError, TimeoutError):
        result = failed(ctx, kind, Failure("timeout", f"cut off after {ctx.timeout + GUARD_SECONDS:g}s", step="guard"))
    except Exception as exc:  # noqa: BLE001 - a probe bug must not take the daemon down
        detail = (ctx.errors or InternalErrors()).report("probe", exc, ctx.client.name, kind)
        result = failed(ctx, kind, Failure("bad_response", detail, step="internal"))
    if result.failed_without_reason():
        result.reason = "check_failed"
    result.duration_seconds = result.duration_seconds or ctx.elapsed()
    result.trace = ctx.trace.lines
    return result


def failed(ctx: ProbeContext, kind: str, failure: Failure, result: Optional[ProbeResult] = None) -> ProbeResult:
    """Marks a result (new or partly filled) as failed with the failure's reason, detail and step."""
    result = result or ctx.new_result(kind)
    result.success = False
    result.reason = failure.reason
    result.detail = failure.detail
    result.step = failure.step
    if failure.http_status is not None:
        result.http_status = failure.http_status
    if failure.error_body is not None:
        result.error_body = failure.error_body
    result.duration_seconds = ctx.elapsed()
    ctx.trace(f"FAILED {failure.reason}" + (f" at {failure.step}" if failure.step else "") + f": {failure.detail}")
    return result
