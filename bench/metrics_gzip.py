"""What gzip on /metrics costs and saves with 200 targets (Prometheus always sends Accept-Encoding: gzip).

    python bench/metrics_gzip.py [--scrapes 100]

In-process: render once, then compress at levels 1, 3 (the exporter's) and 6. Over HTTP: a real exporter
probing 200 targets of a simulator, scraped with and without Accept-Encoding: gzip, one after the other:
latency, bytes on the wire and the exporter's CPU per scrape. Everything on 127.0.0.1, stopped by pid.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Child, cpu_seconds, free_port, percentile, start_simulator, wait_http  # noqa: E402
from bench.foundation import busy_exposition, write_config  # noqa: E402


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:.1f} ms"


def in_process(rounds: int) -> None:
    from exporter.server import GZIP_LEVEL, gzip_body

    exposition = busy_exposition(200)
    body = exposition.render()
    renders = []
    for _ in range(rounds):
        started = time.perf_counter()
        exposition.render()
        renders.append(time.perf_counter() - started)
    print(f"in-process, 200 targets, {len(body) / 1024:.0f} KiB of text:")
    print(f"  render             p50 {ms(renders, 50)}  p99 {ms(renders, 99)}")
    for level in (1, GZIP_LEVEL, 6):
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            packed = gzip_body(body, level)
            times.append(time.perf_counter() - started)
        assert gzip.decompress(packed) == body
        mark = "  (the exporter's)" if level == GZIP_LEVEL else ""
        print(f"  gzip level {level}       p50 {ms(times, 50)}  p99 {ms(times, 99)}  -> {len(packed) / 1024:.0f} KiB "
              f"({len(packed) / len(body) * 100:.1f} % of the text){mark}")


def scrape(url: str, count: int, gzip_wanted: bool) -> tuple[list[float], int]:
    headers = {"Accept-Encoding": "gzip"} if gzip_wanted else {}
    times, size = [], 0
    for _ in range(count):
        request = urllib.request.Request(url, headers=headers)
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=10) as response:
            data = response.read()
            encoded = response.headers.get("Content-Encoding") == "gzip"
        times.append(time.perf_counter() - started)
        assert encoded == gzip_wanted
        size = len(data)
    return times, size


def over_http(tmp: Path, sim_url: str, count: int) -> None:
    port = free_port()
    config = tmp / "gzip.yaml"
    write_config(config, port, sim_url, 200, "15s", probes=True)
    exporter = Child([sys.executable, "-m", "exporter", "serve", "--config", str(config)], str(tmp / "e.log"))
    try:
        wait_http(f"http://127.0.0.1:{port}/-/healthy")
        time.sleep(25)  # every target scraped and probed at least once
        url = f"http://127.0.0.1:{port}/metrics"
        print(f"over HTTP, a real exporter probing 200 targets, {count} scrapes each way:")
        for wanted in (False, True, False, True):
            cpu = cpu_seconds(exporter.pid)
            times, size = scrape(url, count, wanted)
            cpu_per_scrape = (cpu_seconds(exporter.pid) - cpu) / count
            print(f"  {'gzip ' if wanted else 'plain'}  p50 {ms(times, 50)}  p99 {ms(times, 99)}  "
                  f"{size / 1024:.0f} KiB on the wire  exporter CPU {cpu_per_scrape * 1000:.1f} ms/scrape")
    finally:
        exporter.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=100)
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    in_process(args.scrapes)
    sim, sim_url = start_simulator("v2", "--health-delay", "0")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            over_http(Path(tmp), sim_url, args.scrapes)
    finally:
        sim.stop()
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
