"""Recent results per (target, probe), failures kept longer: for the status page and /api/history."""

from __future__ import annotations

import heapq
from collections import deque
from typing import Optional

from exporter.kinds import is_scrape
from exporter.results import ProbeResult


class History:
    def __init__(self, size: int = 20, failures_size: int = 50):
        self.size = size
        self.failures_size = failures_size
        self._recent: dict[tuple[str, str], deque[ProbeResult]] = {}
        self._failures: dict[tuple[str, str], deque[ProbeResult]] = {}

    def record(self, result: ProbeResult) -> None:
        """The history's sink: probe results are kept; scrapes live in the target state."""
        if not is_scrape(result.probe):
            self.add(result)

    def add(self, result: ProbeResult) -> None:
        key = (result.target, result.probe)
        self._recent.setdefault(key, deque(maxlen=self.size)).append(result)
        if not result.success and result.applicable:
            self._failures.setdefault(key, deque(maxlen=self.failures_size)).append(result)

    def forget_targets(self, keep: set[str]) -> None:
        for store in (self._recent, self._failures):
            for key in [key for key in store if key[0] not in keep]:
                del store[key]

    def results(self, target: Optional[str] = None, probe: Optional[str] = None) -> list[ProbeResult]:
        """Recent results and older failures, newest first, each once."""
        seen: set[int] = set()
        out: list[ProbeResult] = []
        for store in (self._recent, self._failures):
            for (name, kind), results in store.items():
                if (target and name != target) or (probe and kind != probe):
                    continue
                for result in results:
                    if id(result) not in seen:
                        seen.add(id(result))
                        out.append(result)
        out.sort(key=lambda r: r.started_at, reverse=True)
        return out

    def recent(self, target: str, probe: str) -> list[ProbeResult]:
        """The last `size` results of one (target, probe), oldest first: a sparkline's points."""
        return list(self._recent.get((target, probe), ()))

    def last_failure(self, target: str, probe: str) -> Optional[ProbeResult]:
        """The newest kept failure of one (target, probe), also after later runs passed."""
        failures = self._failures.get((target, probe))
        return failures[-1] if failures else None

    def newest_failures(self, limit: int) -> list[ProbeResult]:
        """The newest `limit` kept failures of every target and probe, newest first."""
        return heapq.nlargest(limit, (result for failures in self._failures.values() for result in failures),
                              key=lambda result: result.started_at)

    def latest(self, target: str, probe: str) -> Optional[ProbeResult]:
        results = self._recent.get((target, probe))
        return results[-1] if results else None

    def to_json(self, target: Optional[str] = None, probe: Optional[str] = None, limit: Optional[int] = None,
                failed_only: bool = False, with_trace: bool = False) -> list[dict]:
        """Results newest first; `failed_only`: failed runs only; `with_trace`: each run's trace lines too."""
        results = self.results(target, probe)
        if failed_only:
            results = [result for result in results if not result.success and result.applicable]
        out = []
        for result in results[:limit]:
            data = result.to_dict()
            if with_trace:
                data["trace"] = list(result.trace)
            out.append(data)
        return out
