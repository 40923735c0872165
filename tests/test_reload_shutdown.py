"""Hot reload (POST /-/reload and SIGHUP) and graceful shutdown (SIGTERM), on a real exporter process."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest

from tests.metrics_text import label_sets, value
from tests.support import (LOOPBACK, ManagedProcess, free_port, http_get, http_post, serve_exporter, sim_stats,
                           start_simulator, wait_ready, wait_until)

pytestmark = pytest.mark.timeout(90)


def metrics(base: str) -> str:
    return http_get(base + "/metrics", timeout=3)[1].decode()


def log_events(proc: ManagedProcess) -> list[dict]:
    events = []
    for line in proc.output().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            pass
    return events


def config_text(port: int, targets: str, extra: str = "", listen: str | None = None) -> str:
    return f"""
exporter:
  listen: "{listen or f'{LOOPBACK}:{port}'}"
  log_format: json
  log_level: debug
  shutdown_grace: 1s
targets:
{targets}
schedules:
  health: {{interval: 1s, timeout: 900ms}}
  model_info: {{interval: 1s, timeout: 900ms}}
  punctuation: {{interval: 1s, timeout: 900ms}}
{extra}"""


@pytest.fixture
def simulator(tmp_path):
    proc, url = start_simulator(tmp_path, "v2", health_delay=0.01)
    yield url
    proc.stop()


def start_exporter(tmp_path, config) -> tuple[ManagedProcess, str]:
    return serve_exporter(config, tmp_path / "exporter.log"), proc_base(config)


def proc_base(config) -> str:
    for line in config.read_text().splitlines():
        if "listen:" in line:
            return "http://" + line.split('"')[1]
    raise AssertionError("no listen line")


def test_reload_good_then_bad_config(tmp_path, simulator):
    port = free_port()
    both = f"""  - {{name: keep, url: "{simulator}", probes: []}}
  - {{name: gone, url: "{simulator}/", probes: [punctuation]}}"""
    config = tmp_path / "config.yaml"
    config.write_text(config_text(port, both))
    proc, base = start_exporter(tmp_path, config)
    try:
        wait_ready(base)
        wait_until(lambda: value(metrics(base), "whoasr_probe_success", target="gone", probe="punctuation") == 1.0,
                   timeout=15, what="the punctuation probe of 'gone'")
        wait_until(lambda: value(metrics(base), "whoasr_up", target="keep") == 1.0, timeout=10, what="keep up")
        first = metrics(base)
        assert value(first, "whoasr_exporter_config_last_reload_successful") == 1.0
        loaded_at = value(first, "whoasr_exporter_config_last_reload_success_timestamp_seconds")

        # A good config without 'gone': its schedules stop and all of its series disappear.
        config.write_text(config_text(port, f'  - {{name: keep, url: "{simulator}", probes: []}}'))
        time.sleep(0.01)
        status, body = http_post(base + "/-/reload")
        assert (status, body) == (200, b"reloaded 1 targets\n")
        after = metrics(base)
        assert not [labels for name in ("whoasr_up", "whoasr_probe_success", "whoasr_probe_runs_total",
                                        "whoasr_scrape_duration_seconds", "whoasr_probe_info")
                    for labels in label_sets(after, name) if labels.get("target") == "gone"]
        assert value(after, "whoasr_up", target="keep") == 1.0
        assert value(after, "whoasr_exporter_config_last_reload_successful") == 1.0
        assert value(after, "whoasr_exporter_config_last_reload_success_timestamp_seconds") > loaded_at
        assert json.loads(http_get(base + "/api/history?target=gone")[1]) == []
        runs_before = _runs_of(proc, "gone")
        time.sleep(2.5)  # its 1 s schedule would have run twice by now
        assert _runs_of(proc, "gone") == runs_before
        assert 'target="gone"' not in metrics(base)

        # A bad config by SIGHUP: rejected, logged, the running config kept, the gauge says so.
        good_at = value(metrics(base), "whoasr_exporter_config_last_reload_success_timestamp_seconds")
        config.write_text(config_text(port, '  - {name: keep, url: "not a url"}'))
        proc.signal(signal.SIGHUP)
        wait_until(lambda: value(metrics(base), "whoasr_exporter_config_last_reload_successful") == 0.0,
                   timeout=10, what="the failed reload in the metrics")
        failed = [e for e in log_events(proc) if e.get("event") == "config reload failed"]
        assert failed and failed[0]["level"] == "error" and "targets[0].url" in failed[0]["error"]
        now = metrics(base)
        assert value(now, "whoasr_exporter_config_last_reload_success_timestamp_seconds") == good_at
        last_scrape = value(now, "whoasr_last_scrape_timestamp_seconds", target="keep", endpoint="model_info")
        wait_until(lambda: value(metrics(base), "whoasr_last_scrape_timestamp_seconds", target="keep",
                                 endpoint="model_info") > last_scrape, timeout=5, what="keep still scraped")

        # The same bad config by POST: 400 with the reason; GET is not allowed.
        status, body = http_post(base + "/-/reload")
        assert status == 400 and b"targets[0].url" in body
        assert http_get(base + "/-/reload")[0] == 405

        # A valid config that moves the listen address: applied otherwise, the move reported as needing a restart.
        config.write_text(config_text(port, f'  - {{name: keep, url: "{simulator}", probes: []}}',
                                      listen=f"{LOOPBACK}:{free_port()}"))
        status, _ = http_post(base + "/-/reload")
        assert status == 200  # still served on the old address
        restart = [e for e in log_events(proc) if e.get("event") == "config change needs a restart"]
        assert [e["setting"] for e in restart] == ["exporter.listen"]
        assert restart[0]["level"] == "warning"
        assert value(metrics(base), "whoasr_exporter_config_last_reload_successful") == 1.0
    finally:
        proc.stop()


def _runs_of(proc: ManagedProcess, target: str) -> int:
    """Probe runs of the target that finished, from the debug log."""
    return sum(1 for e in log_events(proc) if e.get("target") == target and e.get("event") in ("probe done",
                                                                                                "probe failed"))


def test_basic_auth_users_follow_a_reload(tmp_path, simulator):
    import base64

    import bcrypt

    port = free_port()
    target = f'  - {{name: keep, url: "{simulator}", probes: []}}'
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    config = tmp_path / "config.yaml"
    config.write_text(config_text(port, target))
    proc, base = start_exporter(tmp_path, config)
    try:
        wait_ready(base)
        assert http_get(base + "/metrics")[0] == 200
        config.write_text(config_text(port, target).replace(
            "  shutdown_grace: 1s\n", f'  shutdown_grace: 1s\n  web: {{basic_auth_users: {{ops: "{hashed}"}}}}\n'))
        assert http_post(base + "/-/reload")[0] == 200
        assert http_get(base + "/metrics")[0] == 401
        auth = {"Authorization": "Basic " + base64.b64encode(b"ops:secret").decode()}
        assert http_get(base + "/metrics", headers=auth)[0] == 200
    finally:
        proc.stop()


def _group_alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


def _open_websockets(simulator: str) -> int:
    return sim_stats(simulator)["open_websockets"]


@pytest.mark.parametrize("grace,finishes", [("1s", False), ("15s", True)], ids=["cancelled-at-grace", "finishes"])
def test_sigterm_during_a_streaming_probe(tmp_path, simulator, grace, finishes):
    """The stream probe streams its ~5 s clip in real time; SIGTERM arrives about 1 s into it."""
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(config_text(port, f'  - {{name: voice, url: "{simulator}", probes: [stream]}}',
                                  extra="  stream: {interval: 20s, timeout: 15s}\n")
                      .replace("shutdown_grace: 1s", f"shutdown_grace: {grace}"))
    proc, base = start_exporter(tmp_path, config)
    try:
        wait_ready(base)
        wait_until(lambda: _open_websockets(simulator) == 1, timeout=20, what="a streaming session in progress")
        time.sleep(1.0)
        sent = time.monotonic()
        proc.signal(signal.SIGTERM)
        code = proc.proc.wait(timeout=25)
        took = time.monotonic() - sent
        assert code == 0, proc.output()
        assert not _group_alive(proc.pid)  # no child left behind
        assert not _port_open(port)
        wait_until(lambda: _open_websockets(simulator) == 0, timeout=5, what="the WebSocket closed")
        events = [e.get("event") for e in log_events(proc)]
        assert events[-1] == "stopped"
        done = [e for e in log_events(proc) if e.get("probe") == "stream" and e.get("event") == "probe done"]
        if finishes:
            assert "runs cancelled at shutdown" not in events
            assert done and done[-1]["success"] is True  # the session ran to its end, then the exit
            assert 2.0 < took < 8.0
        else:
            assert "runs cancelled at shutdown" in events
            assert not done
            assert took < 1.0 + 2.5  # the grace, plus interpreter shutdown
    finally:
        proc.stop()
