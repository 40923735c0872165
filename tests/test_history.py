"""History is bounded by totals (results and estimated bytes), keeps failures longer, keeps what it
stores small whatever the server sent, and forgets targets and kinds no longer scheduled."""

from __future__ import annotations

import time

from exporter.history import TEXT_CHARS, History, estimated_bytes
from exporter.results import Check, ProbeResult

KINDS = ("batch", "stream", "punctuation", "vad", "timestamp")


def result(target: str, kind: str, ok: bool, at: float, text_chars: int = 20, trace_lines: int = 30) -> ProbeResult:
    return ProbeResult(target, kind, ok, at, 0.5, reason=None if ok else "timeout",
                       detail="" if ok else "d" * 5000, transcript="今" * text_chars,
                       expected_transcript="今天天气很好我们去公园", error_body=None if ok else "e" * 200,
                       checks=[Check("cer", ok, "x" * 1000)], trace=[f"{i:8.3f}s  line" for i in range(trace_lines)])


def test_many_targets_stay_within_both_totals_and_failures_outlive_successes():
    history = History(size=20, failures_size=50, max_results=2000, max_bytes=16 << 20)
    now = time.time()
    # 400 targets x 5 probes: one old failure each, then 25 successes each with server-sized text
    for name in (f"t{i:03d}" for i in range(400)):
        for kind in KINDS:
            history.add(result(name, kind, False, now))
    for round_ in range(25):
        for name in (f"t{i:03d}" for i in range(400)):
            for kind in KINDS:
                history.add(result(name, kind, True, now + 1 + round_, text_chars=100_000, trace_lines=300))
        assert history.results_total <= 2000 and history.bytes_total <= 16 << 20
    kept = history.results()
    assert len(kept) == history.results_total <= 2000
    assert sum(estimated_bytes(r) for r in kept) == history.bytes_total
    assert history.evicted_total > 0
    # every failure is still there (2,000 of them fit); the successes made room
    failures = history.results(failures_only=True)
    assert len(failures) == 2000 and all(not r.success for r in failures)
    assert history.results_total == 2000  # no success left: failures are evicted last


def test_failures_go_too_once_only_failures_are_left():
    history = History(size=5, failures_size=5, max_results=10, max_bytes=1 << 30)
    for i in range(30):
        history.add(result(f"t{i}", "batch", False, float(i)))
    kept = history.results()
    assert [r.target for r in kept] == [f"t{i}" for i in range(29, 19, -1)]  # the newest 10, newest first


def test_what_is_kept_is_cut_and_successes_keep_no_trace():
    history = History()
    history.add(result("a", "stream", True, 1.0, text_chars=50_000, trace_lines=300))
    history.add(result("a", "stream", False, 2.0, text_chars=50_000, trace_lines=300))
    failed, passed = history.results()
    assert len(passed.transcript) == TEXT_CHARS and passed.trace == []
    assert len(failed.transcript) == TEXT_CHARS and len(failed.trace) == 300
    assert len(failed.detail) <= 500 and all(len(c.detail) <= 300 for c in failed.checks)


def test_newest_failures_are_found_after_many_successes():
    """The status page's "Recent failures": one failure followed by many healthy runs stays visible."""
    history = History()
    history.add(result("a", "vad", False, 1.0))
    for i in range(200):
        history.add(result(f"t{i % 10}", "batch", True, 2.0 + i))
    ((seq, failure),) = history.recent_failures(30)
    assert failure.target == "a" and not failure.success
    entry = history.entry_json(seq)
    assert entry["id"] == seq and entry["reason"] == "timeout" and len(entry["trace"]) == 30


def test_removed_targets_and_kinds_are_forgotten():
    history = History()
    for kind in KINDS:
        history.add(result("a", kind, False, 1.0))
        history.add(result("b", kind, True, 1.0))
    history.keep([("a", "batch"), ("b", "vad")])
    assert sorted((r.target, r.probe) for r in history.results()) == [("a", "batch"), ("b", "vad")]
    assert history.results_total == 2
    assert history.bytes_total == sum(estimated_bytes(r) for r in history.results())


def test_the_byte_total_holds_when_results_are_large():
    history = History(size=20, failures_size=50, max_results=100_000, max_bytes=1 << 20)
    for i in range(2000):
        history.add(result(f"t{i % 100}", KINDS[i % 5], i % 3 == 0, float(i), text_chars=100_000, trace_lines=300))
        assert history.bytes_total <= 1 << 20
    assert 0 < history.results_total < 2000
