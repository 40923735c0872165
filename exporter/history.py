"""Recent results per (target, probe), failures kept longer: for the status page and /api/history."""

from __future__ import annotations

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

    def latest(self, target: str, probe: str) -> Optional[ProbeResult]:
        results = self._recent.get((target, probe))
        return results[-1] if results else None

    def to_json(self, target: Optional[str] = None, probe: Optional[str] = None, limit: Optional[int] = None) -> list[dict]:
        return [result.to_dict() for result in self.results(target, probe)[:limit]]
