"""One run of one kind against one target, to a result: what scheduled runs, `/probe` and the probe CLI
share. It keeps `/health` apart from the probes of the same target (the gate), loads the probe's clip
off the event loop. No model state is handed down: a probe whose request could load a model reads
the state afresh itself (probes/model_check.py).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import nullcontext
from typing import Callable, Optional

from exporter.client import TargetClient
from exporter.config import Config
from exporter.gate import GateBusy, TargetGate
from exporter.internal_errors import InternalErrors
from exporter.kinds import is_scrape
from exporter.probes import ProbeContext, failed, run_probe
from exporter.results import Failure, ProbeResult, Trace
from exporter.scrape import scrape

GATE_WAIT_SHARE = 0.5  # of a probe's timeout, at most, waiting for the target's gate (a /health: ~1 s)
HEALTH_RESERVE = 2.0  # seconds a /health keeps for itself (whoAsr answers it in ~1 s), up to half its timeout


class Runner:
    def __init__(self, config: Config, errors: Optional[InternalErrors] = None):
        self.config = config  # replaced on reload
        self.errors = errors or InternalErrors()
        self.gates: dict[str, TargetGate] = {}

    def gate(self, target: str) -> TargetGate:
        return self.gates.setdefault(target, TargetGate())

    def keep_gates(self, targets: set[str]) -> None:
        self.gates = {name: gate for name, gate in self.gates.items() if name in targets}

    async def run(self, client: TargetClient, kind: str, timeout: float, trace: Optional[Trace] = None,
                  progress: Optional[Callable[[str], None]] = None) -> ProbeResult:
        """A scrape or a probe, always ending in a result: a bug on the way becomes a failed run (counted
        and logged by `errors`)."""
        started, started_at = time.monotonic(), time.time()
        try:
            return await self._run(client, kind, timeout, trace, progress)
        except Exception as exc:  # noqa: BLE001 - a bug must not leave the run without a result
            stage = "scrape" if is_scrape(kind) else "probe"
            detail = self.errors.report(stage, exc, client.name, kind)
            return ProbeResult(target=client.name, probe=kind, success=False, started_at=started_at,
                               duration_seconds=time.monotonic() - started, reason="bad_response",
                               detail=detail, step="internal", trace=trace.lines if trace is not None else [])

    async def _run(self, client: TargetClient, kind: str, timeout: float, trace: Optional[Trace],
                   progress: Optional[Callable[[str], None]]) -> ProbeResult:
        """The wait for the target's gate counts against the run's timeout, and ends while the target
        still has the time it needs: a run that could not start by then is skipped (no verdict), and a
        timeout it reports is the target's, not the wait's. A probe waits for a /health (~1 s) at most
        GATE_WAIT_SHARE of its timeout. A /health waits for the probes in flight (a real-time stream
        session lasts as long as its clip) until HEALTH_RESERVE before its deadline, twice what whoAsr
        needs, or half its timeout if that is shorter: waiting only half of 8.5 s, a /health scraped
        every 10 s at a fixed phase behind a 6 s stream could never start."""
        begun, begun_at = time.monotonic(), time.time()
        gate = self.gate(client.name)
        if kind == "health":
            access = gate.exclusive(wait=timeout - min(timeout * GATE_WAIT_SHARE, HEALTH_RESERVE))
        elif is_scrape(kind):
            access = nullcontext()  # /model/info does not stall whoAsr
        else:
            access = gate.shared(wait=timeout * GATE_WAIT_SHARE)
        try:
            async with access:
                remaining = timeout - (time.monotonic() - begun)
                if is_scrape(kind):
                    return await scrape(client, kind, remaining, trace)
                return await self._probe(client, kind, remaining, trace, progress)
        except GateBusy as busy:
            if trace is not None:
                trace(f"not started: {busy}")
            return ProbeResult(target=client.name, probe=kind, success=False, started_at=begun_at,
                               duration_seconds=time.monotonic() - begun, reason="timeout", step="gate",
                               detail=f"not started: {busy}", skipped=True,
                               trace=trace.lines if trace is not None else [])

    async def _probe(self, client: TargetClient, kind: str, timeout: float, trace: Optional[Trace],
                     progress: Optional[Callable[[str], None]]) -> ProbeResult:
        settings = self.config.probes.for_kind(kind)
        ctx = ProbeContext(client=client, settings=settings, timeout=timeout,
                           trace=trace or Trace(), progress=progress, errors=self.errors)
        clip_name = getattr(settings, "clip", None)
        if clip_name is not None:
            from exporter.clips import ClipError, load_clip  # numpy and libsndfile: only once needed

            try:
                ctx.clip = await asyncio.to_thread(load_clip, self.config, clip_name)
            except ClipError as exc:
                return failed(ctx, kind, Failure("check_failed", str(exc), step="clip"))
        return await run_probe(kind, ctx)
