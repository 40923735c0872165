"""How `--shard I/N` spreads targets: 10,000 whoAsr URLs over 1..16 shards with exporter.shard's hashing.

    python bench/shards.py [--targets 10000] [--max-shards 16]

Prints per shard count: the smallest and largest shard, max/mean (the goal is at most 1.1), and the share
of targets that moved to another shard when growing from N-1 to N replicas (rendezvous hashing moves
only the targets the new shard wins: ideally 1/N). Pure computation, no processes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.shard import shard_of  # noqa: E402


def target_urls(count: int) -> list[str]:
    """URLs shaped like a real fleet: numbered hosts in a few zones, whoAsr's port."""
    zones = ("a", "b", "c")
    return [f"http://asr-{i:05d}.zone-{zones[i % 3]}.example.internal:8000" for i in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--max-shards", type=int, default=16)
    args = parser.parse_args()
    urls = target_urls(args.targets)
    started = time.perf_counter()
    previous: list[int] | None = None
    worst = 0.0
    print(f"{args.targets} targets")
    print(f"{'shards':>6} {'min':>6} {'max':>6} {'mean':>8} {'max/mean':>9} {'moved':>7} {'ideal':>7}")
    for count in range(1, args.max_shards + 1):
        owners = [shard_of(url, count) for url in urls]
        per_shard = [0] * count
        for owner in owners:
            per_shard[owner] += 1
        mean = args.targets / count
        ratio = max(per_shard) / mean
        worst = max(worst, ratio)
        if previous is None:
            moved, ideal = "-", "-"
        else:
            moved_share = sum(1 for a, b in zip(previous, owners) if a != b) / args.targets
            moved, ideal = f"{moved_share:.1%}", f"{1 / count:.1%}"
            if any(b != a and b != count - 1 for a, b in zip(previous, owners)):
                print(f"  !! growing to {count} moved a target between old shards", file=sys.stderr)
                return 1
        print(f"{count:>6} {min(per_shard):>6} {max(per_shard):>6} {mean:>8.1f} {ratio:>9.3f} {moved:>7} {ideal:>7}")
        previous = owners
    elapsed = time.perf_counter() - started
    print(f"worst max/mean {worst:.3f} (goal <= 1.1); {elapsed:.2f} s for all shard counts")
    return 0 if worst <= 1.1 else 1


if __name__ == "__main__":
    sys.exit(main())
