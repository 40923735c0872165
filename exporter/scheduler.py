"""Runs each (target, kind) on its own interval with jitter, never more than one run in flight.

apscheduler decides *when*; each due run becomes an asyncio task owned here, so a slow target produces
skips (counted) instead of a pile-up, and shutdown can wait for or cancel what is still running.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Awaitable, Callable, Optional

import structlog
from apscheduler.events import EVENT_JOB_SUBMITTED, JobSubmissionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

log = structlog.get_logger("exporter.scheduler")

Key = tuple[str, str]  # (target name, kind)
MAX_START_SPREAD = 10.0  # seconds over which first runs are spread, so 1,000 targets do not fire at once


@dataclass(frozen=True)
class Plan:
    interval: float
    timeout: float

    @property
    def jitter(self) -> float:
        return min(self.interval * 0.1, 5.0)


class Scheduler:
    def __init__(
        self,
        run: Callable[[str, str, float], Awaitable[None]],
        on_skip: Callable[[str, str], None],
        on_lag: Optional[Callable[[float], None]] = None,
        on_error: Optional[Callable[[str, str, BaseException], None]] = None,
    ):
        self._run = run
        self._on_skip = on_skip
        self._on_lag = on_lag
        self._on_error = on_error
        self._plans: dict[Key, Plan] = {}
        self.running: dict[Key, asyncio.Task] = {}
        self._scheduler = AsyncIOScheduler(timezone=timezone.utc)
        self._scheduler.add_listener(self._submitted, EVENT_JOB_SUBMITTED)
        self._accepting = True

    def start(self) -> None:
        self._scheduler.start()

    def sync(self, plans: dict[Key, Plan]) -> None:
        """Makes the jobs match `plans`: new ones start, changed ones restart, removed ones stop."""
        for key in list(self._plans):
            if key not in plans:
                self._remove(key)
        now = datetime.now(timezone.utc)
        for key, plan in plans.items():
            if self._plans.get(key) == plan:
                continue
            if key in self._plans:
                self._scheduler.remove_job(_job_id(key))
            first = now + timedelta(seconds=random.uniform(0.0, min(plan.interval, MAX_START_SPREAD)))
            self._scheduler.add_job(
                self._fire,
                IntervalTrigger(seconds=plan.interval, start_date=first, jitter=plan.jitter, timezone=timezone.utc),
                args=key,
                id=_job_id(key),
                next_run_time=first,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(int(plan.interval), 1),
            )
            self._plans[key] = plan

    def _remove(self, key: Key) -> None:
        self._scheduler.remove_job(_job_id(key))
        del self._plans[key]
        task = self.running.get(key)
        if task is not None:
            task.cancel()  # a removed target's run is of no use any more

    async def _fire(self, target: str, kind: str) -> None:
        """The apscheduler job: returns at once; the run itself is a task of its own."""
        key = (target, kind)
        plan = self._plans.get(key)
        if plan is None or not self._accepting:
            return
        if key in self.running:
            self._on_skip(target, kind)
            log.info("run skipped", target=target, probe=kind, reason="previous run still in flight")
            return
        task = asyncio.create_task(self._run(target, kind, plan.timeout), name=f"{target}/{kind}")
        self.running[key] = task
        task.add_done_callback(lambda done: self._finished(key, done))

    def _finished(self, key: Key, task: asyncio.Task) -> None:
        """Runs end in a result of their own; an exception that still escapes one is reported, not dropped."""
        self.running.pop(key, None)
        if task.cancelled() or task.exception() is None:
            return
        if self._on_error is not None:
            self._on_error(key[0], key[1], task.exception())
        else:
            log.error("run crashed", target=key[0], probe=key[1], reason="internal_error", exc_info=task.exception())

    def _submitted(self, event: JobSubmissionEvent) -> None:
        if self._on_lag is None or not event.scheduled_run_times:
            return
        lag = (datetime.now(timezone.utc) - event.scheduled_run_times[-1]).total_seconds()
        self._on_lag(max(lag, 0.0))

    async def shutdown(self, grace: float) -> None:
        """Stops scheduling, lets running work finish until `grace` runs out, then cancels the rest."""
        self._accepting = False
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        tasks = list(self.running.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("runs cancelled at shutdown", count=len(pending), reason="shutdown grace exceeded")
            await asyncio.wait(pending, timeout=5.0)


def _job_id(key: Key) -> str:
    return f"{key[0]}/{key[1]}"
