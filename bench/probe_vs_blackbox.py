"""`/probe?module=health` of whoasr-exporter next to Debian's prometheus-blackbox-exporter (0.23) probing
the same simulator `/health` URL, at the same concurrency, plus the direct-to-simulator baseline.

    python bench/probe_vs_blackbox.py [--concurrency 1,4,16] [--seconds 5] [--blackbox PATH]

Each level runs for a fixed time (after a short warm-up) with N clients each sending one request after
another on kept-alive connections, as Prometheus does; every answer is checked (200 and a success of 1).
Printed per level and tool: requests/s, p50/p99 latency, the latency added over the direct call, the
exporter's CPU per request, errors; then the whoasr/blackbox ratios. The simulator runs with
--health-delay 0 so the target itself is fast (a real whoAsr /health takes ~1 s and serialises). Note
that whoasr-exporter deliberately runs /health of one target one at a time (whoAsr's /health blocks the
server), so beyond concurrency 1 its requests queue at that gate while blackbox's run in parallel.
Everything is on 127.0.0.1; every process is stopped by pid, also on errors. The load generator shares
the machine with the processes it measures: compare the tools with each other, not with other machines.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Child, cpu_seconds, free_port, percentile, start_simulator, wait_http  # noqa: E402

BLACKBOX = "/usr/bin/prometheus-blackbox-exporter"
WARMUP_SECONDS = 0.5
SCRAPE_TIMEOUT = "10"  # what Prometheus would send as X-Prometheus-Scrape-Timeout-Seconds


def write_exporter_config(path: Path, port: int, target_url: str, max_concurrent: int) -> None:
    path.write_text(f"""
exporter:
  listen: "127.0.0.1:{port}"
  log_format: json
  log_level: warning
  max_concurrent_probes: {max_concurrent}
targets:
  - {{name: sim, url: "{target_url}", api: v2, probes: []}}
schedules:  # nothing scheduled competes with the measured /probe runs
  health: {{interval: 1h, timeout: 5s}}
  model_info: {{interval: 1h, timeout: 5s}}
""")


def write_blackbox_config(path: Path) -> None:
    path.write_text("""
modules:
  http_2xx:
    prober: http
    timeout: 5s
    http:
      method: GET
      valid_status_codes: [200]
      preferred_ip_protocol: ip4
""")


async def load(url: str, concurrency: int, seconds: float, ok_marker: bytes) -> tuple[list[float], int, float]:
    """N clients in closed loop for `seconds` (after a warm-up): latencies, errors, measured wall time."""
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": SCRAPE_TIMEOUT}
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=15)) as session:
        start = time.perf_counter()
        measure_from = start + WARMUP_SECONDS
        stop_at = measure_from + seconds

        async def client() -> None:
            nonlocal errors
            while True:
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                try:
                    async with session.get(url, headers=headers) as response:
                        body = await response.read()
                        good = response.status == 200 and ok_marker in body
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    good = False
                done = time.perf_counter()
                if sent >= measure_from and done <= stop_at:
                    if good:
                        latencies.append(done - sent)
                    else:
                        errors += 1

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, errors, seconds


def measure(name: str, url: str, concurrency: int, seconds: float, ok_marker: bytes, pid: int | None) -> dict:
    cpu_before = cpu_seconds(pid) if pid else None
    latencies, errors, wall = asyncio.run(load(url, concurrency, seconds, ok_marker))
    cpu = (cpu_seconds(pid) - cpu_before) if pid else None
    count = len(latencies)
    return {
        "name": name, "concurrency": concurrency, "rps": count / wall, "count": count, "errors": errors,
        "p50": percentile(latencies, 50) * 1000, "p99": percentile(latencies, 99) * 1000,
        "cpu_ms": (cpu / count * 1000) if (cpu is not None and count) else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts (default 1,4,16)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per tool and level (default 5)")
    parser.add_argument("--blackbox", default=BLACKBOX, help=f"blackbox_exporter binary (default {BLACKBOX})")
    args = parser.parse_args()
    levels = [int(part) for part in args.concurrency.split(",")]
    if not (shutil.which(args.blackbox) or Path(args.blackbox).is_file()):
        print(f"blackbox_exporter not found at {args.blackbox}", file=sys.stderr)
        return 2

    children: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="bench-probe-") as tmp:
        try:
            simulator, sim_url = start_simulator("v2", "--health-delay", "0")
            children.append(simulator)

            exporter_port = free_port()
            exporter_config = Path(tmp) / "exporter.yaml"
            write_exporter_config(exporter_config, exporter_port, sim_url, max(levels) * 2)
            exporter = Child([sys.executable, "-m", "exporter", "serve", "--config", str(exporter_config)],
                             str(Path(tmp) / "exporter.log"))
            children.append(exporter)

            blackbox_port = free_port()
            blackbox_config = Path(tmp) / "blackbox.yml"
            write_blackbox_config(blackbox_config)
            blackbox = Child([args.blackbox, f"--web.listen-address=127.0.0.1:{blackbox_port}",
                              f"--config.file={blackbox_config}", "--log.level=warn"],
                             str(Path(tmp) / "blackbox.log"))
            children.append(blackbox)

            exporter_base, blackbox_base = f"http://127.0.0.1:{exporter_port}", f"http://127.0.0.1:{blackbox_port}"
            wait_http(exporter_base + "/-/ready")
            wait_http(blackbox_base + "/-/healthy")
            tools = [
                ("direct /health", f"{sim_url}/health", b'"status":"healthy"', None),
                ("whoasr /probe", f"{exporter_base}/probe?target=sim&module=health", b"whoasr_probe_success 1.0",
                 exporter.pid),
                ("blackbox /probe", f"{blackbox_base}/probe?module=http_2xx&target={sim_url}/health",
                 b"probe_success 1", blackbox.pid),
            ]
            rows = [measure(name, url, level, args.seconds, marker, pid)
                    for level in levels for name, url, marker, pid in tools]
        finally:
            for child in reversed(children):
                child.stop()

    print(f"/probe?module=health vs blackbox_exporter http probe of the same simulator /health "
          f"({args.seconds:g} s per cell, loopback, {len(levels)} levels)\n")
    print(f"{'clients':>7}  {'tool':<16} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} "
          f"{'cpu ms/req':>10} {'errors':>6}")
    by_key = {(row["concurrency"], row["name"]): row for row in rows}
    for row in rows:
        direct = by_key[(row["concurrency"], "direct /health")]
        added = "" if row["name"].startswith("direct") else f"{row['p50'] - direct['p50']:.2f}"
        cpu = "" if row["cpu_ms"] is None else f"{row['cpu_ms']:.2f}"
        print(f"{row['concurrency']:>7}  {row['name']:<16} {row['rps']:>8.0f} {row['p50']:>8.2f} {row['p99']:>8.2f} "
              f"{added:>10} {cpu:>10} {row['errors']:>6}")
    print("\nwhoasr / blackbox:")
    for level in levels:
        ours, theirs = by_key[(level, "whoasr /probe")], by_key[(level, "blackbox /probe")]
        print(f"  {level:>3} clients: throughput x{ours['rps'] / theirs['rps']:.2f}, "
              f"p50 x{ours['p50'] / theirs['p50']:.2f}, p99 x{ours['p99'] / theirs['p99']:.2f}, "
              f"cpu/request x{ours['cpu_ms'] / theirs['cpu_ms']:.2f}")
    return 0 if all(row["errors"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
