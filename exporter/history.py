"""Recent probe results for the status page and /api/history, bounded by totals, failures kept longer.

Per (target, probe) the last `history_size` results and the last `history_failures_size` failures are
kept, as blackbox_exporter keeps its history; on top of that the whole history holds at most
`max_results` results and an estimated `max_bytes`: beyond either, the oldest result that is not a
failure goes first, and only when none is left the oldest failure. What is stored is compacted first
(text cut, the trace kept for failures only), so one result cannot be large whatever the server sent.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

from exporter.kinds import is_scrape
from exporter.results import Check, ProbeResult

TEXT_CHARS = 1000  # transcript and expected transcript of a kept result
DETAIL_CHARS = 500
CHECKS = 20  # checks kept per result, each detail cut to CHECK_DETAIL_CHARS
CHECK_DETAIL_CHARS = 300
LIST_ITEMS = 50  # items of a list in stream timings (result lags)
BASE_BYTES = 1024  # estimated cost of a result object and its fields, before its texts

Key = tuple[str, str]  # (target, probe)


@dataclass(eq=False)  # entries are compared by identity
class _Entry:
    seq: int
    key: Key
    result: ProbeResult
    failure: bool
    size: int
    holders: int = 0  # how many per-key lists (recent, failures) hold it


class History:
    def __init__(self, size: int = 20, failures_size: int = 50, max_results: int = 10_000,
                 max_bytes: int = 64 << 20):
        self.size = size
        self.failures_size = failures_size
        self.max_results = max_results
        self.max_bytes = max_bytes
        self._recent: dict[Key, deque[_Entry]] = {}
        self._failures: dict[Key, deque[_Entry]] = {}
        # every kept entry by sequence number, in insertion order: the eviction order by totals
        self._kept_ok: dict[int, _Entry] = {}
        self._kept_failed: dict[int, _Entry] = {}
        self._seq = 0
        self.results_total = 0
        self.bytes_total = 0
        self.evicted_total = 0  # results dropped to stay within the totals

    # --- in ---------------------------------------------------------------------------------------
    def record(self, result: ProbeResult) -> None:
        """The history's sink: probe results are kept; scrapes live in the target state."""
        if not is_scrape(result.probe) and not result.skipped:
            self.add(result)

    def add(self, result: ProbeResult) -> None:
        self._seq += 1
        failure = not result.success and result.applicable
        stored = compact(result)
        entry = _Entry(self._seq, (result.target, result.probe), stored, failure, estimated_bytes(stored))
        (self._kept_failed if failure else self._kept_ok)[entry.seq] = entry
        self.results_total += 1
        self.bytes_total += entry.size
        self._hold(self._recent, entry, self.size)
        if failure:
            self._hold(self._failures, entry, self.failures_size)
        self._within_totals()

    def _hold(self, store: dict[Key, deque[_Entry]], entry: _Entry, limit: int) -> None:
        entries = store.setdefault(entry.key, deque())
        entries.append(entry)
        entry.holders += 1
        while len(entries) > limit:
            self._release(entries.popleft())

    def _release(self, entry: _Entry) -> None:
        entry.holders -= 1
        if entry.holders <= 0:
            self._forget(entry)

    def _forget(self, entry: _Entry) -> None:
        kept = self._kept_failed if entry.failure else self._kept_ok
        if kept.pop(entry.seq, None) is not None:
            self.results_total -= 1
            self.bytes_total -= entry.size

    def _within_totals(self) -> None:
        while self.results_total > self.max_results or self.bytes_total > self.max_bytes:
            kept = self._kept_ok or self._kept_failed
            if not kept:
                return
            oldest = kept[next(iter(kept))]
            for store in (self._recent, self._failures):
                entries = store.get(oldest.key)
                if entries is not None and oldest in entries:
                    entries.remove(oldest)
                    if not entries:
                        del store[oldest.key]
            oldest.holders = 0
            self._forget(oldest)
            self.evicted_total += 1

    def keep(self, keys: Iterable[Key]) -> None:
        """Forgets every (target, probe) not in `keys`: removed targets and kinds no longer scheduled."""
        wanted = set(keys)
        for store in (self._recent, self._failures):
            for key in [key for key in store if key not in wanted]:
                for entry in store.pop(key):
                    self._release(entry)

    # --- out --------------------------------------------------------------------------------------
    def results(self, target: Optional[str] = None, probe: Optional[str] = None,
                failures_only: bool = False) -> list[ProbeResult]:
        """Kept results (or failures only), newest first, each once."""
        return [entry.result for entry in self._entries(target, probe, failures_only)]

    def _entries(self, target: Optional[str], probe: Optional[str], failures_only: bool) -> Iterator[_Entry]:
        stores = (self._kept_failed,) if failures_only else (self._kept_ok, self._kept_failed)
        chosen = [entry for kept in stores for entry in kept.values()
                  if (not target or entry.key[0] == target) and (not probe or entry.key[1] == probe)]
        return iter(sorted(chosen, key=lambda entry: (entry.result.started_at, entry.seq), reverse=True))

    def recent_failures(self, limit: int) -> list[tuple[int, ProbeResult]]:
        """The newest `limit` failures of any target, newest first, with their ids (for /api/history?id=)."""
        out = []
        for seq in reversed(self._kept_failed):
            out.append((seq, self._kept_failed[seq].result))
            if len(out) >= limit:
                break
        return out

    def latest(self, target: str, probe: str) -> Optional[ProbeResult]:
        entries = self._recent.get((target, probe))
        return entries[-1].result if entries else None

    def get(self, seq: int) -> Optional[ProbeResult]:
        entry = self._kept_failed.get(seq) or self._kept_ok.get(seq)
        return entry.result if entry is not None else None

    def recent(self, target: str, probe: str) -> list[ProbeResult]:
        """The last `size` results of one (target, probe), oldest first: a sparkline's points."""
        return [entry.result for entry in self._recent.get((target, probe), ())]

    def last_failure(self, target: str, probe: str) -> Optional[tuple[int, ProbeResult]]:
        """The newest kept failure of one (target, probe) with its id, also after later runs passed."""
        failures = self._failures.get((target, probe))
        return (failures[-1].seq, failures[-1].result) if failures else None

    def to_json(self, target: Optional[str] = None, probe: Optional[str] = None, limit: Optional[int] = None,
                failed_only: bool = False, with_trace: bool = False) -> list[dict]:
        """Results newest first, each with its `id`; `failed_only`: failed runs only; `with_trace`: each
        run's kept trace too (failures keep theirs)."""
        out = []
        for entry in self._entries(target, probe, failed_only):
            if limit is not None and len(out) >= limit:
                break
            out.append(entry_json(entry.seq, entry.result, with_trace))
        return out

    def entry_json(self, seq: int) -> Optional[dict]:
        result = self.get(seq)
        return entry_json(seq, result, with_trace=True) if result is not None else None


def entry_json(seq: int, result: ProbeResult, with_trace: bool) -> dict:
    data = {"id": seq, **result.to_dict()}
    if with_trace:
        data["trace"] = list(result.trace)
    return data


def compact(result: ProbeResult) -> ProbeResult:
    """The result as the history keeps it: texts cut, the trace kept for failures only."""
    failure = not result.success and result.applicable
    stream = result.stream
    if stream is not None:
        stream = dataclasses.replace(stream, **{
            name: value[:LIST_ITEMS] for name, value in vars(stream).items() if isinstance(value, list)})
    return dataclasses.replace(
        result,
        detail=_cut(result.detail, DETAIL_CHARS) or "",
        transcript=_cut(result.transcript, TEXT_CHARS),
        expected_transcript=_cut(result.expected_transcript, TEXT_CHARS),
        error_body=_cut(result.error_body, DETAIL_CHARS),
        checks=[Check(check.name[:80], check.ok, _cut(check.detail, CHECK_DETAIL_CHARS) or "")
                for check in result.checks[:CHECKS]],
        trace=list(result.trace) if failure else [],
        stream=stream,
    )


def estimated_bytes(result: ProbeResult) -> int:
    """A rough upper estimate of what a kept result costs in memory (Python strings of CJK text take up
    to 4 bytes a character; 2 is the usual case for whoAsr's Chinese)."""
    texts = (result.detail, result.transcript, result.expected_transcript, result.error_body)
    size = BASE_BYTES + sum(2 * len(text) + 50 for text in texts if text)
    size += sum(len(line) + 60 for line in result.trace)
    size += sum(len(check.detail) + 120 for check in result.checks)
    if result.stream is not None:
        size += 400 + sum(8 * len(value) for value in vars(result.stream).values() if isinstance(value, list))
    return size


def _cut(text: Optional[str], limit: int) -> Optional[str]:
    if text is None or len(text) <= limit:
        return text
    return text[:limit - 1] + "…"
