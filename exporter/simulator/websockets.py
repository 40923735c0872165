"""whoAsr's WebSockets: streaming recognition (/ws/{client_id}) and streaming VAD (/vad/ws/{client_id}).

Session state is keyed by client_id, as upstream: a new socket with an id in use replaces the
session (so two sockets with one id share one buffer, and replies go to the newest socket), and any
socket with that id ending removes it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional

import numpy as np
from aiohttp import WSMsgType, web

from exporter.simulator.audio import EnergyVad, decode_chunk, is_garbled, speech_segments
from exporter.simulator.faults import GARBAGE_BODY, hang, wrong_shape_body
from exporter.simulator.http_routes import MODEL_EXCEPTION, fallback, is_upgrade
from exporter.simulator.state import SimState, sim_of

STREAM_STRIDE = 9600   # 600 ms at 16 kHz: one model call
VAD_STRIDE = 3200      # 200 ms
SAMPLE_RATE = 16000
GARBLED_CHAR = "嗯"    # what the fake model 'hears' in int16 audio misread as float32
STREAM_NOT_LOADED = ("Streaming ASR model not loaded. Please load the model using POST /model/load "
                     "with model_type='streaming_asr'")
MAX_MESSAGE = 16 * 1024 * 1024
# Client message types counted in /-/sim/stats (anything else as "other": the label set stays bounded).
COUNTED_TYPES = ("start_recording", "stop_recording", "audio_chunk", "start_vad", "stop_vad", "ping")


@dataclass
class Session:
    """One client_id's state; `ws` is the newest socket that connected with that id."""

    ws: web.WebSocketResponse
    transport: Any
    buffer: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    recording: bool = False
    processed: int = 0          # samples run through the model since start_recording
    chars_sent: int = 0
    heard_speech: bool = False
    garbled: bool = False       # int16 audio misread as float32 was heard: the rest is nonsense too
    results_sent: int = 0
    vad: EnergyVad = field(default_factory=EnergyVad)


async def send(sim: SimState, endpoint: str, session: Session | None, message: dict, result: bool = False) -> None:
    """Sends to the client_id's current socket, through the endpoint's faults (garbage, shape, drop)."""
    if session is None or session.ws.closed:
        return
    fault = sim.fault(endpoint)
    drop_after = fault.get("drop_after")
    if result and drop_after is not None and session.results_sent >= drop_after:
        _drop(session)
        return
    if fault.get("garbage"):
        text = GARBAGE_BODY
    elif fault.get("wrong_shape"):
        text = json.dumps(wrong_shape_body(fault["wrong_shape"]))
    else:
        text = json.dumps(message, ensure_ascii=False)
    try:
        await session.ws.send_str(text)
    except (ConnectionError, RuntimeError):
        return
    if result:
        session.results_sent += 1
        if drop_after is not None and session.results_sent >= drop_after:
            _drop(session)


def _drop(session: Session) -> None:
    """Closes the TCP connection under the socket without a close frame, as a crashed server would."""
    if session.transport is not None and not session.transport.is_closing():
        session.transport.close()


async def _handshake(request: web.Request, endpoint: str) -> web.StreamResponse | None:
    """Faults that act on the upgrade itself: hang (never answer) and status (reject)."""
    sim = sim_of(request)
    fault = sim.fault(endpoint)
    if fault.get("hang"):
        return await hang(request, sim)
    if "status" in fault:
        return web.json_response({"detail": "injected"}, status=int(fault["status"]))
    return None


async def _zombie(ws: web.WebSocketResponse) -> None:
    """Upstream's handler has returned without closing: the socket stays open, answers pings (aiohttp's
    autoping does that inside receive) and never sends anything again."""
    async for _ in ws:
        pass


async def _model_latency(sim: SimState, endpoint: str) -> None:
    latency = float(sim.fault(endpoint).get("latency", 0))
    if latency > 0:
        await asyncio.sleep(latency)


Parse = Callable[[Any], tuple[Any, Any]]
Dispatch = Callable[[SimState, str, Any, Any], Awaitable[None]]
Broken = Callable[[SimState, str, Exception], Awaitable[None]]


async def _serve_socket(request: web.Request, endpoint: str, sessions: dict[str, Session], parse: Parse,
                        dispatch: Dispatch, broken: Optional[Broken] = None,
                        needs_model: Optional[str] = None) -> web.StreamResponse:
    """One whoAsr WebSocket endpoint: counts the request, answers a plain GET as no socket route would,
    applies the handshake faults, refuses (403) while `needs_model` is not loaded, then accepts, keys a
    Session by client_id in `sessions` and reads text frames until the client goes.

    Each frame's JSON goes through `parse` (-> kind, data) and then `dispatch`. A frame upstream's loop
    would have died of (binary, not JSON, or whatever `parse` raises) ends the session: `broken` is told
    first (it may answer), then the socket is left a zombie, as upstream leaves it.
    """
    sim = sim_of(request)
    sim.count(endpoint)
    if not is_upgrade(request):
        return await fallback(request)
    if (refused := await _handshake(request, endpoint)) is not None:
        return refused
    if needs_model is not None and not sim.models[needs_model].loaded:
        return web.Response(status=403)  # upstream closes before accepting: uvicorn answers 403
    client_id = request.match_info["client_id"]
    ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE)
    await ws.prepare(request)
    sim.open_websockets.add(ws)
    sessions[client_id] = Session(ws=ws, transport=request.transport)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                break
            try:
                if msg.type != WSMsgType.TEXT:
                    raise KeyError("text")  # Starlette's receive_text() on a binary frame
                kind, data = parse(json.loads(msg.data))
            except Exception as exc:  # noqa: BLE001 - whatever upstream's loop would have died of
                if broken is not None:
                    await broken(sim, client_id, exc)
                sessions.pop(client_id, None)
                await _zombie(ws)
                break
            sim.count_ws_message(endpoint, kind if kind in COUNTED_TYPES else "other")
            await dispatch(sim, client_id, kind, data)
    finally:
        sessions.pop(client_id, None)
        sim.open_websockets.discard(ws)
        # A client's close frame leaves its code (1000 for a normal close); a connection that just
        # ended, 1006 (aiohttp's "abnormal closure").
        sim.count_ws_close(endpoint, ws.close_code)
    return ws


# ---------------------------------------------------------------- streaming recognition

async def stream_socket(request: web.Request) -> web.StreamResponse:
    return await _serve_socket(request, "stream", sim_of(request).stream_sessions, _stream_parse,
                               _stream_dispatch, broken=_stream_broken)


def _stream_parse(message: Any) -> tuple[Any, Any]:
    kind = message["type"]
    return kind, message["data"] if kind == "audio_chunk" else None


async def _stream_broken(sim: SimState, client_id: str, exc: Exception) -> None:
    await send(sim, "stream", sim.stream_sessions.get(client_id),
               {"type": "error", "message": f"Connection error: {exc}"})


async def _stream_dispatch(sim: SimState, client_id: str, kind: Any, data: Any) -> None:
    if kind == "start_recording":
        await _start_recording(sim, client_id)
    elif kind == "stop_recording":
        await _stop_recording(sim, client_id)
    elif kind == "audio_chunk":
        await _audio_chunk(sim, client_id, data)
    else:
        await send(sim, "stream", sim.stream_sessions.get(client_id),
                   {"type": "error", "message": f"Unknown message type: {kind}"})


async def _start_recording(sim: SimState, client_id: str) -> None:
    session = sim.stream_sessions.get(client_id)
    if session is not None:
        session.buffer = np.zeros(0, dtype=np.float32)
        session.recording, session.processed, session.chars_sent = True, 0, 0
        session.heard_speech = session.garbled = False
    sim.use_model("streaming_asr")
    if not sim.fault("stream").get("never_start"):
        await send(sim, "stream", session, {"type": "status", "message": "Recording started"})


async def _audio_chunk(sim: SimState, client_id: str, data: Any) -> None:
    """Buffers the samples and runs at most one 9,600-sample stride per message, as upstream."""
    session = sim.stream_sessions.get(client_id)
    if session is None or not session.recording:
        return
    chunk = decode_chunk(data) if isinstance(data, str) else np.zeros(0, dtype=np.float32)
    if chunk.size == 0:
        return
    session.buffer = np.concatenate([session.buffer, chunk])
    if len(session.buffer) < STREAM_STRIDE:
        return
    stride, session.buffer = session.buffer[:STREAM_STRIDE], session.buffer[STREAM_STRIDE:]
    await _stream_model(sim, session, stride)


async def _stream_model(sim: SimState, session: Session, stride: np.ndarray | None) -> None:
    """One call of the streaming model, answering its result or error: on `stride` (already taken off
    the buffer, so lost if the call fails) or, with None, the final call on whatever the buffer holds
    once the model runs (kept in the buffer if the call fails)."""
    final = stride is None
    if not sim.models["streaming_asr"].loaded:
        await send(sim, "stream", session, {"type": "error", "message": STREAM_NOT_LOADED})
        return
    await _model_latency(sim, "stream")
    if sim.fault("stream").get("model_exception"):
        error = "Final processing error" if final else "Processing error"
        await send(sim, "stream", session, {"type": "error", "message": f"{error}: {MODEL_EXCEPTION}"})
        return
    if stride is None:
        samples, session.buffer = session.buffer, np.zeros(0, dtype=np.float32)
    else:
        samples = stride
    if sim.stream_compute is not None:  # --stream-capacity: this call's share of a saturable model server
        await sim.stream_compute.run(sim.stream_compute.stride_work(len(samples), STREAM_STRIDE))
    session.processed += len(samples)
    piece = _recognize(sim, session, samples, final=final)
    if piece:
        await send(sim, "stream", session, {"type": "recognition_result", "text": piece, "is_final": final}, True)


def _recognize(sim: SimState, session: Session, samples: np.ndarray, final: bool) -> str:
    """The fake streaming model: the transcript advances one character per ms_per_char of audio heard,
    holding back the last character until the final call. Silence alone yields nothing."""
    session.garbled = session.garbled or is_garbled(samples)
    if session.garbled or speech_segments(samples, SAMPLE_RATE):
        session.heard_speech = True
    if not session.heard_speech:
        return ""
    text = sim.spoken_transcript("stream")
    if final:
        upto = len(text)
    else:
        upto = min(session.processed * 1000 // SAMPLE_RATE // sim.options.ms_per_char, max(len(text) - 1, 0))
    piece = text[session.chars_sent:upto]
    session.chars_sent = max(session.chars_sent, upto)
    return GARBLED_CHAR * len(piece) if session.garbled else piece


async def _stop_recording(sim: SimState, client_id: str) -> None:
    session = sim.stream_sessions.get(client_id)
    if session is not None:
        session.recording = False
        if len(session.buffer) > 0:
            await _stream_model(sim, session, None)  # the final call on the rest of the buffer
    await send(sim, "stream", sim.stream_sessions.get(client_id), {"type": "status", "message": "Recording stopped"})


# ---------------------------------------------------------------- streaming VAD

async def vad_socket(request: web.Request) -> web.StreamResponse:
    # upstream's VAD loop dies silently on a bad frame: no error message (no `broken`)
    return await _serve_socket(request, "stream_vad", sim_of(request).vad_sessions, _vad_parse, _vad_dispatch,
                               needs_model="vad")


def _vad_parse(message: Any) -> tuple[Any, Any]:
    return message.get("type"), message.get("data", "")


async def _vad_dispatch(sim: SimState, client_id: str, kind: Any, data: Any) -> None:
    session = sim.vad_sessions.get(client_id)
    if kind == "start_vad":
        if session is not None:
            session.buffer, session.vad = np.zeros(0, dtype=np.float32), EnergyVad()
        sim.use_model("vad")
        if not sim.fault("stream_vad").get("never_start"):
            await send(sim, "stream_vad", session, {"type": "status", "message": "VAD started"})
    elif kind == "stop_vad":
        if session is not None and len(session.buffer) > 0:
            remainder, session.buffer = session.buffer, np.zeros(0, dtype=np.float32)
            await _vad_piece(sim, session, remainder, final=True)
        await send(sim, "stream_vad", session, {"type": "status", "message": "VAD stopped"})
    elif kind == "audio_chunk":
        await _vad_audio(sim, session, data)
    elif kind == "ping":
        await send(sim, "stream_vad", session, {"type": "pong"})


async def _vad_audio(sim: SimState, session: Session | None, data: Any) -> None:
    """Unlike recognition, streaming VAD runs every complete 3,200-sample stride in the buffer."""
    if session is None:
        return
    chunk = decode_chunk(data) if isinstance(data, str) else np.zeros(0, dtype=np.float32)
    if chunk.size == 0:
        return
    session.buffer = np.concatenate([session.buffer, chunk])
    while len(session.buffer) >= VAD_STRIDE and not session.ws.closed:
        stride, session.buffer = session.buffer[:VAD_STRIDE], session.buffer[VAD_STRIDE:]
        await _vad_piece(sim, session, stride, final=False)


async def _vad_piece(sim: SimState, session: Session, samples: np.ndarray, final: bool) -> None:
    await _model_latency(sim, "stream_vad")
    if sim.fault("stream_vad").get("model_exception"):
        await send(sim, "stream_vad", session, {"type": "error", "message": f"VAD processing error: {MODEL_EXCEPTION}"})
        return
    segments = session.vad.feed(samples, final=final)
    if segments:
        await send(sim, "stream_vad", session, {"type": "vad_result", "segments": segments, "is_final": final}, True)
