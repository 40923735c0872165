"""The `stream` and `stream_vad` probes against the real simulator process, in both API generations.

Every run must end with the right reason and step, within its own deadline (plus the socket's close),
with its socket closed on both ends and no task of its own left running. Real-time pacing costs real
time, so only the tests about timing use it; the rest send with `pace: fast`.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time

import numpy as np
import pytest

from exporter.clips import SAMPLE_RATE, builtin_clip
from exporter.client import TargetClient, new_session
from exporter.config import TargetConfig
from exporter.kinds import StreamProbe, StreamVadProbe
from exporter.probes import ProbeContext, run_probe, stream, websocket
from exporter.probes.result_lag import ResultLagClock
from exporter.probes.websocket import CLOSE_SECONDS
from exporter.results import ProbeResult, StreamTimings
from support import (LOOPBACK, free_port, sim_delete, sim_fault, sim_model, sim_reset, sim_stats, start_simulator,
                     wait_until)

STRIDE = 9600  # samples the server's model consumes per call (600 ms)
CLIP = builtin_clip()
REFERENCE_CHARS = 11  # 今天天气很好我们去公园


@pytest.fixture(scope="module", params=["v1", "v2"])
def sim(request, tmp_path_factory):
    proc, url = start_simulator(tmp_path_factory.mktemp(f"sim-{request.param}"), request.param)
    request.addfinalizer(proc.stop)
    return url


@pytest.fixture(autouse=True)
def clean_sim(request):
    """Every test starts from a healthy simulator: no faults, every model loaded."""
    if "sim" not in request.fixturenames:
        return
    url = request.getfixturevalue("sim")
    sim_reset(url, models=("streaming_asr", "vad"))
    sim_delete(url, "stats")


def open_websockets(url: str) -> int:
    return sim_stats(url)["open_websockets"]


async def probe(url: str, kind: str = "stream", *, timeout: float = 10.0, clip=CLIP, **settings) -> ProbeResult:
    """One run through run_probe, checking that it ends in bounded time and leaves nothing behind."""
    model = StreamProbe if kind == "stream" else StreamVadProbe
    if kind == "stream":
        settings.setdefault("pace", "fast")
    session = new_session()
    before = asyncio.all_tasks()
    try:
        ctx = ProbeContext(TargetClient(session, TargetConfig(name="sim", url=url)), model(**settings), timeout,
                           clip=clip)
        started = time.monotonic()
        result = await run_probe(kind, ctx)
        elapsed = time.monotonic() - started
        assert asyncio.all_tasks() - before == set(), "the probe left a task behind"
        # A WebSocket's connection is never pooled: none may be in use. (A refused upgrade is a plain HTTP
        # answer, whose connection aiohttp may keep idle in its pool, like any other.)
        assert not session.connector._acquired, "a connection is still in use"
    finally:
        await session.close()
    assert elapsed < timeout + CLOSE_SECONDS + 0.2, f"took {elapsed:.2f}s with a {timeout:g}s deadline"
    assert result.step != "guard", "the probe's own deadline did not fire before the guard's"
    if kind == "stream":
        assert isinstance(result.stream, StreamTimings)
    return result


MID_STREAM = ("audio", "final")  # with pace: fast the whole clip may be sent before the server answers


def expect(result: ProbeResult, reason: str, step: str | tuple[str, ...]) -> None:
    steps = step if isinstance(step, tuple) else (step,)
    assert (result.success, result.reason, result.step in steps) == (False, reason, True), (
        result.step, result.detail, result.trace)


def server_closed(url: str, endpoint: str = "stream", close_code: str = "1000") -> None:
    """The server saw every socket end (it may be busy in a fault's sleep for a while), each with the
    client's close frame (1000), unless the server itself dropped the connection."""
    wait_until(lambda: open_websockets(url) == 0, timeout=5, what="the server to see the socket closed")
    closes = sim_stats(url)["websocket_closes"]
    assert closes.get(endpoint) and set(closes[endpoint]) == {close_code}, closes


def messages_received(url: str, endpoint: str = "stream") -> dict[str, int]:
    return sim_stats(url)["websocket_messages"].get(endpoint, {})


def cut(samples: int, transcript: str = CLIP.transcript):
    return dataclasses.replace(CLIP, samples=CLIP.samples[:samples], transcript=transcript)


# ---------------------------------------------------------------- passing sessions

async def test_happy_path(sim):
    result = await probe(sim)
    assert result.success, (result.reason, result.detail, result.trace)
    assert (result.transcript, result.cer, result.character_errors) == (CLIP.transcript, 0.0, 0)
    assert result.reference_characters == REFERENCE_CHARS
    timings = result.stream
    assert timings.partial_results > 0 and timings.final_received
    assert timings.frames_sent == -(-len(CLIP.samples) // 1600) == 52
    assert timings.connect_seconds > 0 and timings.first_result_seconds >= 0 and timings.final_result_seconds >= 0
    assert timings.max_pacing_error_seconds is None  # not paced
    assert result.audio_seconds == pytest.approx(len(CLIP.samples) / SAMPLE_RATE)
    server_closed(sim)


async def test_latencies_match_the_injected_stride_latency(sim):
    """Paced like a microphone with 100 ms frames: frame k leaves once recorded, at speech start +
    (k+1) * 100 ms, so the server has its first 9,600-sample stride when frame 5 (the 6th) arrives, 0.6 s
    after the start of speech, and answers L later. Full strides complete at frames 5, 11, ..., 47, each
    done L (< 0.6 s) later, so the server is idle when stop_recording follows the last frame (sent at the
    clip's end): it then runs the 83,063 - 8 * 9,600 = 6,263 buffered samples (another L) and sends the
    stop status. Every result, the final one included, lags the speech it was computed from by L."""
    latency = 0.25
    sim_fault(sim, "stream", latency=latency)
    assert len(CLIP.samples) % STRIDE
    result = await probe(sim, pace="realtime", frame_ms=100)
    assert result.success, (result.reason, result.detail, result.trace)
    timings = result.stream
    assert timings.first_result_seconds == pytest.approx(STRIDE / SAMPLE_RATE + latency, abs=0.03), result.trace
    assert timings.final_result_seconds == pytest.approx(latency, abs=0.03), result.trace
    assert timings.final_received and timings.partial_results == 8
    assert len(timings.result_lags) == 9
    assert timings.result_lags == pytest.approx([latency] * 9, abs=0.03), result.trace
    # The session lasted the audio plus L: that much beyond the audio is processing.
    assert result.processing_seconds == pytest.approx(latency, abs=0.03)
    assert timings.max_pacing_error_seconds >= 0  # its size is bench/stream_pacing.py's business, not a test's
    assert result.cer == 0.0


async def test_result_lag_grows_with_a_server_that_falls_behind(sim):
    """A model call of 0.9 s on 600 ms strides: the server falls further behind with every stride. Result
    s leaves at 1.5 + 0.9 s, for audio spoken by 0.6 (s + 1): lags 0.9, 1.2, ... 3.0, then the final
    result of the tail at 8.7 s, 3.5 s after the clip ended. Attributing a result to the newest stride
    sent would have capped every partial lag below one stride, however far behind the server was."""
    latency = 0.9
    sim_fault(sim, "stream", latency=latency)
    result = await probe(sim, pace="realtime", frame_ms=100, timeout=20.0)
    assert result.success, (result.reason, result.detail, result.trace)
    lags = result.stream.result_lags
    expected = [latency + (latency - 0.6) * s for s in range(8)] + [1.5 + 0.9 * 8 - len(CLIP.samples) / SAMPLE_RATE]
    assert lags == pytest.approx(expected, abs=0.1), result.trace
    assert lags == sorted(lags) and max(lags[:8]) > 2 * STRIDE / SAMPLE_RATE


async def test_frames_leave_when_their_audio_has_been_recorded(sim):
    """With 600 ms frames the first stride is one frame: it cannot leave before 0.6 s of speech exist, so
    no result can come sooner; a 2,000-sample tail frame leaves at the clip's end, not a full frame later."""
    clip = cut(2 * STRIDE + 2000)  # the fake model says the rest of the transcript in its final result
    started = time.monotonic()
    result = await probe(sim, pace="realtime", frame_ms=600, clip=clip)
    assert result.success, (result.reason, result.detail, result.trace)
    timings = result.stream
    assert timings.frames_sent == 3
    assert timings.first_result_seconds >= STRIDE / SAMPLE_RATE
    # stop follows the tail frame at 1.325 s of speech; the session cannot be shorter than the audio
    assert time.monotonic() - started >= len(clip.samples) / SAMPLE_RATE
    assert result.processing_seconds < 0.3, result.trace
    assert len(timings.result_lags) == 3 and all(0 <= lag < 0.3 for lag in timings.result_lags), result.trace


async def test_fast_pace_measures_no_result_lag(sim):
    """No microphone timeline to measure from: the lag is left out, not made up."""
    result = await probe(sim)
    assert result.success and result.stream.partial_results > 0
    assert result.stream.result_lags == []


def test_result_lag_attribution():
    """A result claims the oldest stride with speech sent before it arrived that no earlier result claimed;
    strides of silence are skipped (they yield no words) without inflating later lags; a result with no
    stride left is not measured; the final result lags the end of the clip."""
    clock = ResultLagClock(speech_start=10.0, total_samples=4 * STRIDE + 3200, speech=(False, True, True, True))
    for k in range(13):  # 400 ms frames: strides complete with frames 1, 2(+), 4, 5 ...
        clock.frame_sent(min(6400, clock.total_samples - clock.samples_sent), 10.0 + 0.4 * (k + 1))
        if clock.samples_sent >= clock.total_samples:
            break
    assert clock.stride_sent_at == pytest.approx([10.8, 11.2, 12.0, 12.4])
    assert clock.lag(11.3, False) == pytest.approx(11.3 - 11.2)  # stride 0 is silence: stride 1, 0.1 s
    assert clock.lag(11.35, False) is None  # a second result with no new stride: not measured
    assert clock.lag(12.05, False) == pytest.approx(12.05 - 11.8)  # stride 2, spoken by 11.8, sent at 12.0
    assert clock.lag(12.9, True) == pytest.approx(12.9 - (10.0 + (4 * STRIDE + 3200) / SAMPLE_RATE))


def test_result_lag_of_a_server_behind_is_not_capped_by_the_stride():
    """Every stride has speech and all four were sent before the first result came: that result is
    stride 0's, then 1's, ...: the lags grow instead of staying below one stride."""
    clock = ResultLagClock(speech_start=0.0, total_samples=4 * STRIDE)
    for k in range(4):
        clock.frame_sent(STRIDE, 0.6 * (k + 1))
    lags = [clock.lag(at, False) for at in (2.5, 3.4, 4.3, 5.2)]
    assert lags == pytest.approx([1.9, 2.2, 2.5, 2.8])
    assert clock.lag(5.3, False) is None


def test_speech_strides_of_the_clip():
    """Silence, then speech: only the strides with a 10 ms window louder than about -40 dBFS hold speech."""
    from exporter.probes.result_lag import speech_strides

    tone = (0.3 * np.sin(np.arange(STRIDE) * 2 * np.pi * 220 / SAMPLE_RATE)).astype(np.float32)
    samples = np.concatenate([np.zeros(STRIDE, np.float32), tone, np.full(STRIDE, 0.001, np.float32),
                              np.zeros(100, np.float32)])
    assert speech_strides(samples) == (False, True, False)
    assert all(speech_strides(CLIP.samples))


async def test_exact_multiple_of_the_stride_gets_no_final_result(sim):
    """5 strides: the server holds back the last character it heard (6 chars in 3 s), and with nothing
    left in its buffer at stop it sends no final result; the stop status still ends the session."""
    result = await probe(sim, clip=cut(5 * STRIDE, "今天天气很好"))
    assert result.success, (result.reason, result.detail, result.trace)
    server_closed(sim)
    assert not result.stream.final_received
    assert result.stream.partial_results == 5
    assert result.transcript == "今天天气很好" and result.cer == 0.0
    assert result.stream.final_result_seconds < 1.0


@pytest.mark.parametrize("swapped", [1, 4, 11])
async def test_cer_is_exact_for_a_mutated_transcript(sim, swapped):
    sim_fault(sim, "stream", substitute_chars=swapped)
    result = await probe(sim, max_cer=1.0)
    assert result.success
    assert result.cer == swapped / REFERENCE_CHARS
    assert (result.character_errors, result.reference_characters) == (swapped, REFERENCE_CHARS)


async def test_cer_above_its_bound_is_accuracy(sim):
    sim_fault(sim, "stream", substitute_chars=3)
    result = await probe(sim, max_cer=0.2)
    expect(result, "accuracy", "accuracy")
    assert result.cer == 3 / REFERENCE_CHARS
    server_closed(sim)


# ---------------------------------------------------------------- failures

async def test_model_not_loaded(sim):
    sim_model(sim, "streaming_asr", loaded=False)
    result = await probe(sim)
    expect(result, "model_not_loaded", MID_STREAM)
    assert "not loaded" in result.detail
    server_closed(sim)


async def test_model_exception_mid_stream(sim):
    sim_fault(sim, "stream", model_exception=True)
    result = await probe(sim)
    expect(result, "server_error", MID_STREAM)
    assert result.detail.startswith("Processing error:")
    server_closed(sim)


async def test_socket_dropped_mid_stream(sim):
    """Paced in real time, so that the server has read all it was sent when it drops the connection (a
    close with unread data becomes a reset, which may destroy results still in flight)."""
    sim_fault(sim, "stream", drop_after=2)
    result = await probe(sim, pace="realtime")
    expect(result, "closed_early", "audio")
    assert result.stream.partial_results == 2
    assert result.transcript == "今天"  # what arrived before the drop is kept
    server_closed(sim, close_code="1006")  # the server dropped it: no close frame could pass


async def test_zombie_socket_after_a_bad_frame(sim, monkeypatch):
    """A frame the server cannot parse: one "Connection error" message, then a zombie socket that stays
    open and silent. The error is the first thing that applies."""
    frames = websocket.clip_frames
    monkeypatch.setattr(websocket, "clip_frames", lambda clip, ms: ["{not json"] + frames(clip, ms))
    result = await probe(sim, timeout=3.0)
    expect(result, "server_error", MID_STREAM)
    assert "Connection error" in result.detail
    server_closed(sim)


async def test_silent_socket_never_starting(sim):
    sim_fault(sim, "stream", never_start=True)
    result = await probe(sim, timeout=1.5)
    expect(result, "timeout", "start")
    assert result.stream.frames_sent == 0
    server_closed(sim)
    assert messages_received(sim) == {"start_recording": 1, "stop_recording": 1}  # stop, then the close


async def test_silent_socket_after_the_audio(sim):
    """The server takes the audio but answers nothing before the deadline: a timeout at first_result.
    (One stride only, so that the simulator is out of its 1.8 s sleep soon after the probe gave up and
    answers the close frame well within the probe's CLOSE_SECONDS: at 2.5 s the two raced, and a loaded
    machine saw the client give up on the close first, 1006.)"""
    sim_fault(sim, "stream", latency=1.8)
    result = await probe(sim, timeout=1.5, clip=cut(STRIDE))
    expect(result, "timeout", "first_result")
    assert result.stream.frames_sent == 6 and result.stream.first_result_seconds is None
    server_closed(sim)
    assert messages_received(sim)["stop_recording"] == 1


async def test_handshake_rejected(sim):
    sim_fault(sim, "stream", status=403)
    result = await probe(sim)
    expect(result, "handshake_rejected", "connect")
    assert result.http_status == 403 and result.stream.connect_seconds is None


async def test_handshake_never_answered(sim):
    sim_fault(sim, "stream", hang=True)
    result = await probe(sim, timeout=1.0)
    expect(result, "timeout", "connect")


async def test_garbage_frames_from_the_server(sim):
    sim_fault(sim, "stream", garbage=True)
    result = await probe(sim)
    expect(result, "bad_response", "start")
    assert result.detail.startswith("not JSON")
    server_closed(sim)


async def test_wrong_shape_from_the_server(sim):
    sim_fault(sim, "stream", wrong_shape="list")
    result = await probe(sim)
    expect(result, "bad_response", "start")
    server_closed(sim)


async def test_silence_gets_no_result(sim):
    silence = dataclasses.replace(CLIP, samples=np.zeros(3 * STRIDE + 100, dtype=np.float32))
    result = await probe(sim, clip=silence)
    expect(result, "no_result", "transcript")
    assert result.stream.final_result_seconds is not None
    server_closed(sim)


async def test_connect_error():
    result = await probe(f"http://{LOOPBACK}:{free_port()}", timeout=2.0)
    expect(result, "connect_error", "connect")


def test_empty_transcript_is_its_own_reason():
    result = ProbeResult(target="t", probe="stream", success=False, started_at=0, duration_seconds=0,
                         transcript=" ", expected_transcript=CLIP.transcript)
    ctx = ProbeContext(client=None, settings=StreamProbe(), timeout=1)
    with pytest.raises(Exception) as raised:
        stream._check(ctx, result, results=2, max_cer=0.2)
    assert raised.value.reason == "empty_transcript"


def test_audio_frames_are_base64_float32_le_of_frame_ms():
    frames = websocket.audio_frames(CLIP.samples, 600)
    assert len(frames) == -(-len(CLIP.samples) // STRIDE)
    first = json.loads(frames[0])
    assert first["type"] == "audio_chunk"
    assert np.array_equal(np.frombuffer(base64.b64decode(first["data"]), "<f4"), CLIP.samples[:STRIDE])
    decoded = np.concatenate([np.frombuffer(base64.b64decode(json.loads(f)["data"]), "<f4") for f in frames])
    assert np.array_equal(decoded, CLIP.samples)
    assert websocket.clip_frames(CLIP, 600) is websocket.clip_frames(CLIP, 600) == frames  # encoded once per clip


# ---------------------------------------------------------------- streaming VAD

SPEECH = cut(2 * STRIDE)  # 1.2 s: enough speech for a segment start, short enough to pace in real time


async def test_stream_vad_reports_segments(sim):
    result = await probe(sim, "stream_vad", clip=SPEECH, frame_ms=100)
    assert result.success, (result.reason, result.detail, result.trace)
    assert [(c.name, c.ok) for c in result.checks] == [("segments", True)]
    assert result.stream.first_result_seconds is not None and result.stream.max_pacing_error_seconds >= 0
    server_closed(sim, "stream_vad")


async def test_stream_vad_forbidden_means_model_not_loaded(sim):
    sim_model(sim, "vad", loaded=False)
    result = await probe(sim, "stream_vad", clip=SPEECH)
    expect(result, "model_not_loaded", "connect")
    assert result.http_status == 403 and "VAD model is not loaded" in result.detail


async def test_stream_vad_silence_fails_its_check(sim):
    silence = dataclasses.replace(CLIP, samples=np.zeros(STRIDE, dtype=np.float32))
    result = await probe(sim, "stream_vad", clip=silence)
    expect(result, "check_failed", "segments")
    server_closed(sim, "stream_vad")


async def test_stream_vad_zombie_times_out(sim, monkeypatch):
    """Upstream's VAD loop dies silently on a bad frame: the socket stays open and says nothing more."""
    frames = websocket.clip_frames
    monkeypatch.setattr(websocket, "clip_frames", lambda clip, ms: ["{not json"] + frames(clip, ms))
    result = await probe(sim, "stream_vad", clip=SPEECH, timeout=2.0)
    expect(result, "timeout", "first_result")
    server_closed(sim, "stream_vad")


@pytest.mark.parametrize("fault", [{"latency": 0.3}, {"model_exception": True}, {"never_start": True},
                                   {"garbage": True}])
async def test_stream_vad_faults_end_with_a_close_frame(sim, fault):
    sim_fault(sim, "stream_vad", **fault)
    result = await probe(sim, "stream_vad", clip=SPEECH, timeout=1.0)
    assert not result.success or "latency" in fault
    server_closed(sim, "stream_vad")


@pytest.mark.parametrize("kind", ["stream", "stream_vad"])
async def test_a_cancelled_run_closes_its_socket_with_a_close_frame(sim, kind):
    """Shutdown cancels runs that outlast the grace period: the socket still ends with a close frame."""
    model = StreamProbe if kind == "stream" else StreamVadProbe
    async with new_session() as session:
        ctx = ProbeContext(TargetClient(session, TargetConfig(name="sim", url=sim)), model(), 10.0, clip=CLIP)
        task = asyncio.create_task(run_probe(kind, ctx))
        start = "start_recording" if kind == "stream" else "start_vad"  # the client's socket is open by then
        await asyncio.to_thread(wait_until, lambda: messages_received(sim, kind).get(start) == 1, 5, 0.02,
                                "the session to start")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not session.connector._acquired
    server_closed(sim, kind)


async def test_a_flooding_server_cannot_fill_memory_with_unread_messages():
    """A server that sends megabytes of results faster than they are handled (here: nothing is taken at
    all): what is unread stays within MAX_UNREAD_CHARS, then the socket's reader stops with bad_response."""
    from aiohttp import web

    from exporter.probes.websocket import MAX_UNREAD_CHARS

    piece = "洪" * 300_000  # ~900 KB as JSON text, under the 1 MiB message cap
    sent = []

    async def flood(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=4 << 20)
        await ws.prepare(request)
        for _ in range(MAX_UNREAD_CHARS // len(piece) + 4):
            await ws.send_str(json.dumps({"type": "recognition_result", "text": piece, "is_final": False},
                                         ensure_ascii=False))
            sent.append(1)
        async for _ in ws:  # until the client goes
            pass
        return ws

    app = web.Application()
    app.router.add_get("/ws/{client_id}", flood)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    session = new_session()
    try:
        client = TargetClient(session, TargetConfig(name="flood", url=f"http://{LOOPBACK}:{port}"))
        socket = websocket._Socket(await client.ws_connect("/ws/x", 5.0), "flood reader")
        await asyncio.wait_for(socket.reader, 10)  # it stops by itself once the bound is reached
        assert socket.unread_chars <= MAX_UNREAD_CHARS
        items = [socket.take_nowait() for _ in range(socket.inbox.qsize())]
        assert all(item.message is not None for item in items[:-1])
        assert items[-1].failure is not None and items[-1].failure.reason == "bad_response"
        assert "faster than it could be read" in items[-1].failure.detail
        assert socket.unread_chars == 0 and len(items) - 1 < len(sent)
        await socket.close()
    finally:
        await session.close()
        await runner.cleanup()
