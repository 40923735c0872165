"""Model awareness under an operator who unloads and reloads models at random moments.

    python bench/model_race.py [--runs 1000] [--api v2] [--max-gap-ms 100] [--pause-ms 20] [--seed 1]

Starts a simulator on 127.0.0.1 and runs `batch` and `punctuation` probes (alternating, `pause-ms`
apart, through run_probe like the daemon, /probe and the CLI) while an operator thread unloads and
reloads offline_asr and punctuation through whoAsr's own API (POST /model/unload/{type}, POST
/model/load) after random gaps of 0..max-gap ms. It prints how the runs ended and the simulator's
count of on-demand model loads (loads a request triggered, as opposed to POST /model/load).

A read cannot be atomic with the request that follows it: an unload that reaches the server after the
fresh /model/info answer and before the request still gets the model loaded back. That gap (about a
millisecond on loopback, plus the upload for batch) is what remains; `--pause-ms 0` runs back to back,
so that the gap is a large share of the time and the count shows how often an unload lands in it.
The simulator is stopped by pid whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import start_simulator  # noqa: E402
from exporter.client import TargetClient, new_session  # noqa: E402
from exporter.clips import builtin_clip  # noqa: E402
from exporter.config import TargetConfig  # noqa: E402
from exporter.kinds import BatchProbe, PunctuationProbe  # noqa: E402
from exporter.probes import ProbeContext, run_probe  # noqa: E402

MODELS = ("offline_asr", "punctuation")
PROBE_TIMEOUT = 5.0


def admin(url: str, method: str, path: str, body: object = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def operator(url: str, stop: threading.Event, max_gap: float, rng: random.Random, flips: Counter) -> None:
    """Unloads or reloads one model at a time, at random moments, as an operator freeing memory would:
    on its own thread and connections, independent of the prober's event loop."""
    while not stop.wait(rng.uniform(0, max_gap)):
        model = rng.choice(MODELS)
        if rng.random() < 0.5:
            request = urllib.request.Request(f"{url}/model/unload/{model}", data=b"", method="POST")
            flips["unload"] += 1
        else:
            request = urllib.request.Request(f"{url}/model/load", data=json.dumps({"model_type": model}).encode(),
                                             method="POST", headers={"Content-Type": "application/json"})
            flips["load"] += 1
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200, response.status


async def prober(url: str, runs: int, pause: float, outcomes: Counter, durations: list[float]) -> None:
    clip = builtin_clip()
    async with new_session() as session:
        client = TargetClient(session, TargetConfig(name="bench", url=url))
        for i in range(runs):
            kind, settings = ("batch", BatchProbe()) if i % 2 == 0 else ("punctuation", PunctuationProbe())
            ctx = ProbeContext(client=client, settings=settings, timeout=PROBE_TIMEOUT, clip=clip)
            result = await run_probe(kind, ctx)
            outcomes[(kind, "pass" if result.success else result.reason)] += 1
            durations.append(result.duration_seconds)
            await asyncio.sleep(pause)


def race(url: str, runs: int, max_gap: float, pause: float, seed: int) -> tuple[Counter, Counter, float]:
    stop = threading.Event()
    outcomes, flips, durations = Counter(), Counter(), []
    rng = random.Random(seed)
    started = time.monotonic()
    unloader = threading.Thread(target=operator, args=(url, stop, max_gap, rng, flips), daemon=True)
    unloader.start()
    try:
        asyncio.run(asyncio.wait_for(prober(url, runs, pause, outcomes, durations), runs * PROBE_TIMEOUT))
    finally:
        stop.set()
        unloader.join(timeout=15)
    return outcomes, flips, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--api", choices=("v1", "v2"), default="v2")
    parser.add_argument("--max-gap-ms", type=float, default=100.0)
    parser.add_argument("--pause-ms", type=float, default=20.0, help="between runs (0: back to back)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    simulator, url = start_simulator(args.api, "--health-delay", "0")
    try:
        admin(url, "PUT", "/-/sim/load_delay", {"seconds": 0})  # operator reloads are instant here
        admin(url, "DELETE", "/-/sim/stats")
        load_before = os.getloadavg()[0]
        outcomes, flips, wall = race(url, args.runs, args.max_gap_ms / 1000, args.pause_ms / 1000, args.seed)
        stats = admin(url, "GET", "/-/sim/stats")
    finally:
        simulator.stop()
    print(f"{args.runs} probe runs (batch and punctuation alternating, {args.pause_ms:g} ms apart), api {args.api}, "
          f"{wall:.1f} s; operator: "
          f"{flips['unload']} unloads and {flips['load']} loads at random gaps of 0..{args.max_gap_ms:g} ms")
    for (kind, outcome), count in sorted(outcomes.items()):
        print(f"  {kind:12s} {outcome:17s} {count:5d}")
    print(f"requests sent: recognize {stats['requests']['recognize']}, punctuation {stats['requests']['punctuation']}, "
          f"model_info {stats['requests']['model_info']}")
    loads = stats["on_demand_loads"]
    print(f"on-demand model loads: {sum(loads.values())} ({', '.join(f'{m} {n}' for m, n in sorted(loads.items()))})")
    print(f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; {os.cpu_count()} cores")
    return 0 if sum(loads.values()) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
