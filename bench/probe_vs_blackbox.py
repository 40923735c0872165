"""`/probe?module=health` of whoasr-exporter next to Debian's prometheus-blackbox-exporter (0.23) probing
the same simulators' `/health`, at the same concurrency, plus the direct-to-simulator baseline.

    python bench/probe_vs_blackbox.py [--cases 16x1,16x4,16x16,16x64,1x1,1x4,1x16] [--seconds 5]
                                      [--blackbox PATH]

A case TxC is T targets (one simulator process each) and C clients. Each client sends one request after
another on kept-alive connections, as Prometheus does, moving to the next target each time (client i's
k-th request goes to target (i + k) mod T); every answer is checked (200 and a success of 1). Each cell
runs for a fixed time after a short warm-up. Printed per case and tool: requests/s, p50/p99 latency, the
latency added over the direct call, CPU per request of the tool (its process and children), the target
/health calls per answer (the simulators count them: whoasr-exporter lets requests for one target that
arrive while its /health runs share the next call, blackbox_exporter calls once per request), errors;
then the whoasr/blackbox ratios against the goals (throughput >= 1.0x and CPU per request <= 1.0x at
every case, p99 <= 1.0x at 16x16), and the load average before and after. The simulators run with
--health-delay 0 so the targets are fast (a real whoAsr /health takes ~1 s and serialises). whoasr-exporter
deliberately runs /health of one target one at a time (whoAsr's /health blocks the server), so with one
target its requests queue at that gate while blackbox's run in parallel. Everything is on 127.0.0.1;
every process is stopped by pid, also on errors. The load generator, the simulators and the tools share
the machine: compare the tools with each other, not with other machines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import json
import time
import urllib.request
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Child, cpu_seconds, free_port, percentile, start_simulator, wait_http  # noqa: E402

BLACKBOX = "/usr/bin/prometheus-blackbox-exporter"
WARMUP_SECONDS = 0.5
SCRAPE_TIMEOUT = "10"  # what Prometheus would send as X-Prometheus-Scrape-Timeout-Seconds


def write_exporter_config(path: Path, port: int, target_urls: list[str], max_concurrent: int) -> None:
    targets = "\n".join(f'  - {{name: sim-{i}, url: "{url}", api: v2, probes: []}}' for i, url in enumerate(target_urls))
    path.write_text(f"""
exporter:
  listen: "127.0.0.1:{port}"
  log_format: json
  log_level: warning
  max_concurrent_probes: {max_concurrent}
targets:
{targets}
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


async def load(urls: list[str], concurrency: int, seconds: float, ok_marker: bytes
               ) -> tuple[list[float], int, float, int]:
    """N clients in closed loop for `seconds` (after a warm-up): latencies, errors, measured wall time, and
    every answer received (warm-up and late ones included)."""
    latencies: list[float] = []
    errors = 0
    answered = 0
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    headers = {"X-Prometheus-Scrape-Timeout-Seconds": SCRAPE_TIMEOUT}
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=15)) as session:
        start = time.perf_counter()
        measure_from = start + WARMUP_SECONDS
        stop_at = measure_from + seconds

        async def client(index: int) -> None:
            nonlocal errors, answered
            turn = index
            while True:
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                url = urls[turn % len(urls)]
                turn += 1
                try:
                    async with session.get(url, headers=headers) as response:
                        body = await response.read()
                        good = response.status == 200 and ok_marker in body
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    good = False
                done = time.perf_counter()
                answered += 1
                if sent >= measure_from and done <= stop_at:
                    if good:
                        latencies.append(done - sent)
                    else:
                        errors += 1

        await asyncio.gather(*(client(i) for i in range(concurrency)))
    return latencies, errors, seconds, answered


def tree_cpu_seconds(pid: int) -> float:
    """CPU of the process and its children (worker processes count too)."""
    total = cpu_seconds(pid)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                total += cpu_seconds(int(entry.name))
    return total


def health_calls(sim_urls: list[str]) -> int:
    """/health requests the simulators have answered so far (their control API counts them)."""
    total = 0
    for url in sim_urls:
        with urllib.request.urlopen(f"{url}/-/sim/stats", timeout=5) as response:
            total += json.loads(response.read())["requests"].get("health", 0)
    return total


def measure(name: str, case: tuple[int, int], urls: list[str], seconds: float, ok_marker: bytes,
            pid: int | None, sim_urls: list[str]) -> dict:
    targets, concurrency = case
    calls_before = health_calls(sim_urls)
    cpu_before = tree_cpu_seconds(pid) if pid else None
    latencies, errors, wall, answered = asyncio.run(load(urls[:targets], concurrency, seconds, ok_marker))
    cpu = (tree_cpu_seconds(pid) - cpu_before) if pid else None
    calls = health_calls(sim_urls) - calls_before
    count = len(latencies)
    return {
        "name": name, "case": case, "rps": count / wall, "count": count, "errors": errors,
        "calls_per_answer": calls / answered if answered else float("nan"),
        "p50": percentile(latencies, 50) * 1000, "p99": percentile(latencies, 99) * 1000,
        "cpu_ms": (cpu / count * 1000) if (cpu is not None and count) else None,
    }


def parse_cases(text: str) -> list[tuple[int, int]]:
    cases = []
    for part in text.split(","):
        targets, _, clients = part.strip().partition("x")
        cases.append((int(targets), int(clients)))
    return cases


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="16x1,16x4,16x16,16x64,1x1,1x4,1x16",
                        help="comma-separated TARGETSxCLIENTS (default 16x1,16x4,16x16,16x64,1x1,1x4,1x16)")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per tool and case (default 5)")
    parser.add_argument("--blackbox", default=BLACKBOX, help=f"blackbox_exporter binary (default {BLACKBOX})")
    args = parser.parse_args()
    cases = parse_cases(args.cases)
    if not (shutil.which(args.blackbox) or Path(args.blackbox).is_file()):
        print(f"blackbox_exporter not found at {args.blackbox}", file=sys.stderr)
        return 2
    load_before = load_average()

    children: list[Child] = []
    with tempfile.TemporaryDirectory(prefix="bench-probe-") as tmp:
        try:
            sim_urls = []
            for _ in range(max(targets for targets, _ in cases)):
                simulator, sim_url = start_simulator("v2", "--health-delay", "0")
                children.append(simulator)
                sim_urls.append(sim_url)

            exporter_port = free_port()
            exporter_config = Path(tmp) / "exporter.yaml"
            write_exporter_config(exporter_config, exporter_port, sim_urls,
                                  max(clients for _, clients in cases) * 2)
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
                ("direct /health", [f"{url}/health" for url in sim_urls], b'"status":"healthy"', None),
                ("whoasr /probe", [f"{exporter_base}/probe?target=sim-{i}&module=health" for i in range(len(sim_urls))],
                 b"whoasr_probe_success 1.0", exporter.pid),
                ("blackbox /probe", [f"{blackbox_base}/probe?module=http_2xx&target={url}/health" for url in sim_urls],
                 b"probe_success 1", blackbox.pid),
            ]
            rows = [measure(name, case, urls, args.seconds, marker, pid, sim_urls)
                    for case in cases for name, urls, marker, pid in tools]
        finally:
            for child in reversed(children):
                child.stop()

    print(f"/probe?module=health vs blackbox_exporter http probe of the same simulators' /health "
          f"({args.seconds:g} s per cell, loopback; load average before {load_before}, after {load_average()})\n")
    print(f"{'targets':>7} {'clients':>7}  {'tool':<16} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'added p50':>10} "
          f"{'cpu ms/req':>10} {'calls/ans':>9} {'errors':>6}")
    by_key = {(row["case"], row["name"]): row for row in rows}
    for row in rows:
        direct = by_key[(row["case"], "direct /health")]
        added = "" if row["name"].startswith("direct") else f"{row['p50'] - direct['p50']:.2f}"
        cpu = "" if row["cpu_ms"] is None else f"{row['cpu_ms']:.2f}"
        print(f"{row['case'][0]:>7} {row['case'][1]:>7}  {row['name']:<16} {row['rps']:>8.0f} {row['p50']:>8.2f} "
              f"{row['p99']:>8.2f} {added:>10} {cpu:>10} {row['calls_per_answer']:>9.2f} {row['errors']:>6}")
    print("\nwhoasr / blackbox (goal: throughput >= 1.0, cpu/request <= 1.0; p99 <= 1.0 at 16 targets x 16 clients):")
    met = True
    for case in cases:
        ours, theirs = by_key[(case, "whoasr /probe")], by_key[(case, "blackbox /probe")]
        throughput, cpu = ours["rps"] / theirs["rps"], ours["cpu_ms"] / theirs["cpu_ms"]
        p99 = ours["p99"] / theirs["p99"]
        ok = throughput >= 1.0 and cpu <= 1.0 and (p99 <= 1.0 or case != (16, 16))
        met = met and ok
        print(f"  {case[0]:>2} targets x {case[1]:>2} clients: throughput x{throughput:.2f}, "
              f"p50 x{ours['p50'] / theirs['p50']:.2f}, p99 x{p99:.2f}, cpu/request x{cpu:.2f}"
              f"{'' if ok else '   <- goal not met'}")
    return 0 if all(row["errors"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
