"""The status page of a real exporter process probing real simulators: one healthy target, one whose VAD
answers 500 and whose punctuation model is not loaded, one that refuses connections. Its HTML is parsed
(states, sparklines, failure links that open the kept run with its trace, no script, nothing external),
and it is opened in headless Chromium, whose DOM and screenshot must show the same.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.metrics_text import value
from tests.support import LOOPBACK, Stack, free_port, http_get, sim_fault, sim_model, wait_until

HISTORY_SIZE = 5
RED, GREEN = (0xC6, 0x28, 0x28), (0x2E, 0x7D, 0x32)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("status"))
    try:
        healthy = stack.simulator("healthy", "v2")
        broken = stack.simulator("broken", "v2")
        sim_fault(broken, "vad", status=500)
        sim_model(broken, "punctuation", loaded=False)
        port = free_port()
        stack.serve(f"""
exporter: {{listen: "{LOOPBACK}:{port}", history_size: {HISTORY_SIZE}, history_failures_size: 50}}
targets:
  - {{name: healthy, url: "{healthy}", probes: [batch, vad, punctuation]}}
  - {{name: broken, url: "{broken}", probes: [batch, vad, punctuation]}}
  - {{name: refused, url: "http://{LOOPBACK}:{free_port()}", probes: [batch]}}
schedules:
  health: {{interval: 2s, timeout: 1s}}
  model_info: {{interval: 500ms, timeout: 500ms}}
  batch: {{interval: 700ms, timeout: 700ms}}
  vad: {{interval: 700ms, timeout: 700ms}}
  punctuation: {{interval: 700ms, timeout: 700ms}}
""", port)

        def enough_runs():
            text = stack.metrics()
            counts = [value(text, "whoasr_probe_runs_total", target=t, probe=p) or 0 for t, p in
                      (("healthy", "batch"), ("healthy", "vad"), ("broken", "vad"), ("broken", "punctuation"))]
            return min(counts) >= HISTORY_SIZE + 1

        wait_until(enough_runs, timeout=40, interval=0.3, what=f"{HISTORY_SIZE + 1} runs of each probe")
        yield stack
    finally:
        stack.stop()


def api(stack: Stack, **query) -> list[dict]:
    from urllib.parse import urlencode

    return json.loads(http_get(f"{stack.base}/api/history?{urlencode(query)}", timeout=5)[1])


class Page(HTMLParser):
    """The parts of the page the tests read: rows, probe cells, sparklines, links, and every tag."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.rows: list[dict] = []  # {target, state, models_missing, cells: {probe: {...}}}
        self.failure_links: list[str] = []
        self._cell: dict | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        classes = attrs.get("class", "").split()
        if tag == "tr" and "target" in classes:
            self.rows.append({"target": attrs["data-target"], "state": attrs["data-state"], "cells": {},
                              "models_missing": None})
        elif tag == "td" and "models" in classes and self.rows:
            self.rows[-1]["models_missing"] = attrs.get("data-missing")
        elif tag == "td" and "probe" in classes and "data-probe" in attrs:
            self._cell = {"state": attrs["data-state"], "points": 0, "failed": 0, "reasons": []}
            self.rows[-1]["cells"][attrs["data-probe"]] = self._cell
        elif tag == "polyline" and self._cell is not None:
            self._cell["points"] = len(attrs["points"].split())
        elif tag == "circle" and "fail" in classes and self._cell is not None:
            self._cell["failed"] += 1
        elif tag == "a" and "reason" in classes:
            (self._cell["reasons"] if self._cell is not None else self.failure_links).append(attrs["href"])

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None


def test_states_sparklines_models_and_problems_first(stack):
    page = Page(http_get(stack.base + "/", timeout=5)[1].decode())
    order = [row["target"] for row in page.rows]
    assert order == ["refused", "broken", "healthy"]  # down, then failing probes, then all well
    rows = {row["target"]: row for row in page.rows}
    assert rows["refused"]["state"] == "down" and rows["broken"]["state"] == "up"
    assert rows["healthy"]["models_missing"] == ""
    assert rows["broken"]["models_missing"] == "punctuation"

    healthy = rows["healthy"]["cells"]
    for probe in ("batch", "vad"):
        assert healthy[probe]["state"] == "ok"
        assert healthy[probe]["points"] == HISTORY_SIZE and healthy[probe]["failed"] == 0
        assert healthy[probe]["reasons"] == []
    broken = rows["broken"]["cells"]
    assert broken["batch"]["state"] == "ok"
    for probe in ("vad", "punctuation"):
        assert broken[probe]["state"] == "failing"
        # every one of the last HISTORY_SIZE runs failed: each point is marked
        assert broken[probe]["points"] == HISTORY_SIZE and broken[probe]["failed"] == HISTORY_SIZE
        assert len(broken[probe]["reasons"]) == 1
    assert rows["refused"]["cells"]["batch"]["state"] == "failing"


def test_a_failure_links_to_its_kept_run_with_the_trace(stack):
    page = Page(http_get(stack.base + "/", timeout=5)[1].decode())
    cells = {row["target"]: row["cells"] for row in page.rows}
    for probe, reason, request in (("vad", "http_5xx", "POST /vad/detect"),
                                   ("punctuation", "model_not_loaded", "model_check")):
        (link,) = cells["broken"][probe]["reasons"]
        assert link.startswith("/api/history?id=")  # that very run, not whatever failed last by now
        run = json.loads(http_get(stack.base + link, timeout=5)[1])
        assert run["target"] == "broken" and run["probe"] == probe and run["reason"] == reason
        assert run["id"] == int(link.rsplit("=", 1)[1])
        assert run["success"] is False
        assert any(request in line for line in run["trace"]) or run["step"] == request, run
    # Recent failures: the newest kept failures of every target, each linking to its run
    assert page.failure_links
    ids = [int(link.rsplit("=", 1)[1]) for link in page.failure_links]
    assert ids == sorted(ids, reverse=True)  # newest first
    for link in page.failure_links[:3]:
        run = json.loads(http_get(stack.base + link, timeout=5)[1])
        assert run["success"] is False and run["trace"]


def test_history_api_filters_failed_runs_and_adds_traces_only_when_asked(stack):
    runs = api(stack, target="broken", failed="true")
    assert runs and all(not run["success"] for run in runs) and all("trace" not in run for run in runs)
    assert {run["probe"] for run in runs} == {"vad", "punctuation"}
    traced = api(stack, target="broken", trace="true", limit=5)
    assert all("trace" in run for run in traced)
    assert all(run["trace"] for run in traced if not run["success"])  # the history keeps failures' traces only


def test_page_is_self_contained(stack):
    text = http_get(stack.base + "/", timeout=5)[1].decode()
    page = Page(text)
    assert not [tag for tag, _ in page.tags if tag in ("script", "iframe", "object", "embed", "img", "link")]
    for tag, attrs in page.tags:
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)  # no inline handlers either
        for key in ("href", "src"):
            value = attrs.get(key) or ""
            assert not value.startswith(("http:", "https:", "//")), (tag, attrs)
    assert "javascript:" not in text and "url(" not in text


def need_chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    message = "chromium not installed (Debian package chromium; .ci/run installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def chromium(tmp_path: Path, *args: str, name: str) -> str:
    """Runs headless Chromium to completion within 90 s in its own process group (killed by pid when it
    does not finish); its stdout."""
    command = [need_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / ('profile-' + name)}", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"chromium {name} did not finish within 90 s: {err.decode(errors='replace')[-2000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # helpers it left behind, if any
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode(errors="replace")


def test_page_in_headless_chromium(stack, tmp_path):
    from PIL import Image

    url = stack.base + "/"
    dom = chromium(tmp_path, "--dump-dom", url, name="dom")
    served = Page(http_get(url, timeout=5)[1].decode())
    parsed = Page(dom)  # the DOM as Chromium built it
    assert [row["target"] for row in parsed.rows] == [row["target"] for row in served.rows]
    assert sum(1 for tag, _ in parsed.tags if tag == "svg") >= 6
    assert {t: r["cells"]["vad"]["failed"] for t, r in ((r["target"], r) for r in parsed.rows)
            if "vad" in r["cells"]} == {"healthy": 0, "broken": HISTORY_SIZE}

    shot = tmp_path / "status.png"
    chromium(tmp_path, "--window-size=1280,900", "--hide-scrollbars", f"--screenshot={shot}", url, name="shot")
    assert shot.is_file()
    image = Image.open(shot).convert("RGB")
    assert image.size == (1280, 900)
    colours = {colour for _, colour in image.getcolors(maxcolors=1 << 20)}
    assert RED in colours and GREEN in colours  # failing and passing states drawn in their colours


def test_every_probe_can_be_run_now_with_a_debug_log(stack):
    page = Page(http_get(stack.base + "/", timeout=5)[1].decode())
    runs = [attrs["href"] for tag, attrs in page.tags if tag == "a" and "run" in attrs.get("class", "").split()]
    assert len(runs) == sum(len(row["cells"]) for row in page.rows) == 7
    status, body, _ = http_get(stack.base + next(r for r in runs if "target=broken&module=vad" in r), timeout=10)
    assert status == 200 and "http_5xx" in body.decode()
    assert http_get(stack.base + "/runbook", timeout=5)[0] == 200  # the nav's runbook link
