"""Process and port helpers shared by the tests: loopback only, stopped by pid, bounded waits; and
calls to a simulator's /-/sim/ control API."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
SIM_MODELS = ("streaming_asr", "offline_asr", "punctuation", "vad", "timestamp")


def free_port() -> int:
    """A port that was free on the loopback address a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    """Polls predicate until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - polled condition may fail until ready
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}" + (f": {last_error}" if last_error else ""))


def http_get(url: str, timeout: float = 5.0, headers: dict | None = None) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def http_post(url: str, body: bytes = b"", timeout: float = 5.0, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class ManagedProcess:
    """A child process in its own process group, always stopped by pid (group) on stop()."""

    def __init__(self, args: list[str], log_path: Path, env: dict | None = None, cwd: Path | None = None):
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=str(cwd or ROOT),
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 5.0) -> int | None:
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=timeout)
        self._log.close()
        return self.proc.returncode

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")


def exporter_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "exporter", *args]


def serve_exporter(config: Path, log: Path) -> ManagedProcess:
    """`whoasr-exporter serve --config <config>` as a child process, its output in `log`; not waited for."""
    return ManagedProcess(exporter_cmd("serve", "--config", str(config)), log)


def wait_ready(base: str, timeout: float = 20.0) -> None:
    """Waits until the exporter at `base` (http://host:port) answers /-/ready with 200."""
    wait_until(lambda: http_get(base + "/-/ready", timeout=1)[0] == 200, timeout=timeout, what="exporter ready")


def start_simulator(tmp_path: Path, api: str = "v2", *extra: str, health_delay: float = 0.05, name: str | None = None,
                    port: int | None = None):
    """Starts `whoasr-exporter simulate` on `port` or a free one; returns (process, base_url)."""
    port = port or free_port()
    log = tmp_path / f"{name or 'sim-' + api}-{port}.log"
    proc = ManagedProcess(
        exporter_cmd("simulate", "--api", api, "--host", LOOPBACK, "--port", str(port),
                     "--health-delay", str(health_delay), *extra),
        log,
    )
    url = f"http://{LOOPBACK}:{port}"
    try:
        wait_until(lambda: http_get(url + "/openapi.json", timeout=2)[0] == 200, timeout=15,
                   what=f"simulator on {url}")
    except TimeoutError:
        proc.stop()
        raise AssertionError(f"simulator did not start:\n{proc.output()}")
    return proc, url


# ---------------------------------------------------------------- the simulator's control API (/-/sim/)

def sim_admin(url: str, method: str, path: str, body: object = None, timeout: float = 10.0) -> Any:
    """One call to the control API of the simulator at `url`; `path` is below /-/sim/ ("faults/vad").
    Returns the JSON answer; any status but 200 fails (urllib raises on 4xx/5xx)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/-/sim/{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        assert response.status == 200, f"{method} /-/sim/{path}: {response.status}"
        return json.loads(response.read())


def sim_put(url: str, path: str, body: object) -> Any:
    return sim_admin(url, "PUT", path, body)


def sim_delete(url: str, path: str) -> Any:
    return sim_admin(url, "DELETE", path)


def sim_fault(url: str, endpoint: str, **faults) -> None:
    """Sets the endpoint's injected faults (replacing any it had)."""
    sim_put(url, f"faults/{endpoint}", faults)


def sim_model(url: str, model: str, **state) -> None:
    """Sets a model's loaded and/or fail_load at once."""
    sim_put(url, f"models/{model}", state)


def sim_stats(url: str) -> dict:
    """Requests per endpoint, open WebSockets, model requests."""
    return sim_admin(url, "GET", "stats")


def sim_reset(url: str, models: tuple[str, ...] = SIM_MODELS) -> None:
    """No faults, and each of `models` loaded and loading successfully."""
    sim_delete(url, "faults")
    for model in models:
        sim_model(url, model, loaded=True, fail_load=False)


# ---------------------------------------------------------------- a module's processes
class Stack:
    """The processes a module fixture starts (simulators, one exporter), stopped by pid, newest first."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[ManagedProcess] = []
        self.urls: dict[str, str] = {}
        self.base = ""
        self.exporter: ManagedProcess | None = None

    def simulator(self, name: str, api: str, *extra: str) -> str:
        proc, url = start_simulator(self.tmp, api, *extra, name=name)
        self.procs.append(proc)
        self.urls[name] = url
        return url

    def serve(self, config_text: str, port: int) -> str:
        """Writes the config, starts `serve` with it and waits until it is ready; returns its base URL."""
        config = self.tmp / "config.yaml"
        config.write_text(config_text)
        self.exporter = serve_exporter(config, self.tmp / "exporter.log")
        self.procs.append(self.exporter)
        self.base = f"http://{LOOPBACK}:{port}"
        wait_ready(self.base)
        return self.base

    def metrics(self) -> str:
        return http_get(self.base + "/metrics", timeout=2)[1].decode()

    def wait_metric(self, name: str, expected, timeout: float = 10.0, **labels):
        from tests.metrics_text import value

        return wait_until(lambda: value(self.metrics(), name, **labels) == expected, timeout=timeout,
                          what=f"{name}{labels} == {expected}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
