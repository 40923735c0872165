"""Every wait within the run's deadline: the /health gate is waited for at most half the run's own timeout;
a run that could not start in that time is skipped and counted, and a target whose /health hangs does
not hold its probes for longer than their timeouts."""

from __future__ import annotations

import asyncio

import pytest

from exporter.client import new_session
from exporter.config import parse_config
from exporter.daemon import Daemon
from exporter.gate import GateBusy, TargetGate
from tests.metrics_text import value
from tests.support import sim_fault, sim_reset, start_simulator

pytestmark = pytest.mark.timeout(60)


async def test_an_exclusive_wait_gives_up_and_lets_probes_go_on():
    gate = TargetGate()
    async with gate.shared():
        with pytest.raises(GateBusy):
            async with gate.exclusive(wait=0.1):
                pass
        # the abandoned wait no longer holds new probes back
        async with gate.shared(wait=0.1):
            pass


async def test_a_shared_wait_gives_up_while_health_holds_the_gate():
    gate = TargetGate()
    async with gate.exclusive():
        with pytest.raises(GateBusy):
            async with gate.shared(wait=0.1):
                pass
    async with gate.shared(wait=0.1):  # and the gate works afterwards
        pass


@pytest.fixture(scope="module")
def sim_url(tmp_path_factory):
    proc, url = start_simulator(tmp_path_factory.mktemp("gate"), "v2", health_delay=0.01)
    try:
        yield url
    finally:
        proc.stop()


async def test_a_probe_behind_a_hanging_health_scrape_is_skipped_within_its_timeout(sim_url):
    config = parse_config({"targets": [{"name": "t", "url": sim_url, "probes": ["vad"]}]})
    daemon = Daemon(config)  # not started: runs are called directly
    daemon.session = new_session()
    daemon.apply(config)
    try:
        sim_fault(sim_url, "health", hang=True)
        health = asyncio.create_task(daemon.run_job("t", "health", 5.0))
        await asyncio.sleep(0.2)  # the scrape holds the gate, waiting on /health
        await asyncio.wait_for(daemon.run_job("t", "vad", 0.5), 10)
        assert not health.done()  # the probe gave up on its own timeout, not when /health ended
        text = daemon.exposition.render().decode()
        assert value(text, "whoasr_probe_skipped_total", target="t", probe="vad") == 1.0
        assert value(text, "whoasr_probe_runs_total", target="t", probe="vad") is None  # skipped is no run
        assert daemon.history.latest("t", "vad") is None
        await asyncio.wait_for(health, 10)
        assert value(daemon.exposition.render().decode(), "whoasr_up", target="t") == 0.0  # a timeout
        # with /health answering again, the probe runs as usual
        sim_reset(sim_url)
        result = await daemon.runner.run(daemon.clients["t"], "vad", 10.0)
        assert result.success and not result.skipped
    finally:
        sim_reset(sim_url)
        await daemon.session.close()


async def test_a_run_left_too_little_time_by_the_gate_is_skipped_not_failed(sim_url):
    """The gate opens 0.8 s into a 1 s /health run: starting then would leave 0.2 s for an answer that
    takes 0.3 s, a timeout that is the wait's, not the target's (a false whoasr_up 0 and, kept up, a false
    WhoasrTargetDown). A run waits at most half its timeout: this one is skipped, whoasr_up keeps its
    verdict; after a shorter wait the scrape runs with what is left and passes."""
    config = parse_config({"targets": [{"name": "t", "url": sim_url, "probes": ["vad"]}]})
    daemon = Daemon(config)  # not started: runs are called directly
    daemon.session = new_session()
    daemon.apply(config)
    loop = asyncio.get_running_loop()

    def metric(name, **labels):
        return value(daemon.exposition.render().decode(), name, target="t", **labels)

    try:
        sim_fault(sim_url, "health", latency=0.3)
        await daemon.run_job("t", "health", 5.0)
        assert metric("whoasr_up") == 1.0

        sim_fault(sim_url, "vad", latency=0.8)
        probe = asyncio.create_task(daemon.run_job("t", "vad", 5.0))
        await asyncio.sleep(0.05)  # the probe holds the gate for 0.8 s
        started = loop.time()
        await asyncio.wait_for(daemon.run_job("t", "health", 1.0), 10)
        assert 0.4 <= loop.time() - started < 0.75  # gave up after half its timeout, before the gate opened
        assert metric("whoasr_scrape_skipped_total", endpoint="health") == 1.0
        assert metric("whoasr_up") == 1.0
        assert metric("whoasr_scrape_errors_total", endpoint="health", reason="timeout") is None
        await asyncio.wait_for(probe, 10)

        sim_fault(sim_url, "vad", latency=0.2)
        probe = asyncio.create_task(daemon.run_job("t", "vad", 5.0))
        await asyncio.sleep(0.05)
        await asyncio.wait_for(daemon.run_job("t", "health", 1.0), 10)  # ~0.15 s wait, 0.85 s for 0.3 s
        assert metric("whoasr_scrape_skipped_total", endpoint="health") == 1.0
        assert metric("whoasr_up") == 1.0
        assert metric("whoasr_scrape_errors_total", endpoint="health", reason="timeout") is None
        await asyncio.wait_for(probe, 10)
    finally:
        sim_reset(sim_url)
        await daemon.session.close()


async def test_a_health_scrape_waits_out_a_long_probe_while_it_keeps_2s(sim_url):
    """A /health waits for the probes in flight until 2 s before its deadline (whoAsr answers it in
    ~1 s): behind a probe that holds the gate for 3.5 s, a 6 s scrape still runs and answers. Waiting only
    half its timeout, it was skipped, and Prometheus scraping /probe every 10 s at a fixed phase behind a
    6 s stream session never got a /health verdict at all."""
    config = parse_config({"targets": [{"name": "t", "url": sim_url, "probes": ["vad"]}]})
    daemon = Daemon(config)  # not started: runs are called directly
    daemon.session = new_session()
    daemon.apply(config)
    loop = asyncio.get_running_loop()
    try:
        sim_fault(sim_url, "vad", latency=3.5)
        probe = asyncio.create_task(daemon.runner.run(daemon.clients["t"], "vad", 10.0))
        await asyncio.sleep(0.05)  # the probe holds the gate
        started = loop.time()
        health = await asyncio.wait_for(daemon.runner.run(daemon.clients["t"], "health", 6.0), 15)
        assert not health.skipped and health.success, (health.reason, health.detail)
        assert loop.time() - started >= 3.3  # it did wait for the probe: never alongside it
        assert (await asyncio.wait_for(probe, 10)).success

        # A probe in flight for longer than that: skipped 2 s before the deadline, no verdict.
        sim_fault(sim_url, "vad", latency=5.0)
        probe = asyncio.create_task(daemon.runner.run(daemon.clients["t"], "vad", 10.0))
        await asyncio.sleep(0.05)
        started = loop.time()
        health = await asyncio.wait_for(daemon.runner.run(daemon.clients["t"], "health", 6.0), 15)
        assert health.skipped and loop.time() - started >= 3.9
        await asyncio.wait_for(probe, 10)
    finally:
        sim_reset(sim_url)
        await daemon.session.close()
