"""How long the status page takes to render with 200 targets, every probe with a full history.

    python bench/status_page.py [--targets 200] [--rounds 50]

In-process, the handler's two steps timed apart (the snapshot runs on the event loop, the formatting in a
worker thread): 200 targets x 5 probes, 20 recent results each (every fourth
failed, so sparklines carry failure marks and every cell links its last failure), models partly unloaded.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import percentile  # noqa: E402


def build(count: int):
    from exporter.config import TargetConfig
    from exporter.history import History
    from exporter.results import ModelInfoState, ProbeResult
    from exporter.state import ExporterState

    kinds = ("batch", "stream", "punctuation", "vad", "timestamp")
    targets = [TargetConfig(name=f"asr-{i:04d}", url=f"http://asr-{i:04d}.example.internal:8000") for i in range(count)]
    state = ExporterState()
    state.set_targets({t.name: kinds for t in targets})
    history = History(20, 50)
    now = time.time()
    models = {"streaming_asr": True, "offline_asr": True, "punctuation": True, "vad": True, "timestamp": True}
    for i, target in enumerate(targets):
        loaded = dict(models, vad=i % 10 != 0)
        state.record(ProbeResult(target.name, "health", i % 25 != 0, now, 0.01, api="v2",
                                 reason=None if i % 25 else "timeout"))
        state.record(ProbeResult(target.name, "model_info", True, now, 0.001, api="v2",
                                 model_info=ModelInfoState(loaded, sum(loaded.values()))))
        for kind in kinds:
            for run in range(20):
                ok = (run + i) % 4 != 0
                history.add(ProbeResult(target.name, kind, ok, now - (20 - run) * 60, 0.2 + run * 0.01,
                                        reason=None if ok else "timeout", detail="" if ok else "no answer within 30s",
                                        cer=0.0 if ok else None, trace=["0.000s  POST /offline/recognize"]))
    return targets, state, history


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    from exporter import status_page

    targets, state, history = build(args.targets)
    gc.freeze()  # as the daemon does after start-up: full collections then skip what was built so far
    page = status_page.render(targets, state, history)
    copies, formats = [], []
    for _ in range(args.rounds):
        started = time.perf_counter()
        snap = status_page.snapshot(targets, state, history)
        copied = time.perf_counter()
        status_page.to_html(snap)
        formats.append(time.perf_counter() - copied)
        copies.append(copied - started)
    print(f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"status page, {args.targets} targets x 5 probes x 20 runs: {len(page.encode()) / 1024:.0f} KiB, "
          f"{page.count('<svg')} sparklines")
    for what, times in (("snapshot (on the event loop)", copies), ("to_html (worker thread)", formats)):
        print(f"  {what:30} p50 {percentile(times, 50) * 1000:.1f} ms  p99 {percentile(times, 99) * 1000:.1f} ms  "
              f"max {max(times) * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
