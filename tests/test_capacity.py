"""`whoasr-exporter capacity` against `simulate --stream-capacity N` processes: the knee the simulator was
built with is found and the lag grows past it; Ctrl-C stops every session and prints what was measured;
non-loopback targets are refused before any connection; unreachable and unready targets exit 2. Plus the
pure parts: levels, percentiles, the SLO verdict, and the simulator's shared compute budget."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import time
from collections import Counter

import pytest
import soundfile

from exporter import capacity_cli, cli
from exporter.capacity import MAX_SAMPLES, Level, Outcome, Plan, Samples, Slo, levels
from exporter.clips import builtin_clip
from exporter.results import ProbeResult, StreamTimings
from exporter.simulator.compute import SharedCompute
from tests.support import exporter_cmd, free_port, sim_stats, start_simulator, wait_until

pytestmark = pytest.mark.timeout(150)

CAPACITY = 4  # the knee the test simulator is built with
SLO = Slo(result_lag_seconds=1.0, first_result_seconds=2.0)


@pytest.fixture(scope="module")
def saturable(tmp_path_factory):
    """A v2 simulator that keeps up with CAPACITY real-time streams."""
    proc, url = start_simulator(tmp_path_factory.mktemp("capacity"), "v2", "--stream-capacity", str(CAPACITY),
                                name="saturable")
    try:
        yield url
    finally:
        proc.stop()


def capacity(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(exporter_cmd("capacity", *args), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------- against a saturable simulator

def test_finds_the_knee_the_simulator_was_built_with_and_lag_grows_past_it(saturable):
    before = sim_stats(saturable)["requests"]["stream"]
    run = capacity("--target", saturable, "--max-streams", "8", "--step", "2", "--hold", "6s", "--format", "json")
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)  # stdout is the JSON document alone
    by_streams = {level["streams"]: level for level in document["levels"]}
    assert document["max_streams_within_slo"] == CAPACITY, run.stdout
    assert document["limited_by"] == "result_lag", run.stdout
    assert list(by_streams)[:3] == [2, 4, 6]
    for streams in (2, 4):
        level = by_streams[streams]
        assert level["within_slo"] and level["errors"] == {} and level["cer"] == 0.0, level
        assert level["prober_lateness_seconds"]["max"] is not None
    # Sessions restart back to back: 6 s of hold with a 5.2 s clip is two sessions per lane.
    assert by_streams[2]["sessions"] >= 2 * 2 - 1
    past = by_streams[6]
    assert not past["within_slo"] and "result_lag" in past["broken"]
    assert past["result_lag_seconds"]["max"] > by_streams[4]["result_lag_seconds"]["max"] + 0.5
    if 8 in by_streams:  # not stopped early at 6: the lag keeps growing with the load
        assert by_streams[8]["result_lag_seconds"]["max"] > past["result_lag_seconds"]["max"]
    total = sum(level["sessions"] for level in document["levels"])
    stats = sim_stats(saturable)
    assert stats["requests"]["stream"] - before == total  # one WebSocket per session, none left behind
    assert stats["open_websockets"] == 0
    assert "level 1/4 done" in run.stderr and "within the SLO" in run.stderr


def test_table_names_the_answer(saturable):
    run = capacity("--target", saturable, "--max-streams", "2", "--step", "2", "--hold", "1s")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"whoAsr capacity of {saturable}: clip 'default'")
    assert lines[2].split() == ["STREAMS", "SESSIONS", "ERRORS", "FIRST", "p50", "FIRST", "p95", "LAG", "p50",
                                "LAG", "p95", "LAG", "max", "CER", "SLO"]
    row = lines[3].split()
    assert row[0] == "2" and row[2] == "0" and row[-1] == "ok"
    assert "max streams within SLO: 2 (no limit reached: raise --max-streams to find the knee)" in run.stdout


def test_a_short_clip_of_ones_own(saturable, tmp_path):
    """--clip/--transcript: 2.5 s of the built-in clip (the simulator hears its transcript in any speech)."""
    clip = builtin_clip()
    short = tmp_path / "short.wav"
    soundfile.write(short, clip.samples[: 40000], 16000)
    run = capacity("--target", saturable, "--max-streams", "2", "--step", "2", "--hold", "1s", "--format", "json",
                   "--clip", str(short), "--transcript", clip.transcript)
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    assert document["clip"] == {"name": "short.wav", "seconds": 2.5}
    (level,) = document["levels"]
    assert level["sessions"] == 2 and level["errors"] == {} and level["cer"] == 0.0 and level["within_slo"]


def test_ctrl_c_stops_every_session_and_prints_what_was_measured(saturable, tmp_path):
    out, err = tmp_path / "out.json", tmp_path / "err.log"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(exporter_cmd("capacity", "--target", saturable, "--max-streams", "3", "--step", "1",
                                             "--hold", "1s", "--format", "json"),
                                stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_until(lambda: "level 1/3 done" in err.read_text(), timeout=30, what="level 1 done")
            wait_until(lambda: sim_stats(saturable)["open_websockets"] >= 2, timeout=10, what="level 2 running")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=15) == 130
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    document = json.loads(out.read_text())
    assert document["interrupted"] is True
    first, second = document["levels"]
    assert first["streams"] == 1 and first["sessions"] >= 1 and not first["interrupted"]
    assert second["streams"] == 2 and second["interrupted"]
    assert document["max_streams_within_slo"] == 1 and document["limited_by"] is None
    assert "interrupted" in err.read_text()
    # Every session closed its socket: nothing stays open on the server.
    wait_until(lambda: sim_stats(saturable)["open_websockets"] == 0, timeout=5, what="sockets closed")


def test_unloaded_streaming_model_exits_2_without_loading_it(tmp_path):
    proc, url = start_simulator(tmp_path, "v2", "--unloaded", "streaming_asr", name="unloaded")
    try:
        run = capacity("--target", url, "--max-streams", "2", "--hold", "1s")
        stats = sim_stats(url)
    finally:
        proc.stop()
    assert run.returncode == 2 and "streaming_asr model is not loaded" in run.stderr, run.stderr
    assert run.stdout == ""
    assert stats["requests"]["stream"] == 0 and stats["model_requests"]["streaming_asr"] == 0


def test_unreachable_target_exits_2():
    run = capacity("--target", f"http://127.0.0.1:{free_port()}", "--max-streams", "2", "--hold", "1s")
    assert run.returncode == 2 and "target unreachable: connect_error" in run.stderr, run.stderr


@pytest.mark.parametrize("args, message", [
    (("--step", "8", "--max-streams", "4"), "--step 8 is above --max-streams 4"),
    (("--clip", "x.wav"), "--clip and --transcript go together"),
    (("--hold", "soon"), "expected a duration"),
    (("--max-streams", "0"), "expected 1 to 1000"),
    (("--clip", "/nonexistent.wav", "--transcript", "x"), "cannot read /nonexistent.wav"),
])
def test_bad_arguments_exit_2(args, message):
    run = capacity("--target", f"http://127.0.0.1:{free_port()}", *args)
    assert run.returncode == 2 and message in run.stderr, run.stderr


# ---------------------------------------------------------------- the loopback guard

@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to resolve or connect fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a connection was attempted: {args!r}")

    monkeypatch.setattr(capacity_cli, "new_session", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(asyncio.BaseEventLoop, "create_connection", refuse)


@pytest.mark.parametrize("target", ["http://192.0.2.10:8000", "https://whoasr.example.com",
                                    "http://[2001:db8::1]:8000", "http://127.0.0.1.nip.io:8000"])
def test_non_loopback_target_is_refused_before_any_connection(no_network, capsys, target):
    assert cli.main(["capacity", "--target", target, "--hold", "1s"]) == 2
    err = capsys.readouterr().err
    assert "is not on a loopback address" in err and "--yes" in err


def test_named_target_is_judged_by_its_url(no_network, capsys, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("targets:\n  - {name: prod, url: 'http://10.1.2.3:8000'}\n")
    assert cli.main(["capacity", "--target", "prod", "--config", str(config)]) == 2
    assert "http://10.1.2.3:8000 is not on a loopback address" in capsys.readouterr().err


@pytest.mark.parametrize("url, loopback", [
    ("http://127.0.0.1:8000", True), ("http://127.3.4.5", True), ("http://[::1]:8000", True),
    ("http://localhost:8000", True), ("http://LOCALHOST", True), ("http://api.localhost", True),
    ("http://10.0.0.1", False), ("http://0.0.0.0:8000", False), ("http://localhost.example.com", False),
    ("http://[::ffff:10.0.0.1]", False),
])
def test_is_loopback_reads_the_url_alone(url, loopback):
    assert capacity_cli.is_loopback(url) is loopback


# ---------------------------------------------------------------- levels, statistics, verdict

def test_levels_step_up_to_the_maximum():
    assert levels(4, 16) == (4, 8, 12, 16)
    assert levels(4, 10) == (4, 8, 10)
    assert levels(1, 1) == (1,)


def test_samples_percentiles_and_a_bounded_reservoir():
    samples = Samples()
    for value in range(1, 101):
        samples.add(float(value))
    assert (samples.percentile(50), samples.percentile(95), samples.largest) == (50.0, 95.0, 100.0)
    assert Samples().percentile(95) is None
    many = Samples()
    for value in range(MAX_SAMPLES * 2):
        many.add(float(value))
    assert len(many.values) == MAX_SAMPLES and many.seen == MAX_SAMPLES * 2 and many.largest == MAX_SAMPLES * 2 - 1
    assert max(many.values) > MAX_SAMPLES  # later values replaced earlier ones


def session(lags=(0.1,), first=0.7, reason=None, errors=0, reference=10) -> ProbeResult:
    result = ProbeResult(target="t", probe="stream", success=reason is None, started_at=0.0, duration_seconds=1.0,
                         reason=reason, character_errors=errors, reference_characters=reference)
    result.stream = StreamTimings(first_result_seconds=first, result_lags=list(lags))
    return result


def level_of(streams: int, *results: ProbeResult, interrupted: bool = False) -> Level:
    level = Level(streams, interrupted=interrupted)
    for result in results:
        level.add(result)
    return level


def test_level_statistics_and_the_limits_it_broke():
    level = level_of(2, session(lags=(0.1, 0.2), errors=1), session(lags=(1.5,), reason="timeout", reference=0))
    assert level.sessions == 2 and level.errors == Counter({"timeout": 1})
    assert level.cer == 0.1 and level.result_lag.largest == 1.5
    assert level.broken(SLO) == ["errors", "result_lag"]
    assert level_of(1, session(first=2.5)).broken(SLO) == ["first_result"]
    assert level_of(1, session()).broken(SLO) == []
    assert level_of(1).broken(SLO) == ["errors", "result_lag", "first_result"]  # nothing measured is no pass


def test_clearly_past_the_knee():
    assert not level_of(1, session(lags=(1.9,))).clearly_past(SLO)
    assert level_of(1, session(lags=(2.1,))).clearly_past(SLO)
    assert level_of(1, session(first=4.5)).clearly_past(SLO)
    assert level_of(3, session(reason="timeout"), session(reason="closed_early"), session()).clearly_past(SLO)


def test_verdict_is_the_last_level_before_the_first_broken_one():
    plan = Plan(levels=(2, 4, 6, 8), hold_seconds=1, session_timeout=30, slo=SLO)
    ok, slow, fine_again = level_of(2, session()), level_of(4, session(lags=(1.2,))), level_of(6, session())
    verdict = Outcome(plan, [ok, slow, fine_again]).verdict()
    assert (verdict.max_streams_within_slo, verdict.limited_by, verdict.broken_at) == (2, "result_lag", 4)
    assert Outcome(plan, [ok, fine_again]).verdict().limited_by is None
    assert Outcome(plan, [level_of(2, session(reason="timeout"))]).verdict().max_streams_within_slo == 0
    # An interrupted level proves nothing unless it already broke a limit.
    assert Outcome(plan, [ok, level_of(4, interrupted=True)]).verdict().max_streams_within_slo == 2
    assert Outcome(plan, [ok, level_of(4, session(), interrupted=True)]).verdict().max_streams_within_slo == 2
    cut = Outcome(plan, [ok, level_of(4, session(reason="timeout"), interrupted=True)]).verdict()
    assert (cut.max_streams_within_slo, cut.limited_by) == (2, "errors")


# ---------------------------------------------------------------- the simulator's shared budget

async def test_shared_compute_shares_its_budget_between_calls_in_progress():
    compute = SharedCompute(1)
    loop = asyncio.get_running_loop()
    began = loop.time()
    finished: dict[str, float] = {}

    async def call(name: str, work: float) -> None:
        await compute.run(work)
        finished[name] = loop.time() - began

    # Processor sharing: both advance at half speed until the short one is done at 2 x 0.05 s; the long
    # one has then had 0.05 of its 0.15 and finishes alone 0.1 s later. (Lower bounds: a busy machine
    # can only be later.)
    await asyncio.gather(call("short", 0.05), call("long", 0.15))
    assert list(finished) == ["short", "long"]
    assert finished["short"] >= 0.1 - 0.002 and finished["long"] >= 0.2 - 0.002
    assert compute.busiest == 2 and compute.in_progress == 0
    # A cancelled call gives its share back: the other finishes without waiting for it.
    other = asyncio.create_task(compute.run(10.0))
    await asyncio.sleep(0.01)
    began = loop.time()
    other.cancel()
    await compute.run(0.01)
    assert loop.time() - began < 5.0 and compute.in_progress == 0
    assert SharedCompute(4).stride_work(9600, 9600) == pytest.approx(0.6 / 4.5)


def test_stream_capacity_must_be_positive():
    run = subprocess.run(exporter_cmd("simulate", "--api", "v2", "--port", str(free_port()), "--stream-capacity",
                                      "0"), capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert run.returncode == 2 and "--stream-capacity: must be > 0" in run.stderr


def test_saturated_simulator_cannot_answer_faster_than_its_budget(saturable):
    """Work conservation, a lower bound: 2 x CAPACITY sessions of 8 2/3 strides each need 2 x 4 x 8.67 x
    0.6 / 4.5 = 9.2 s of the budget, so the last session cannot end before that, well after its 5.2 s of audio."""
    began = time.monotonic()
    run = capacity("--target", saturable, "--max-streams", str(2 * CAPACITY), "--step", str(2 * CAPACITY),
                   "--hold", "1s", "--format", "json")
    elapsed = time.monotonic() - began
    assert run.returncode == 0, run.stderr
    (level,) = json.loads(run.stdout)["levels"]
    assert level["sessions"] == 2 * CAPACITY and level["errors"] == {}
    assert elapsed >= 2 * CAPACITY * (83200 / 9600) * 0.6 / (CAPACITY + 0.5)
    assert level["result_lag_seconds"]["max"] > 1.0  # the final results came from a growing backlog
