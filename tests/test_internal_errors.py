"""A bug of the exporter must not freeze a signal: an exception injected into each stage of a scheduled
run (scrape, probe, the runner around it, each sink, the scheduler's task) still ends the run in a
recorded failed result, is counted in whoasr_exporter_internal_errors_total{stage} and logged once with
its traceback. The target is a real simulator process; the daemon runs in this process so that the
exceptions can be injected."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

import exporter.clips
import exporter.metrics
import exporter.scrape
from exporter.client import new_session
from exporter.config import parse_config
from exporter.daemon import Daemon
from exporter.history import History
from exporter.internal_errors import InternalErrors
from exporter.probes import vad as vad_probe
from exporter.scheduler import Plan, Scheduler
from tests.metrics_text import value
from tests.support import start_simulator

pytestmark = pytest.mark.timeout(60)


class Injected(RuntimeError):
    """The bug under test."""


def boom(*args, **kwargs):
    raise Injected("injected bug")


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory):
    proc, url = start_simulator(tmp_path_factory.mktemp("sim"), "v2", health_delay=0.01)
    try:
        yield url
    finally:
        proc.stop()


@pytest.fixture
async def daemon(sim_url):
    config = parse_config({"targets": [{"name": "t", "url": sim_url, "probes": ["vad"]}]})
    daemon = Daemon(config)  # not started: no scheduler, runs are called directly
    daemon.session = new_session()
    daemon.apply(config)
    try:
        yield daemon
    finally:
        await daemon.session.close()


def metrics(daemon: Daemon) -> str:
    return daemon.exposition.render().decode()


def internal_errors(daemon: Daemon, stage: str) -> float:
    return value(metrics(daemon), "whoasr_exporter_internal_errors_total", stage=stage)


async def test_healthy_runs_count_no_internal_error(daemon):
    await daemon.run_job("t", "health", 5)
    await daemon.run_job("t", "vad", 10)
    text = metrics(daemon)
    assert value(text, "whoasr_up", target="t") == 1.0
    assert value(text, "whoasr_probe_success", target="t", probe="vad") == 1.0
    for stage in ("scrape", "probe", "record", "scheduler"):
        assert value(text, "whoasr_exporter_internal_errors_total", stage=stage) == 0.0


async def test_a_bug_in_the_scrape_is_a_failed_scrape(daemon, monkeypatch):
    await daemon.run_job("t", "health", 5)
    before = value(metrics(daemon), "whoasr_last_scrape_timestamp_seconds", target="t", endpoint="health")
    monkeypatch.setattr(exporter.scrape, "parse_health", boom)
    with capture_logs() as logs:
        await daemon.run_job("t", "health", 5)
    text = metrics(daemon)
    assert value(text, "whoasr_up", target="t") == 0.0
    assert value(text, "whoasr_scrape_errors_total", target="t", endpoint="health", reason="bad_response") == 1.0
    assert value(text, "whoasr_last_scrape_timestamp_seconds", target="t", endpoint="health") > before
    assert value(text, "whoasr_exporter_internal_errors_total", stage="scrape") == 1.0
    errors = [entry for entry in logs if entry["event"] == "internal error"]
    assert len(errors) == 1 and errors[0]["stage"] == "scrape" and errors[0]["target"] == "t"
    assert isinstance(errors[0]["exc_info"], Injected)


async def test_a_bug_in_the_probe_is_a_failed_run(daemon, monkeypatch):
    monkeypatch.setattr(vad_probe, "run", boom)
    await daemon.run_job("t", "vad", 10)
    text = metrics(daemon)
    assert value(text, "whoasr_probe_success", target="t", probe="vad") == 0.0
    assert value(text, "whoasr_probe_failures_total", target="t", probe="vad", reason="bad_response") == 1.0
    assert internal_errors(daemon, "probe") == 1.0
    latest = daemon.history.latest("t", "vad")
    assert latest.reason == "bad_response" and "Injected: injected bug" in latest.detail


async def test_a_bug_around_the_probe_is_a_failed_run(daemon, monkeypatch):
    """Loading the clip happens in the runner, before the probe's own guard."""
    monkeypatch.setattr(exporter.clips, "load_clip", boom)
    await daemon.run_job("t", "vad", 10)
    assert value(metrics(daemon), "whoasr_probe_failures_total", target="t", probe="vad", reason="bad_response") == 1.0
    assert internal_errors(daemon, "probe") == 1.0
    assert daemon.history.latest("t", "vad").step == "internal"


async def test_a_bug_recording_a_scrape_still_moves_up(daemon, monkeypatch):
    """Rendering the state of an answer fails: the scrape is recorded as a bare failure instead."""
    await daemon.run_job("t", "health", 5)
    assert value(metrics(daemon), "whoasr_up", target="t") == 1.0
    real = exporter.metrics.target_state_lines

    def fails_on_an_answer(target, *args, **kwargs):
        if target.health is not None:
            raise Injected("cannot render this answer")
        return real(target, *args, **kwargs)

    monkeypatch.setattr(exporter.metrics, "target_state_lines", fails_on_an_answer)
    await daemon.run_job("t", "health", 5)
    text = metrics(daemon)
    assert value(text, "whoasr_up", target="t") == 0.0
    assert value(text, "whoasr_scrape_errors_total", target="t", endpoint="health", reason="bad_response") == 1.0
    assert value(text, "whoasr_exporter_internal_errors_total", stage="record") == 1.0


async def test_a_bug_in_the_history_sink_keeps_the_other_sinks_and_the_run(daemon, monkeypatch):
    real = History.add

    def fails_on_success(self, result):
        if result.success:
            raise Injected("history bug")
        real(self, result)

    monkeypatch.setattr(History, "add", fails_on_success)
    await daemon.run_job("t", "vad", 10)
    assert value(metrics(daemon), "whoasr_probe_success", target="t", probe="vad") == 1.0  # the state sink ran
    kept = daemon.history.latest("t", "vad")
    assert kept is not None and not kept.success and kept.step == "internal"
    assert internal_errors(daemon, "record") == 1.0


async def test_a_crashed_scheduled_task_is_counted_and_recorded(daemon):
    async def crashing_run(target: str, kind: str, timeout: float) -> None:
        raise Injected("run_job bug")

    scheduler = Scheduler(crashing_run, daemon.state.record_skip, on_error=daemon.run_crashed)
    scheduler.sync({("t", "vad"): Plan(60, 10)})
    with capture_logs() as logs:
        await scheduler._fire("t", "vad")
        await asyncio.wait_for(asyncio.gather(*scheduler.running.values(), return_exceptions=True), 5)
    await asyncio.sleep(0)  # the done callback
    assert scheduler.running == {}
    text = metrics(daemon)
    assert value(text, "whoasr_exporter_internal_errors_total", stage="scheduler") == 1.0
    assert value(text, "whoasr_probe_failures_total", target="t", probe="vad", reason="bad_response") == 1.0
    assert [entry["stage"] for entry in logs if entry["event"] == "internal error"] == ["scheduler"]


def test_a_bug_is_logged_with_its_traceback_once_then_on_one_line():
    errors = InternalErrors()
    with capture_logs() as logs:
        for _ in range(3):
            errors.report("probe", Injected("again"), "t", "vad")
        errors.report("probe", KeyError("other"), "t", "vad")
    assert errors.counts["probe"] == 4
    with_traceback = [entry for entry in logs if "exc_info" in entry]
    assert [type(entry["exc_info"]).__name__ for entry in with_traceback] == ["Injected", "KeyError"]
    assert len(logs) == 4 and all(entry["reason"] == "internal_error" for entry in logs)
