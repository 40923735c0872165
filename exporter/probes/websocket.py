"""One streaming session against whoAsr's WebSockets, shared by the `stream` and `stream_vad` probes.

A session behaves like the seed's microphone client: a fresh client id, a start message, the clip as
base64 float32 LE frames sent on a real-time schedule, a stop message, then everything until the stop
status. A reader task receives concurrently and timestamps each message on arrival, so that latencies do
not depend on when the sender gets round to looking at them. Every wait is bounded by the run's
deadline (a server that stops answering but keeps the socket open must not hang a probe), and the socket
is closed and the reader cancelled however the session ends.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import aiohttp
import numpy as np

from exporter.clips import SAMPLE_RATE, Clip
from exporter.probes import ProbeContext, failed
from exporter.probes.result_lag import MAX_RESULTS, ResultLagClock, speech_strides
from exporter.results import Failure, ProbeResult, StreamTimings, redact

MAX_UNREAD_CHARS = 2 << 20  # text of the messages received and not yet handled, in all (each is at most 1 MiB)
CLOSE_SECONDS = 1.0  # closing a socket must fit in run_probe's guard time, even against a silent server
STOP_SECONDS = 0.25  # after a timeout: how long sending the stop message may take
_NOT_LOADED = re.compile(r"\bnot\s+loaded\b", re.IGNORECASE)


@dataclass(frozen=True)
class Dialect:
    """What differs between the recognition WebSocket and the VAD one."""

    start: str
    started: str  # status message that answers `start`
    stop: str
    stopped: str  # status message that ends the session
    result_type: str
    forbidden_means: Optional[str] = None  # a 403 on upgrade means this model is not loaded
    measures_lag: bool = False  # results map to 9,600-sample strides (result_lag.py)


RECOGNITION = Dialect("start_recording", "Recording started", "stop_recording", "Recording stopped",
                      "recognition_result", measures_lag=True)
VAD = Dialect("start_vad", "VAD started", "stop_vad", "VAD stopped", "vad_result",
              forbidden_means="VAD")

# Called with each result message and its arrival time; validates it (Failure on a wrong shape) and
# returns its is_final flag.
ResultHandler = Callable[[dict[str, Any], float], bool]
# A probe's reading of one result message into its result: (is_final, what to show); Failure if malformed.
ResultReader = Callable[[dict[str, Any], ProbeResult], tuple[bool, str]]
# A probe's checks once the session ended: results received so far; Failure if one fails.
SessionCheck = Callable[[ProbeResult, int], None]


@dataclass
class Pacing:
    """Per-frame lateness against the real-time schedule (seconds), for benchmarks that want more than the max."""

    lateness: list[float] = field(default_factory=list)


async def run_streaming_probe(ctx: ProbeContext, kind: str, dialect: Dialect, read_result: ResultReader,
                              check: SessionCheck, *, realtime: bool, expected_transcript: Optional[str] = None,
                              pacing: Optional[Pacing] = None,
                              finish: Optional[Callable[[ProbeResult], None]] = None) -> ProbeResult:
    """The frame both streaming probes share: one session on the configured clip, then the probe's checks.

    A failure keeps everything measured up to it (timings, the transcript so far); `finish` puts what the
    probe gathered into the result once the session ended, however it ended.
    """
    settings = ctx.settings
    result = ctx.new_result(kind)
    result.stream = StreamTimings()
    result.expected_transcript = expected_transcript

    def on_result(message: dict[str, Any], at: float) -> bool:
        is_final, what = read_result(message, result)
        note = f"{'final' if is_final else 'partial'} result {session.results + 1}: {what}"
        ctx.trace("<- " + note)
        if ctx.progress is not None:
            ctx.progress(note)
        return is_final

    session = Session(ctx, result, dialect, on_result)
    try:
        try:
            await session.run(ctx.clip, settings.frame_ms, realtime, settings.client_id_prefix, pacing)
        finally:
            if finish is not None:
                finish(result)
        check(result, session.results)
    except Failure as failure:
        return failed(ctx, kind, failure, result)
    result.success = True
    result.duration_seconds = ctx.elapsed()
    ctx.trace("passed")
    return result


def audio_frames(samples: np.ndarray, frame_ms: int) -> list[str]:
    """The clip as ready-to-send audio_chunk messages, encoded before the clock starts."""
    step = SAMPLE_RATE * frame_ms // 1000
    little_endian = samples.astype("<f4", copy=False)
    return [
        json.dumps({"type": "audio_chunk", "data": base64.b64encode(little_endian[i:i + step].tobytes()).decode()})
        for i in range(0, len(little_endian), step)
    ]


_FRAME_CACHE: dict[tuple[int, int], tuple[np.ndarray, list[str]]] = {}
_SPEECH_CACHE: dict[int, tuple[np.ndarray, tuple[bool, ...]]] = {}
_FRAME_CACHE_SIZE = 8


def clip_frames(clip: Clip, frame_ms: int) -> list[str]:
    """audio_frames, shared by every session of a clip: 50 concurrent sessions encode once, not 50 times
    (1.5 ms each for the built-in clip, taken from other sessions' schedules) and hold one copy.

    Keyed by the samples' identity; the entry holds them, so the id cannot be reused while cached.
    """
    key = (id(clip.samples), frame_ms)
    entry = _FRAME_CACHE.get(key)
    if entry is None:
        if len(_FRAME_CACHE) >= _FRAME_CACHE_SIZE:
            del _FRAME_CACHE[next(iter(_FRAME_CACHE))]
        entry = _FRAME_CACHE[key] = (clip.samples, audio_frames(clip.samples, frame_ms))
    return entry[1]


def clip_speech(clip: Clip) -> tuple[bool, ...]:
    """result_lag.speech_strides of the clip, computed once per clip as its frames are."""
    key = id(clip.samples)
    entry = _SPEECH_CACHE.get(key)
    if entry is None:
        if len(_SPEECH_CACHE) >= _FRAME_CACHE_SIZE:
            del _SPEECH_CACHE[next(iter(_SPEECH_CACHE))]
        entry = _SPEECH_CACHE[key] = (clip.samples, speech_strides(clip.samples))
    return entry[1]


@dataclass
class _Incoming:
    at: float  # loop time of arrival
    message: Optional[dict[str, Any]] = None
    failure: Optional[Failure] = None  # a bad frame or the socket's end; nothing follows it
    size: int = 0  # characters of the frame, counted against MAX_UNREAD_CHARS until taken


class _Socket:
    """An open WebSocket with a reader task that queues timestamped, parsed messages."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, name: str):
        self.ws = ws
        self.inbox: asyncio.Queue[_Incoming] = asyncio.Queue()
        self.unread_chars = 0  # what arrived and was not taken yet: bounded by MAX_UNREAD_CHARS
        self.reader = asyncio.create_task(self._read(), name=name)

    def take_nowait(self) -> _Incoming:
        item = self.inbox.get_nowait()
        self.unread_chars -= item.size
        return item

    async def take(self) -> _Incoming:
        item = await self.inbox.get()
        self.unread_chars -= item.size
        return item

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await self.ws.receive()
            except Exception as exc:  # noqa: BLE001 - aiohttp turns the usual ones into frames; anything else ends it
                self.inbox.put_nowait(_Incoming(loop.time(), failure=Failure(
                    "closed_early", f"receive failed: {type(exc).__name__}: {redact(str(exc), 80)}")))
                return
            at = loop.time()
            if frame.type is aiohttp.WSMsgType.TEXT:
                item = _parse(frame.data, at)
            elif frame.type is aiohttp.WSMsgType.BINARY:
                item = _Incoming(at, failure=Failure("bad_response", f"binary frame ({len(frame.data)} bytes)"))
            elif frame.type is aiohttp.WSMsgType.ERROR:  # a WebSocket protocol violation (or a huge message)
                item = _Incoming(at, failure=Failure("bad_response", f"WebSocket error: {redact(str(frame.data), 80)}"))
            else:  # CLOSE, CLOSING, CLOSED: aiohttp has answered or dropped the connection
                code = self.ws.close_code
                item = _Incoming(at, failure=Failure(
                    "closed_early", f"the server closed the socket (code {code})" if code else "the socket closed"))
            if item.failure is None and frame.type is aiohttp.WSMsgType.TEXT:
                item.size = len(frame.data)
                if self.unread_chars + item.size > MAX_UNREAD_CHARS:
                    item = _Incoming(at, failure=Failure(
                        "bad_response", f"the server sent more than {MAX_UNREAD_CHARS:,} characters faster than "
                                        "it could be read"))
                else:
                    self.unread_chars += item.size
            self.inbox.put_nowait(item)
            if item.failure:
                return

    async def close(self) -> None:
        """Closes the socket with a close frame and waits for the server's, within CLOSE_SECONDS.

        The reader is not cancelled first: aiohttp treats a receive cut short as an abnormal closure and
        then drops the connection right after its close frame, before the server has read it. While the
        reader waits in receive(), ws.close() hands the closing handshake to it; the reader then ends.
        A server that does not answer within CLOSE_SECONDS gets the connection dropped."""
        try:
            async with asyncio.timeout(CLOSE_SECONDS):
                await self.ws.close()
                await asyncio.wait([self.reader])
        except (TimeoutError, aiohttp.ClientError, OSError):
            pass
        finally:
            if not self.reader.done():  # the server never answered the close: drop the connection
                self.reader.cancel()
                await asyncio.wait([self.reader], timeout=CLOSE_SECONDS)
            if not self.ws.closed:  # a receive cut short: aiohttp's close now just drops the connection
                try:
                    async with asyncio.timeout(CLOSE_SECONDS):
                        await self.ws.close()
                except (TimeoutError, aiohttp.ClientError, OSError):
                    pass


def _parse(text: str, at: float) -> _Incoming:
    try:
        message = json.loads(text)
    except ValueError:
        return _Incoming(at, failure=Failure("bad_response", f"not JSON: {redact(text, 80)!r}"))
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return _Incoming(at, failure=Failure("bad_response", f"not a typed JSON object: {redact(text, 80)!r}"))
    return _Incoming(at, message=message)


class Session:
    """The state of one session: what arrived when, and what it means for the result."""

    def __init__(self, ctx: ProbeContext, result: ProbeResult, dialect: Dialect, on_result: ResultHandler):
        self.ctx = ctx
        self.result = result
        self.timings = result.stream
        self.dialect = dialect
        self.on_result = on_result
        self.loop = asyncio.get_running_loop()
        self.socket: Optional[_Socket] = None
        self.phase = "connect"  # the step a failure belongs to
        self.speech_start: Optional[float] = None  # the instant frame 0's audio begins
        self.lag_clock: Optional[ResultLagClock] = None  # real-time recognition sessions only
        self.speech: tuple[bool, ...] = ()  # which strides of the clip hold speech (result_lag.py)
        self.started = False
        self.stopped_at: Optional[float] = None
        self.stop_sent = False
        self.results = 0

    async def run(self, clip: Clip, frame_ms: int, realtime: bool, client_id_prefix: str,
                  pacing: Optional[Pacing] = None) -> None:
        """The whole session; raises Failure at the first problem; the socket is closed in any case."""
        frames = clip_frames(clip, frame_ms)
        self.speech = clip_speech(clip)
        client_id = f"{client_id_prefix}-{uuid.uuid4().hex[:12]}"
        await self._connect(client_id)
        try:
            self.phase = "start"
            await self._send({"type": self.dialect.start})
            await self._collect(lambda: self.started, f"status {self.dialect.started!r}")
            self.phase = "audio"
            await self._send_audio(frames, len(clip.samples), frame_ms, realtime, pacing)
            self.phase = "final"
            stop_sent_at = self.loop.time()
            self.stop_sent = True
            await self._send({"type": self.dialect.stop})
            await self._collect(lambda: self.stopped_at is not None, f"status {self.dialect.stopped!r}")
        except Failure as failure:
            if failure.reason == "timeout" and not self.stop_sent:
                await self._stop_after_timeout()
            raise
        finally:
            await self.socket.close()  # with a close frame, on every way out (also a cancelled run)
        self.timings.final_result_seconds = self.stopped_at - stop_sent_at
        self.ctx.trace(f"session ended {self.timings.final_result_seconds * 1000:.1f} ms after {self.dialect.stop}")
        self._account(clip.duration_seconds, realtime)

    def _account(self, audio_seconds: float, realtime: bool) -> None:
        """audio_seconds is the clip; processing_seconds is what the server added to it.

        Paced in real time, the audio itself takes audio_seconds to arrive, so processing_seconds is how
        much longer than that the session lasted (start of speech -> stop status, minus the audio; never
        negative): a server that keeps up scores about 0, one that lags by a second scores 1. With
        `pace: fast` the whole clip is there at once, so it is the whole of first frame -> stop status.
        """
        elapsed = self.stopped_at - self.speech_start
        self.result.audio_seconds = audio_seconds
        self.result.processing_seconds = max(elapsed - audio_seconds, 0.0) if realtime else elapsed

    async def _connect(self, client_id: str) -> None:
        # the registry's path of the kind (the same in both generations): the client id follows
        path = await self.ctx.client.path(self.result.probe, self.ctx.remaining(), self.ctx.trace) + client_id
        self.ctx.trace(f"WebSocket {path}")
        began = self.loop.time()
        try:
            ws = await self.ctx.client.ws_connect(path, self.ctx.remaining())
        except Failure as failure:
            if failure.reason == "handshake_rejected" and failure.http_status == 403 and self.dialect.forbidden_means:
                raise Failure("model_not_loaded", f"{failure.detail}: whoAsr refuses the upgrade when the "
                              f"{self.dialect.forbidden_means} model is not loaded", http_status=403,
                              step="connect") from None
            raise
        self.timings.connect_seconds = self.loop.time() - began
        self.ctx.trace(f"connected in {self.timings.connect_seconds * 1000:.1f} ms")
        self.socket = _Socket(ws, name=f"ws-reader {self.ctx.client.name} {client_id}")

    async def _stop_after_timeout(self) -> None:
        """Ends the recording the server may still hold for this client id, if the socket takes a message:
        a monitor that gives up must not leave a session behind. Its answer is not awaited."""
        try:
            async with asyncio.timeout(STOP_SECONDS):
                await self.socket.ws.send_str(json.dumps({"type": self.dialect.stop}))
        except (TimeoutError, ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            self.ctx.trace(f"{self.dialect.stop} not sent after the timeout: {type(exc).__name__}")
            return
        self.stop_sent = True
        self.ctx.trace(f"-> {self.dialect.stop} (after the timeout)")

    async def _send(self, message: dict[str, Any]) -> None:
        await self._send_text(json.dumps(message))
        self.ctx.trace(f"-> {message['type']}")

    async def _send_text(self, text: str) -> None:
        """Sends one frame; a socket the server has closed fails with what the server said last, if anything."""
        try:
            await self.socket.ws.send_str(text)
        except (ConnectionError, aiohttp.ClientError) as exc:
            # What arrived before the end may still be on its way through the reader: let it finish.
            await asyncio.wait([self.socket.reader], timeout=min(CLOSE_SECONDS, self.ctx.remaining()))
            self._drain()
            raise Failure("closed_early", f"cannot send: {type(exc).__name__}: {redact(str(exc), 80)}",
                          step=self.phase) from None

    async def _send_audio(self, frames: list[str], total_samples: int, frame_ms: int, realtime: bool,
                          pacing: Optional[Pacing]) -> None:
        """Like a microphone: frame k leaves once its audio has been recorded, at the start of speech plus
        the end of its audio ((k+1) * frame_ms, or the clip's end for a short last frame), with no drift.
        `fast` sends as fast as the socket takes them, from the start of speech on."""
        step = SAMPLE_RATE * frame_ms // 1000
        worst = 0.0
        try:
            async with asyncio.timeout(self.ctx.remaining()):
                t0 = self.speech_start = self.loop.time()
                if realtime and self.dialect.measures_lag:
                    self.lag_clock = ResultLagClock(speech_start=t0, total_samples=total_samples,
                                                    speech=self.speech)
                for k, frame in enumerate(frames):
                    end = min((k + 1) * step, total_samples)
                    if realtime:
                        due = t0 + end / SAMPLE_RATE
                        delay = due - self.loop.time()
                        if delay > 0:
                            await asyncio.sleep(delay)
                        late = self.loop.time() - due
                        worst = max(worst, abs(late))
                        self.timings.max_pacing_error_seconds = worst
                        if pacing is not None:
                            pacing.lateness.append(late)
                    sent_at = self.loop.time()
                    await self._send_text(frame)
                    if self.lag_clock is not None:
                        self.lag_clock.frame_sent(end - k * step, sent_at)
                    self.timings.frames_sent += 1
                    if not realtime:
                        await asyncio.sleep(0)  # let the reader take what has arrived
                    self._drain()
        except TimeoutError:
            raise Failure("timeout", f"sent {self.timings.frames_sent} of {len(frames)} frames before the deadline",
                          step="audio") from None
        how = f"worst pacing error {worst * 1000:.2f} ms" if realtime else "pace: fast"
        self.ctx.trace(f"sent {len(frames)} frames of {frame_ms} ms in "
                       f"{self.loop.time() - t0:.3f} s ({how})")

    def _drain(self) -> None:
        while not self.socket.inbox.empty():
            self._handle(self.socket.take_nowait())

    async def _collect(self, done: Callable[[], bool], what: str) -> None:
        """Handles messages until done() or the run's deadline.

        A timeout after stop with no result at all is a timeout at `first_result`: the server never
        answered the audio (a silent or zombie socket), rather than being slow to finish.
        """
        limit = self.ctx.remaining()
        try:
            async with asyncio.timeout(limit):
                while not done():
                    self._handle(await self.socket.take())
        except TimeoutError:
            step = "first_result" if self.phase == "final" and not self.results else self.phase
            raise Failure("timeout", f"no {what} within {limit:.2f} s", step=step) from None

    def _handle(self, item: _Incoming) -> None:
        """Applies one message to the session; the first thing that goes wrong raises its Failure."""
        try:
            if item.failure:
                raise item.failure
            self._apply(item.message, item.at)
        except Failure as failure:
            failure.step = failure.step or self.phase
            raise

    def _apply(self, message: dict[str, Any], at: float) -> None:
        kind = message["type"]
        if kind == self.dialect.result_type:
            is_final = self.on_result(message, at)
            self.results += 1
            if self.timings.first_result_seconds is None and self.speech_start is not None:
                self.timings.first_result_seconds = max(at - self.speech_start, 0.0)
                self.ctx.trace(f"first result {self.timings.first_result_seconds * 1000:.1f} ms after the start "
                               "of speech")
            self._record_lag(at, is_final)
            if is_final:
                self.timings.final_received = True
            else:
                self.timings.partial_results += 1
        elif kind == "status":
            text = message.get("message")
            if not isinstance(text, str):
                raise Failure("bad_response", "a status message without a message text")
            self.ctx.trace(f"<- status {redact(text, 80)!r}")
            if text == self.dialect.started:
                self.started = True
            elif text == self.dialect.stopped:
                self.stopped_at = at
        elif kind == "error":
            text = message.get("message")
            if not isinstance(text, str):
                raise Failure("bad_response", "an error message without a message text")
            self.ctx.trace(f"<- error {redact(text)!r}")
            reason = "model_not_loaded" if _NOT_LOADED.search(text) else "server_error"
            raise Failure(reason, redact(text), error_body=redact(text))
        else:
            self.ctx.trace(f"<- {redact(kind, 40)!r} message ignored")  # whoAsr sends none; a newer one might

    def _record_lag(self, at: float, is_final: bool) -> None:
        if self.lag_clock is None or len(self.timings.result_lags) >= MAX_RESULTS:
            return
        lag = self.lag_clock.lag(at, is_final)
        if lag is None:
            self.ctx.trace("result lag not measured: more results than strides sent")
            return
        self.timings.result_lags.append(lag)
        self.ctx.trace(f"result lag {lag * 1000:.1f} ms")
