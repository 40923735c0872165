"""Foundation figures: /metrics render time with 200 targets, idle RSS, scheduler lag with 1,000 targets,
and RSS with 1,000 targets x 5 probes once the history is full.

    python bench/foundation.py [--lag-seconds 45] [--only history]

Targets: /metrics p99 < 20 ms with 200 targets; idle RSS < 60 MB; scheduler lag p99 < 1 s with 1,000
targets scraped every 15 s (all on this 2-core machine). Everything runs on 127.0.0.1 and stops by pid.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Child, free_port, percentile, rss_mb, start_simulator, wait_http  # noqa: E402


def write_config(path: Path, port: int, target_url: str, count: int, interval: str, probes: bool) -> None:
    lines = [f'exporter: {{listen: "127.0.0.1:{port}", log_format: json, log_level: warning}}', "targets:"]
    probe_list = "" if probes else ", probes: []"
    lines += [f'  - {{name: t{i:04d}, url: "{target_url}", api: v2{probe_list}}}' for i in range(count)]
    lines += ["schedules:", f"  health: {{interval: {interval}, timeout: 5s}}",
              f"  model_info: {{interval: {interval}, timeout: 5s}}"]
    if probes:
        lines += ["  batch: {interval: 20s, timeout: 10s}", "  punctuation: {interval: 20s, timeout: 10s}",
                  "  vad: {interval: 20s, timeout: 10s}", "  timestamp: {interval: 20s, timeout: 10s}",
                  "  stream: {interval: 20s, timeout: 19s}", "probes: {stream: {pace: fast}}"]
    path.write_text("\n".join(lines) + "\n")


def scrape_times(url: str, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read()
        times.append(time.perf_counter() - started)
    return times


def histogram_quantile(text: str, name: str, q: float) -> tuple[float, int]:
    buckets = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1]
    rank = q * total
    for bound, count in buckets:
        if count >= rank:
            return bound, int(total)
    return float("inf"), int(total)


def bench_metrics(tmp: Path, sim_url: str) -> None:
    port = free_port()
    config = tmp / "metrics.yaml"
    write_config(config, port, sim_url, 200, "15s", probes=True)
    exporter = Child([sys.executable, "-m", "exporter", "serve", "--config", str(config)], str(tmp / "m.log"))
    try:
        wait_http(f"http://127.0.0.1:{port}/-/healthy")
        time.sleep(25)  # every target scraped and probed at least once
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
        times = scrape_times(f"http://127.0.0.1:{port}/metrics", 200)
        print(f"/metrics, 200 targets x (state + 5 probes), {series} series, {len(body) / 1024:.0f} KiB:")
        print(f"  GET /metrics p50 {percentile(times, 50) * 1000:.1f} ms  p99 {percentile(times, 99) * 1000:.1f} ms"
              f"  max {max(times) * 1000:.1f} ms   (target: p99 < 20 ms)")
        print(f"  RSS with 200 busy targets: {rss_mb(exporter.pid):.1f} MB")
        print(f"  render alone (in-process, same shape of state): {render_alone()}")
    finally:
        exporter.stop()


def render_alone() -> str:
    """The render step of /metrics without HTTP or a busy loop: 200 targets with every probe kind."""
    exposition = busy_exposition(200)
    times = []
    for _ in range(200):
        started = time.perf_counter()
        body = exposition.render(openmetrics=False)
        times.append(time.perf_counter() - started)
    return (f"{len(body) / 1024:.0f} KiB, p50 {percentile(times, 50) * 1000:.1f} ms, "
            f"p99 {percentile(times, 99) * 1000:.1f} ms   (target: p99 < 20 ms)")


def busy_exposition(count: int):
    """An Exposition holding `count` targets' state, each with every probe kind run (passed and failed)."""
    from exporter.metrics import Exposition, process_registry
    from exporter.results import HealthState, ModelInfoState, ProbeResult, StreamTimings
    from exporter.state import ExporterState

    kinds = ("batch", "stream", "punctuation", "vad", "timestamp")
    state = ExporterState()
    state.set_targets({f"t{i:04d}": kinds for i in range(count)})
    exposition = Exposition(state, process_registry())
    models = {k: True for k in ("streaming_asr", "offline_asr", "punctuation", "vad", "timestamp")}
    now = time.time()
    for name in list(state.targets):
        state.record(ProbeResult(name, "health", True, now, 0.01, api="v2", health=HealthState(
            status="healthy", version="1.0.0", models_loaded=models, total_loaded=5, cpu_ratio=0.1,
            memory_ratio=0.2, memory_total_bytes=1e10, memory_available_bytes=5e9)))
        state.record(ProbeResult(name, "model_info", True, now, 0.001, api="v2",
                                 model_info=ModelInfoState(models, 5)))
        for kind in kinds:
            for ok in (True, False):
                state.record_probe(ProbeResult(name, kind, ok, now, 0.5, reason=None if ok else "timeout",
                                               audio_seconds=5.2, processing_seconds=0.1, cer=0.0,
                                               character_errors=0, reference_characters=11,
                                               stream=StreamTimings(0.001, 0.5, 0.01, 8) if kind == "stream" else None))
    return exposition


def history_child(hostile: bool, keep: bool = True) -> None:
    """In a process of its own: the daemon's state, exposition and history for 1,000 targets x 5 probes
    (and the imports a probing daemon has), fed 30 results per (target, probe), a third of them failures
    with a 40-line trace; `hostile`: every transcript 100,000 characters and every trace 300 long lines;
    not `keep`: the history left out, for the baseline. Prints RSS and the history's totals."""
    import gc

    import exporter.clips  # noqa: F401 - numpy, libsndfile: what a daemon that probes has loaded
    import exporter.daemon  # noqa: F401
    from exporter.accuracy import character_error_rate
    from exporter.config import ExporterConfig
    from exporter.history import History
    from exporter.metrics import Exposition, process_registry
    from exporter.results import Check, HealthState, ProbeResult, StreamTimings
    from exporter.state import ExporterState

    character_error_rate("今天", "今天")  # jiwer loaded too
    kinds = ("batch", "stream", "punctuation", "vad", "timestamp")
    names = [f"t{i:04d}" for i in range(1000)]
    state = ExporterState()
    state.set_targets({name: kinds for name in names})
    exposition = Exposition(state, process_registry())
    defaults = ExporterConfig()
    history = History(defaults.history_size, defaults.history_failures_size, defaults.history_max_results,
                      defaults.history_max_mib << 20)
    models = {k: True for k in ("streaming_asr", "offline_asr", "punctuation", "vad", "timestamp")}
    text = "今天天气很好我们去公园" * (9091 if hostile else 1)
    trace_lines = 300 if hostile else 40
    now = time.time()
    for round_ in range(30):
        for name in names:
            state.record(ProbeResult(name, "health", True, now, 0.01, api="v2", version="1.0.0",
                                     health=HealthState(status="healthy", version="1.0.0", models_loaded=models,
                                                        total_loaded=5, cpu_ratio=0.1)))
            for kind in kinds:
                ok = (round_ + hash(name)) % 3 != 0
                trace = [f"{i * 0.01:8.3f}s  {'<- partial result ' * (8 if hostile else 1)}{i}"
                         for i in range(trace_lines)] if not ok else []
                result = ProbeResult(name, kind, ok, now + round_, 0.5, reason=None if ok else "timeout",
                                     detail="" if ok else "POST /offline/recognize: no complete answer within 30s",
                                     transcript=text, expected_transcript="今天天气很好我们去公园",
                                     cer=0.0, character_errors=0, reference_characters=11, audio_seconds=5.19,
                                     processing_seconds=0.1, checks=[Check("cer", ok, "CER 0.000 (0/11)")],
                                     trace=trace,
                                     stream=StreamTimings(0.001, 0.5, 0.01, 8) if kind == "stream" else None)
                state.record(result)
                if keep:
                    history.record(result)
    exposition.render()
    gc.collect()
    rss = rss_mb(os.getpid())
    what = "hostile (100,000-character transcripts, 300-line traces)" if hostile else "typical"
    if not keep:
        what = "history left out (baseline)"
    print(f"1,000 targets x 5 probes, history full, {what}: RSS {rss:.1f} MB; history {history.results_total} "
          f"results, ~{history.bytes_total / 2**20:.1f} MiB estimated, {history.evicted_total} evicted")


def bench_history(tmp: Path) -> None:
    for variant in ("--no-history", "", "--hostile"):
        log = tmp / f"history{variant}.log"
        child = Child([sys.executable, str(Path(__file__).resolve()), "--history-child", *filter(None, [variant])],
                      str(log))
        try:
            child.proc.wait(timeout=600)
        finally:
            child.stop()
        print(log.read_text().strip())


def bench_idle(tmp: Path) -> None:
    port = free_port()
    config = tmp / "idle.yaml"
    config.write_text(f'exporter: {{listen: "127.0.0.1:{port}", log_level: warning}}\n'
                      'targets: [{name: local, url: "http://127.0.0.1:9", probes: []}]\n')
    exporter = Child([sys.executable, "-m", "exporter", "serve", "--config", str(config)])
    try:
        wait_http(f"http://127.0.0.1:{port}/-/healthy")
        time.sleep(5)
        print(f"idle daemon (1 target, no probes): RSS {rss_mb(exporter.pid):.1f} MB   (target: < 60 MB)")
    finally:
        exporter.stop()


def bench_lag(tmp: Path, sim_urls: list[str], seconds: float) -> None:
    port = free_port()
    config = tmp / "lag.yaml"
    lines = [f'exporter: {{listen: "127.0.0.1:{port}", log_format: json, log_level: error}}', "targets:"]
    lines += [f'  - {{name: t{i:04d}, url: "{sim_urls[i % len(sim_urls)]}", api: v2, probes: []}}'
              for i in range(1000)]
    lines += ["schedules:", "  health: {interval: 15s, timeout: 5s}", "  model_info: {interval: 15s, timeout: 5s}"]
    config.write_text("\n".join(lines) + "\n")
    exporter = Child([sys.executable, "-m", "exporter", "serve", "--config", str(config)], str(tmp / "lag.log"))
    try:
        wait_http(f"http://127.0.0.1:{port}/-/healthy")
        time.sleep(seconds)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        p50, total = histogram_quantile(text, "whoasr_exporter_scheduler_lag_seconds", 0.50)
        p99, _ = histogram_quantile(text, "whoasr_exporter_scheduler_lag_seconds", 0.99)
        ok = sum(1 for line in text.splitlines() if line.startswith("whoasr_up{") and line.endswith(" 1.0"))
        print(f"scheduler, 1,000 targets x (health + model_info) every 15 s for {seconds:.0f} s: {total} runs")
        print(f"  lag p50 <= {p50:g} s  p99 <= {p99:g} s (histogram bucket bounds)   (target: p99 < 1 s)")
        print(f"  targets up: {ok}/1000   RSS {rss_mb(exporter.pid):.1f} MB")
    finally:
        exporter.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lag-seconds", type=float, default=45.0)
    parser.add_argument("--only", choices=["history"], help="run one part only")
    parser.add_argument("--history-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hostile", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-history", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.history_child:
        history_child(args.hostile, keep=not args.no_history)
        return 0
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.only == "history":
        with tempfile.TemporaryDirectory() as tmp:
            bench_history(Path(tmp))
        return 0
    sims = []
    try:
        for _ in range(2):
            sims.append(start_simulator("v2", "--health-delay", "0"))
        with tempfile.TemporaryDirectory() as tmp:
            bench_idle(Path(tmp))
            bench_metrics(Path(tmp), sims[0][1])
            bench_lag(Path(tmp), [url for _, url in sims], args.lag_seconds)
            bench_history(Path(tmp))
    finally:
        for child, _ in sims:
            child.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
