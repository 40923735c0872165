"""/probe?module=health of one target, asked by several scrapes at once, on a real exporter and simulator:
whoAsr's /health blocks the server for a second, so the exporter calls it once for a whole batch of
waiting requests instead of once per request in a row; and the daemon runs on uvloop."""

from __future__ import annotations

import json
import re
import threading
import urllib.parse

import pytest

from tests.support import (LOOPBACK, free_port, http_get, serve_exporter, sim_stats, start_simulator, wait_ready)

pytestmark = pytest.mark.timeout(90)
REQUESTS = 6


def test_concurrent_health_probes_of_one_target_share_the_next_run(tmp_path):
    simulator, url = start_simulator(tmp_path, "v2", health_delay=1.5)
    port = free_port()
    config = tmp_path / "config.yaml"
    # A raw URL target: no scheduled /health of its own competes with the measured ones.
    config.write_text(json.dumps({"exporter": {"listen": f"{LOOPBACK}:{port}", "log_format": "json",
                                               "allowed_targets": [re.escape(url)], "max_concurrent_probes": 16}}))
    exporter = serve_exporter(config, tmp_path / "exporter.log")
    base = f"http://{LOOPBACK}:{port}"
    try:
        wait_ready(base)
        before = sim_stats(url)["requests"].get("health", 0)
        probe = f"{base}/probe?" + urllib.parse.urlencode({"target": url, "module": "health"})
        answers: list[tuple[int, str]] = []
        start = threading.Barrier(REQUESTS)

        def ask() -> None:
            start.wait(timeout=10)
            status, body, _ = http_get(probe, timeout=30, headers={"X-Prometheus-Scrape-Timeout-Seconds": "20"})
            answers.append((status, body.decode()))

        threads = [threading.Thread(target=ask) for _ in range(REQUESTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert len(answers) == REQUESTS
        for status, body in answers:
            assert status == 200 and "whoasr_probe_success 1.0" in body, body
        calls = sim_stats(url)["requests"].get("health", 0) - before
        # One run for the first request, one shared by the five that arrived meanwhile (a third only if the
        # machine delayed a request by more than a whole run); one after another would be six.
        assert 2 <= calls <= 3, calls
        listening = [json.loads(line) for line in exporter.output().splitlines()
                     if line.startswith("{") and '"exporter listening"' in line]
        assert listening and listening[0]["event_loop"] == "uvloop"
    finally:
        exporter.stop()
        simulator.stop()
