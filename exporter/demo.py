"""`whoasr-exporter demo`: a v1 and a v2 simulator and the exporter against them, nothing else needed.

The simulators run as child processes because, like the real server, their `/health` blocks the event
loop for a second; in-process they would stall the exporter too.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from exporter import logs
from exporter.config import parse_config


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, process: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"simulator exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/openapi.json", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"simulator at {url} did not start within {timeout:g}s")


def demo_config(urls: dict[str, str], listen: str):
    """Short intervals so that every panel has data within a minute."""
    return parse_config({
        "exporter": {"listen": listen, "log_format": "console", "allowed_targets": [r"http://127\.0\.0\.1:\d+"]},
        "targets": [{"name": name, "url": url, "api": "auto"} for name, url in urls.items()],
        "schedules": {
            "health": {"interval": "15s", "timeout": "5s"},
            "model_info": {"interval": "5s", "timeout": "2s"},
            "batch": {"interval": "15s", "timeout": "10s"},
            "stream": {"interval": "15s", "timeout": "14s"},
            "punctuation": {"interval": "15s", "timeout": "5s"},
            "vad": {"interval": "15s", "timeout": "5s"},
            "timestamp": {"interval": "30s", "timeout": "10s"},
        },
    }, "<demo>")


async def _serve(config, host: str, port: int, duration: float | None, banner: str) -> int:
    from exporter.daemon import Daemon
    from exporter.server import start_server

    daemon = Daemon(config)
    await daemon.start()
    runner = await start_server(daemon, host, port)
    print(banner, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await asyncio.wait_for(stop.wait(), timeout=duration)
    except asyncio.TimeoutError:
        pass
    await daemon.stop(grace=2.0)
    await runner.cleanup()
    return 0


def run(args: argparse.Namespace) -> int:
    host = args.host
    simulators: list[subprocess.Popen] = []
    urls: dict[str, str] = {}
    try:
        for api in ("v1", "v2"):
            port = _free_port("127.0.0.1")
            process = subprocess.Popen(
                [sys.executable, "-m", "exporter", "simulate", "--api", api, "--host", "127.0.0.1",
                 "--port", str(port)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                start_new_session=True,  # stopped by the demo itself, not by a signal to its whole group
            )
            simulators.append(process)
            urls[f"asr-{api}"] = f"http://127.0.0.1:{port}"
        for (name, url), process in zip(urls.items(), simulators):
            _wait_ready(url, process)
        config = demo_config(urls, f"{host}:{args.port}")
        logs.setup("console", "info")
        base = f"http://{host}:{args.port}"
        banner = "\n".join([
            "whoasr-exporter demo is running (Ctrl-C to stop)",
            *(f"  simulator {name:7s} {url}  (admin API: {url}/-/sim/faults)" for name, url in urls.items()),
            f"  status page       {base}/",
            f"  metrics           {base}/metrics",
            f"  on-demand probe   {base}/probe?target=asr-v2&module=stream&debug=true",
            f"  try a fault:      curl -X PUT -d '{{\"latency\": 6}}' {urls['asr-v2']}/-/sim/faults/recognize",
        ])
        return asyncio.run(_serve(config, host, args.port, args.duration, banner))
    except (RuntimeError, OSError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        for process in simulators:
            process.terminate()
        for process in simulators:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
