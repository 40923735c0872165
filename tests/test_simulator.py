"""The whoAsr simulator against whoasr-api.md: real servers on loopback, real HTTP and WebSockets."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import signal
import threading
import time
import wave
from contextlib import asynccontextmanager

import aiohttp
import numpy as np
import pytest
from aiohttp import WSMsgType, web

from exporter.simulator import SimulatorOptions, build_app
from exporter.simulator.audio import decode_wav
from exporter.simulator.state import DATA_DIR
from tests.support import LOOPBACK, free_port, start_simulator

TRANSCRIPT = (DATA_DIR / "default.txt").read_text(encoding="utf-8").strip()
CLIP_BYTES = (DATA_DIR / "default.wav").read_bytes()
CLIP, RATE = decode_wav(CLIP_BYTES)
FRAME = 1600  # 100 ms, as a microphone client sends
WAIT = 3.0    # bound on every single wait for a server reply
STREAM_NOT_LOADED = ("Streaming ASR model not loaded. Please load the model using POST /model/load "
                     "with model_type='streaming_asr'")
VAD_NOT_LOADED = "VAD model not loaded. Please load the VAD model using POST /model/load with model_type='vad'"
PATHS = {
    "v1": {"recognize": "/recognize", "punctuation": "/punctuate", "vad": "/vad", "timestamp": "/timestamp"},
    "v2": {"recognize": "/offline/recognize", "punctuation": "/punctuation/add", "vad": "/vad/detect",
           "timestamp": "/timestamp/predict"},
}


# ---------------------------------------------------------------- helpers

class Sim:
    """A running in-process simulator and a client session for it."""

    def __init__(self, base: str, session: aiohttp.ClientSession, api: str):
        self.base, self.session, self.api = base, session, api

    def path(self, name: str) -> str:
        return self.base + PATHS[self.api][name]

    async def get(self, path: str, **kw) -> tuple[int, str, str]:
        async with self.session.get(self.base + path, **kw) as resp:
            return resp.status, resp.content_type, await resp.text()

    async def json(self, method: str, path: str, body=None) -> tuple[int, object]:
        async with self.session.request(method, self.base + path, json=body) as resp:
            return resp.status, await resp.json(content_type=None)

    async def fault(self, endpoint: str, **faults) -> None:
        status, body = await self.json("PUT", f"/-/sim/faults/{endpoint}", faults)
        assert status == 200, body

    async def upload(self, name: str, data: bytes = CLIP_BYTES, filename: str = "probe.wav",
                     content_type: str = "audio/wav", field: str = "file", **fields) -> tuple[int, object]:
        form = aiohttp.FormData()
        form.add_field(field, data, filename=filename, content_type=content_type)
        for key, value in fields.items():
            form.add_field(key, value)
        async with self.session.post(self.path(name), data=form) as resp:
            return resp.status, await resp.json(content_type=None)

    def ws(self, path: str, **kw):
        return self.session.ws_connect(self.base + path, **kw)


class ServerThread:
    """The simulator on its own event loop in a thread, so that its deliberate time.sleep calls
    (health, loads, v1 inference) block the server only, never the test's client."""

    def __init__(self, app: web.Application):
        self.app, self.port = app, free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.runner = web.AppRunner(self.app, shutdown_timeout=1.0)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, LOOPBACK, self.port).start())
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()

    def __enter__(self) -> str:
        self.thread.start()
        assert self.ready.wait(10), "simulator thread did not start"
        return f"http://{LOOPBACK}:{self.port}"

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@asynccontextmanager
async def simulator(api: str = "v2", **options):
    options.setdefault("health_delay", 0.02)
    with ServerThread(build_app(SimulatorOptions(api=api, **options))) as base:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            yield Sim(base, session, api)


@pytest.fixture(params=["v1", "v2"])
async def sim(request):
    async with simulator(request.param) as running:
        yield running


@pytest.fixture
async def v2():
    async with simulator("v2") as running:
        yield running


def wav_bytes(samples: np.ndarray, rate: int = RATE) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(np.clip(samples * 32768, -32768, 32767).astype("<i2").tobytes())
    return out.getvalue()


def chunk(samples: np.ndarray) -> dict:
    return {"type": "audio_chunk", "data": base64.b64encode(samples.astype("<f4").tobytes()).decode()}


async def receive(ws, timeout: float = WAIT) -> dict:
    msg = await asyncio.wait_for(ws.receive(), timeout)
    assert msg.type == WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def nothing_within(ws, seconds: float) -> bool:
    """True if the server sent no frame at all for `seconds`."""
    try:
        msg = await asyncio.wait_for(ws.receive(), seconds)
    except asyncio.TimeoutError:
        return True
    raise AssertionError(f"unexpected frame {msg}")


async def stream_session(ws, samples: np.ndarray, frame: int = FRAME, until: str = "Recording stopped") -> list[dict]:
    """start, the samples in frames, stop; every message up to the final status."""
    await ws.send_json({"type": "start_recording"})
    for i in range(0, len(samples), frame):
        await ws.send_json(chunk(samples[i:i + frame]))
    await ws.send_json({"type": "stop_recording"})
    messages = []
    while True:
        message = await receive(ws)
        messages.append(message)
        if message.get("message") == until:
            return messages


def results(messages: list[dict]) -> list[dict]:
    return [m for m in messages if m["type"] == "recognition_result"]


async def timed(coro) -> tuple[float, object]:
    start = time.monotonic()
    value = await coro
    return time.monotonic() - start, value


# ---------------------------------------------------------------- routes and generations

async def test_openapi_lists_the_generations_http_paths(sim):
    status, ctype, text = await sim.get("/openapi.json")
    doc = json.loads(text)
    assert status == 200 and ctype == "application/json"
    assert doc["openapi"].startswith("3.") and doc["info"]["version"] == "1.0.0" and doc["info"]["title"]
    paths = set(doc["paths"])
    mine = set(PATHS[sim.api].values())
    other = set(PATHS["v2" if sim.api == "v1" else "v1"].values())
    assert mine <= paths and not (other & paths)
    assert {"/health", "/model/info", "/model/load", "/model/unload/{model_type}"} <= paths
    assert not any(p.startswith("/ws") or p.startswith("/vad/ws") or p.startswith("/-/") for p in paths)
    assert "post" in doc["paths"][PATHS[sim.api]["recognize"]]


async def test_v2_catch_all_html_and_405_vs_v1_404():
    async with simulator("v2") as v2, simulator("v1") as v1:
        for path in ("/anything/at/all", "/offline/recognize", "/ws/"):
            status, ctype, text = await v2.get(path)
            assert (status, ctype) == (200, "text/html") and "<html" in text
        assert await v2.json("POST", "/no/such/path") == (405, {"detail": "Method Not Allowed"})
        assert await v1.json("POST", "/no/such/path") == (404, {"detail": "Not Found"})
        assert await v1.json("GET", "/no/such/path") == (404, {"detail": "Not Found"})
        assert await v1.json("GET", "/recognize") == (405, {"detail": "Method Not Allowed"})


async def test_ws_without_client_id_is_refused_with_403(sim):
    for path in ("/ws", "/ws/"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await asyncio.wait_for(sim.ws(path), WAIT)
        assert refused.value.status == 403


# ---------------------------------------------------------------- file recognition

async def test_recognition_answers_transcript_with_timestamps(sim):
    status, body = await sim.upload("recognize", hotword="天气 公园", batch_size_s="300")
    assert status == 200 and body["success"] is True
    assert body["message"] == "Recognition completed successfully"
    assert body["file_name"] == "probe.wav" and body["file_size"] == len(CLIP_BYTES)
    result = body["results"][0]
    assert result["text"] == TRANSCRIPT + "。"
    stamps = result["timestamp"]
    assert len(stamps) == len(TRANSCRIPT)
    assert all(start < end for start, end in stamps) and stamps == sorted(stamps)
    assert 0 < stamps[0][0] and stamps[-1][1] <= len(CLIP) * 1000 // RATE
    assert result["sentence_info"][0]["text"] == result["text"]


async def test_v1_gate_is_the_exact_content_type_list():
    async with simulator("v1") as v1:
        for bad in ("application/octet-stream", "audio/x-wav", "audio/wave"):
            status, body = await v1.upload("recognize", content_type=bad)
            assert status == 400 and body["detail"].startswith("Unsupported file type. Allowed types: audio/wav")
        for good in ("audio/wav", "audio/mpeg"):
            assert (await v1.upload("recognize", content_type=good))[0] == 200
        status, body = await v1.upload("recognize", filename="probe.bin")  # the filename is not checked
        assert status == 200 and body["results"][0]["text"] == TRANSCRIPT + "。"


async def test_v2_gate_is_the_extension_in_any_case(v2):
    status, body = await v2.upload("recognize", filename="PROBE.WAV", content_type="application/octet-stream")
    assert status == 200 and body["results"][0]["text"] == TRANSCRIPT + "。"
    status, body = await v2.upload("recognize", filename="probe.txt")
    assert status == 400 and body["detail"].startswith("Unsupported audio format. Supported formats:")


async def test_recognition_validation_and_undecodable_audio(sim):
    async with sim.session.post(sim.path("recognize"), data={"hotword": "x"}) as resp:
        body = await resp.json()
        assert resp.status == 422 and body["detail"][0]["loc"] == ["body", "file"]
    status, body = await sim.upload("recognize", batch_size_s="lots")
    assert status == 422 and isinstance(body["detail"], list)
    assert body["detail"][0]["loc"] == ["body", "batch_size_s"]
    status, body = await sim.upload("recognize", data=b"RIFF not really a wav file")
    prefix = "Failed to recognize speech: " if sim.api == "v1" else "Failed to recognize audio: "
    assert status == 500 and body["detail"].startswith(prefix) and "/tmp/" in body["detail"]


async def test_silence_and_near_silence_give_empty_text(v2):
    for samples in (np.zeros(RATE * 2, dtype=np.float32), np.full(RATE * 2, 2 / 32768, dtype=np.float32)):
        status, body = await v2.upload("recognize", data=wav_bytes(samples))
        assert status == 200 and body["results"][0]["text"] == "" and body["results"][0]["timestamp"] == []


async def test_offline_model_loads_on_demand_blocking_the_server():
    async with simulator("v2", unloaded=("offline_asr",)) as v2:
        assert (await v2.json("PUT", "/-/sim/load_delay", {"seconds": 0.3}))[0] == 200
        recognition = asyncio.create_task(v2.upload("recognize"))
        await asyncio.sleep(0.05)
        elapsed, (status, info) = await timed(v2.json("GET", "/model/info"))
        assert elapsed >= 0.2, "model info should have waited for the blocking load"
        assert info["models"]["offline_asr"]["loaded"] is True
        status, body = await asyncio.wait_for(recognition, WAIT)
        assert status == 200 and body["results"][0]["text"] == TRANSCRIPT + "。"


async def test_v1_inference_blocks_the_loop_and_v2_does_not():
    for api, blocked in (("v1", True), ("v2", False)):
        async with simulator(api) as sim:
            await sim.fault("recognize", latency=0.4)
            recognition = asyncio.create_task(sim.upload("recognize"))
            await asyncio.sleep(0.05)
            elapsed, (status, _) = await timed(sim.json("GET", "/model/info"))
            assert status == 200
            assert (elapsed >= 0.25) is blocked, (api, elapsed)
            assert (await asyncio.wait_for(recognition, WAIT))[0] == 200


# ---------------------------------------------------------------- punctuation

async def test_punctuation_adds_marks(sim):
    status, body = await sim.json("POST", PATHS[sim.api]["punctuation"], {"text": TRANSCRIPT})
    assert status == 200 and body["success"] is True and body["original_text"] == TRANSCRIPT
    assert body["punctuated_text"] != TRANSCRIPT and body["punctuated_text"].endswith("。")
    assert "，" in body["punctuated_text"]
    assert body["punctuated_text"].replace("，", "").replace("。", "") == TRANSCRIPT


async def test_punctuation_validation_per_generation():
    async with simulator("v1") as v1, simulator("v2") as v2:
        assert await v1.json("POST", "/punctuate", {}) == (400, {"detail": "text is required"})
        assert await v1.json("POST", "/punctuate", {"text": ""}) == (400, {"detail": "text is required"})
        status, body = await v2.json("POST", "/punctuation/add", {})
        assert status == 422 and body["detail"][0]["loc"] == ["body", "text"]
        status, body = await v2.json("POST", "/punctuation/add", {"text": 42})
        assert status == 422 and isinstance(body["detail"], list)


async def test_punctuation_failures_still_answer_200_unchanged(v2):
    await v2.fault("punctuation", model_exception=True)
    status, body = await v2.json("POST", "/punctuation/add", {"text": TRANSCRIPT})
    assert status == 200 and body["punctuated_text"] == body["original_text"] == TRANSCRIPT
    await v2.json("DELETE", "/-/sim/faults/punctuation")
    await v2.json("PUT", "/-/sim/load_delay", {"seconds": 0})
    await v2.json("PUT", "/-/sim/models/punctuation", {"loaded": False, "fail_load": True})
    status, body = await v2.json("POST", "/punctuation/add", {"text": TRANSCRIPT})
    assert status == 200 and body["success"] is True and body["punctuated_text"] == TRANSCRIPT


# ---------------------------------------------------------------- VAD and timestamps

async def test_vad_file_segments_and_errors(sim):
    status, body = await sim.upload("vad")
    assert status == 200 and body["success"] is True
    assert len(body["segments"]) == 1
    start, end = body["segments"][0]
    assert 250 <= start <= 400 and 4400 <= end <= 4900  # the clip: 0.3 s of silence around the speech
    status, body = await sim.upload("vad", filename="probe.txt")
    assert status == 400
    await sim.fault("vad", model_exception=True)
    status, body = await sim.upload("vad")
    assert status == 500 and body["detail"].startswith("VAD processing failed: ")
    await sim.json("DELETE", "/-/sim/faults/vad")
    await sim.json("PUT", "/-/sim/models/vad", {"loaded": False})
    assert await sim.upload("vad") == (503, {"detail": VAD_NOT_LOADED})
    assert (await sim.upload("vad", filename="probe.txt"))[0] == 400  # the extension is checked first


async def test_timestamp_v2_and_the_v1_upstream_bug():
    async with simulator("v1") as v1, simulator("v2") as v2:
        status, body = await v1.upload("timestamp", field="audio_file", text_content=TRANSCRIPT)
        assert status == 500 and body["detail"].startswith("Timestamp processing failed")
        status, body = await v2.upload("timestamp", field="audio_file", text_content=TRANSCRIPT)
        assert status == 200 and body["success"] is True
        assert body["results"][0]["text"].replace(" ", "") == TRANSCRIPT
        form = aiohttp.FormData()
        form.add_field("audio_file", CLIP_BYTES, filename="probe.wav", content_type="audio/wav")
        form.add_field("text_file", TRANSCRIPT.encode(), filename="probe.txt", content_type="text/plain")
        async with v2.session.post(v2.path("timestamp"), data=form) as resp:
            assert resp.status == 200 and (await resp.json())["results"][0]["text"].replace(" ", "") == TRANSCRIPT
        status, body = await v2.upload("timestamp", field="audio_file")
        assert status == 400 and "text" in body["detail"]
        await v2.json("PUT", "/-/sim/models/timestamp", {"loaded": False})
        status, body = await v2.upload("timestamp", field="audio_file", text_content=TRANSCRIPT)
        assert status == 503 and "not loaded" in body["detail"]


# ---------------------------------------------------------------- health and model management

async def test_health_blocks_the_whole_server_and_queues():
    async with simulator("v2", health_delay=0.2) as v2:
        first = asyncio.create_task(timed(v2.json("GET", "/health")))
        second = asyncio.create_task(timed(v2.json("GET", "/health")))
        await asyncio.sleep(0.02)
        info_elapsed, (info_status, _) = await timed(v2.json("GET", "/model/info"))
        (t1, (s1, _)), (t2, (s2, _)) = await asyncio.wait_for(asyncio.gather(first, second), WAIT)
        assert s1 == s2 == info_status == 200
        assert 0.18 <= min(t1, t2) < 0.35 and 0.38 <= max(t1, t2) < 0.7, (t1, t2)
        assert info_elapsed >= 0.15, "other requests wait while /health samples the CPU"


async def test_health_current_schema(sim):
    await sim.json("PUT", "/-/sim/models/vad", {"loaded": False})
    status, body = await sim.json("GET", "/health")
    assert status == 200 and body["status"] == "healthy"
    assert set(body) == {"status", "timestamp", "services", "total_loaded", "system", "api_info"}
    assert body["timestamp"].endswith("Z") and body["api_info"]["version"] == "1.0.0"
    assert set(body["services"]) == {"streaming_asr", "offline_asr", "punctuation", "vad", "timestamp"}
    assert body["services"]["vad"]["loaded"] is False and body["total_loaded"] == 4
    for service in body["services"].values():
        assert {"loaded", "display_name", "description", "auto_load", "supported_formats", "api_endpoints"} <= set(service)
    assert body["system"] == {"memory_total_gb": 16.0, "memory_available_gb": 10.0,
                              "memory_usage_percent": 37.5, "cpu_usage_percent": 12.5}
    status, system = await sim.json("PUT", "/-/sim/system", {"cpu_percent": 87.5, "memory_percent": "unknown"})
    assert status == 200
    body = (await sim.json("GET", "/health"))[1]
    assert body["system"]["cpu_usage_percent"] == 87.5 and body["system"]["memory_usage_percent"] == "unknown"
    assert body["system"]["memory_available_gb"] == "unknown"


async def test_health_documented_schema():
    async with simulator("v2", health_schema="documented", unloaded=("timestamp",)) as v2:
        await v2.upload("recognize")
        async with v2.ws("/ws/documented-1"):
            status, body = await v2.json("GET", "/health")
        assert status == 200 and body["status"] == "healthy"
        assert set(body) == {"status", "timestamp", "uptime", "models", "system"}
        assert body["system"] == {"cpu_usage": 0.125, "memory_usage": 0.375, "disk_usage": 0.25,
                                  "active_connections": 1}
        offline = body["models"]["offline_asr"]
        assert offline["loaded"] is True and offline["total_requests"] == 1 and offline["last_used"]
        assert offline["memory_usage"].endswith(("GB", "MB")) and offline["memory_usage_mb"] > 0
        assert body["models"]["timestamp"]["loaded"] is False and body["models"]["timestamp"]["total_requests"] == 0


async def test_model_management(sim):
    assert (await sim.json("POST", "/model/load", {"model_type": "nonsense"}))[0] == 422
    status, body = await sim.json("POST", "/model/unload/nonsense")
    assert status == 400 and "Invalid model type" in body["detail"]
    assert (await sim.json("GET", "/model/config/nonsense"))[0] == 400
    status, body = await sim.json("POST", "/model/unload/vad")
    assert status == 200 and body["success"] is True and body["loaded"] is False
    await sim.json("PUT", "/-/sim/load_delay", {"seconds": 0.1})
    elapsed, (status, body) = await timed(sim.json("POST", "/model/load", {"model_type": "vad"}))
    assert status == 200 and body == {**body, "success": True, "model_type": "vad", "loaded": True}
    assert elapsed >= 0.09
    status, info = await sim.json("GET", "/model/info")
    assert info["models"]["vad"]["loaded"] is True and info["total_loaded"] == 5
    assert info["available_models"]["offline_asr"]["model_name"] == "paraformer-zh"
    await sim.json("PUT", "/-/sim/models/timestamp", {"loaded": False, "fail_load": True})
    status, body = await sim.json("POST", "/model/load", {"model_type": "timestamp"})
    assert status == 200 and body["success"] is False and body["loaded"] is False
    status, config = await sim.json("GET", "/model/config/streaming_asr")
    assert status == 200 and config["model_name"] == "paraformer-zh-streaming" and config["loaded"] is True


# ---------------------------------------------------------------- streaming recognition

async def test_stream_incremental_pieces_join_to_the_transcript(sim):
    async with sim.ws("/ws/happy-1") as ws:
        messages = await stream_session(ws, CLIP)
    assert messages[0] == {"type": "status", "message": "Recording started"}
    assert messages[-1] == {"type": "status", "message": "Recording stopped"}
    pieces = results(messages)
    assert len(pieces) > 3 and all(p["text"] for p in pieces)
    assert "".join(p["text"] for p in pieces) == TRANSCRIPT
    assert [p["is_final"] for p in pieces] == [False] * (len(pieces) - 1) + [True]
    assert pieces[-1]["text"] == TRANSCRIPT[-1]
    assert all(set(p) == {"type", "text", "is_final"} for p in pieces)


async def test_stream_exact_multiple_of_the_stride_has_no_final(v2):
    samples = np.zeros(9600 * 9, dtype=np.float32)
    samples[: len(CLIP)] = CLIP
    async with v2.ws("/ws/multiple-1") as ws:
        pieces = results(await stream_session(ws, samples))
    assert pieces and not any(p["is_final"] for p in pieces)
    assert "".join(p["text"] for p in pieces) == TRANSCRIPT[:-1]


async def test_stream_processes_one_stride_per_message(v2):
    async with v2.ws("/ws/one-message") as ws:
        pieces = results(await stream_session(ws, CLIP, frame=len(CLIP)))
    first_chars = 600 // 450
    assert [p["is_final"] for p in pieces] == [False, True]
    assert pieces[0]["text"] == TRANSCRIPT[:first_chars] and pieces[1]["text"] == TRANSCRIPT[first_chars:]


async def test_stream_silence_gives_no_results(v2):
    async with v2.ws("/ws/silence-1") as ws:
        messages = await stream_session(ws, np.zeros(RATE * 2, dtype=np.float32))
    assert [m["message"] for m in messages] == ["Recording started", "Recording stopped"]


async def test_stream_int16_audio_is_misread_without_an_error(v2):
    pcm = (CLIP * 32767).astype("<i2").tobytes()
    async with v2.ws("/ws/int16-1") as ws:
        await ws.send_json({"type": "start_recording"})
        for i in range(0, len(pcm), FRAME * 2):
            await ws.send_json({"type": "audio_chunk", "data": base64.b64encode(pcm[i:i + FRAME * 2]).decode()})
        await ws.send_json({"type": "stop_recording"})
        messages = [await receive(ws)]
        while messages[-1].get("message") != "Recording stopped":
            messages.append(await receive(ws))
    joined = "".join(p["text"] for p in results(messages))
    assert joined and not (set(joined) & set(TRANSCRIPT))
    assert not any(m["type"] == "error" for m in messages)


async def test_stream_unloaded_model_errors_per_stride():
    async with simulator("v1", unloaded=("streaming_asr",)) as v1:
        samples = CLIP[: 9600 * 3]
        async with v1.ws("/ws/unloaded-1") as ws:
            messages = await stream_session(ws, samples)
    assert messages[0]["message"] == "Recording started"
    errors = [m for m in messages if m["type"] == "error"]
    assert errors == [{"type": "error", "message": STREAM_NOT_LOADED}] * 3
    assert not results(messages)


async def test_stream_unknown_type_keeps_working(v2):
    async with v2.ws("/ws/unknown-1") as ws:
        await ws.send_json({"type": "hello"})
        assert await receive(ws) == {"type": "error", "message": "Unknown message type: hello"}
        pieces = results(await stream_session(ws, CLIP))
    assert "".join(p["text"] for p in pieces) == TRANSCRIPT


@pytest.mark.parametrize("frame", ["not json", b"\x00\x01binary", {"data": "AAAA"}, {"type": "audio_chunk"}])
async def test_stream_malformed_message_leaves_a_silent_zombie(v2, frame):
    async with v2.ws("/ws/zombie-1", autoping=False) as ws:
        if isinstance(frame, bytes):
            await ws.send_bytes(frame)
        elif isinstance(frame, str):
            await ws.send_str(frame)
        else:
            await ws.send_json(frame)
        error = await receive(ws)
        assert error["type"] == "error" and error["message"].startswith("Connection error: ")
        await ws.send_json({"type": "start_recording"})
        assert await nothing_within(ws, 0.3)
        await ws.ping(b"still there?")
        pong = await asyncio.wait_for(ws.receive(), WAIT)
        assert pong.type == WSMsgType.PONG and pong.data == b"still there?"
        assert not ws.closed


# ---------------------------------------------------------------- streaming VAD

async def test_vad_socket_is_refused_when_the_model_is_unloaded():
    async with simulator("v2", unloaded=("vad",)) as v2:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await asyncio.wait_for(v2.ws("/vad/ws/vad-1"), WAIT)
        assert refused.value.status == 403


async def test_vad_socket_segments_and_ping(sim):
    async with sim.ws("/vad/ws/vad-2") as ws:
        await ws.send_json({"type": "ping"})
        assert await receive(ws) == {"type": "pong"}
        messages = await stream_session_vad(ws, CLIP)
    assert messages[0] == {"type": "status", "message": "VAD started"}
    assert messages[-1] == {"type": "status", "message": "VAD stopped"}
    segments = [m for m in messages if m["type"] == "vad_result"]
    assert segments[0]["segments"][0][1] == -1 and segments[0]["is_final"] is False
    assert segments[-1]["is_final"] is True and segments[-1]["segments"][0][0] == -1


async def stream_session_vad(ws, samples: np.ndarray) -> list[dict]:
    await ws.send_json({"type": "start_vad"})
    for i in range(0, len(samples), FRAME):
        await ws.send_json(chunk(samples[i:i + FRAME]))
    await ws.send_json({"type": "stop_vad"})
    messages = []
    while not messages or messages[-1].get("message") != "VAD stopped":
        messages.append(await receive(ws))
    return messages


# ---------------------------------------------------------------- fault injection

async def test_fault_admin_api_validates_lists_and_clears(v2):
    assert (await v2.json("PUT", "/-/sim/faults/nowhere", {"latency": 1}))[0] == 404
    assert (await v2.json("PUT", "/-/sim/faults/health", {"explode": True}))[0] == 400
    assert (await v2.json("PUT", "/-/sim/faults/health", {"status": "500"}))[0] == 400
    await v2.fault("health", status=500)
    await v2.fault("stream", drop_after=2, latency=0.1)
    status, body = await v2.json("GET", "/-/sim/faults")
    assert body["faults"] == {"health": {"status": 500}, "stream": {"drop_after": 2, "latency": 0.1}}
    await v2.json("DELETE", "/-/sim/faults/health")
    assert set((await v2.json("GET", "/-/sim/faults"))[1]["faults"]) == {"stream"}
    await v2.json("DELETE", "/-/sim/faults")
    assert (await v2.json("GET", "/-/sim/faults"))[1]["faults"] == {}


async def test_status_garbage_and_wrong_shape_faults(v2):
    await v2.fault("recognize", status=503)
    assert await v2.upload("recognize") == (503, {"detail": "injected"})
    await v2.fault("model_info", garbage=True)
    status, _, text = await v2.get("/model/info")
    assert status == 200
    with pytest.raises(ValueError):
        json.loads(text)
    await v2.fault("health", wrong_shape=True)
    assert await v2.json("GET", "/health") == (200, {"unexpected": True})
    await v2.fault("health", wrong_shape="list")
    status, body = await v2.json("GET", "/health")
    assert status == 200 and isinstance(body, list)


async def test_latency_and_hang_faults(v2):
    await v2.fault("model_info", latency=0.25)
    elapsed, (status, _) = await timed(v2.json("GET", "/model/info"))
    assert status == 200 and elapsed >= 0.24
    await v2.fault("punctuation", hang=True)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(v2.json("POST", "/punctuation/add", {"text": "x"}), 0.3)
    elapsed, (status, _) = await timed(v2.json("GET", "/openapi.json"))
    assert status == 200 and elapsed < 0.2, "a hanging request must not stall the server"


async def test_model_exception_and_substitute_chars_faults(v2):
    await v2.fault("recognize", model_exception=True)
    status, body = await v2.upload("recognize")
    assert status == 500 and body["detail"].startswith("Failed to recognize audio: ")
    await v2.fault("recognize", substitute_chars=3)
    status, body = await v2.upload("recognize")
    text = body["results"][0]["text"]
    assert text == "错错错" + TRANSCRIPT[3:] + "。"
    await v2.fault("stream", substitute_chars=2)
    async with v2.ws("/ws/substitute-1") as ws:
        joined = "".join(p["text"] for p in results(await stream_session(ws, CLIP)))
    errors = sum(a != b for a, b in zip(joined, TRANSCRIPT))
    assert len(joined) == len(TRANSCRIPT) and errors == 2


async def test_stream_model_exception_errors_and_socket_stays_usable(v2):
    await v2.fault("stream", model_exception=True)
    async with v2.ws("/ws/exception-1") as ws:
        messages = await stream_session(ws, CLIP[: 9600 * 2 + 100])
        errors = [m["message"] for m in messages if m["type"] == "error"]
        assert errors[:2] == ["Processing error: injected model exception"] * 2
        assert errors[2].startswith("Final processing error: ")
        await v2.json("DELETE", "/-/sim/faults/stream")
        pieces = results(await stream_session(ws, CLIP))
    assert "".join(p["text"] for p in pieces) == TRANSCRIPT


async def test_stream_drop_after_closes_abruptly(v2):
    await v2.fault("stream", drop_after=2)
    async with v2.ws("/ws/drop-1") as ws:
        await ws.send_json({"type": "start_recording"})
        assert (await receive(ws))["message"] == "Recording started"
        pieces, ended = [], None
        for i in range(0, len(CLIP), FRAME):
            try:
                await ws.send_json(chunk(CLIP[i:i + FRAME]))
                msg = await asyncio.wait_for(ws.receive(), 0.05)
            except asyncio.TimeoutError:
                continue
            except ConnectionResetError:  # the server is gone: writing fails before a read notices
                ended = WSMsgType.CLOSED
                break
            if msg.type != WSMsgType.TEXT:
                ended = msg.type
                break
            pieces.append(json.loads(msg.data))
    assert len(pieces) == 2 and all(p["type"] == "recognition_result" for p in pieces)
    assert ended in (WSMsgType.CLOSED, WSMsgType.ERROR), "no close handshake: the connection just ends"


async def test_stream_never_start_garbage_status_and_hang(v2):
    await v2.fault("stream", never_start=True)
    async with v2.ws("/ws/never-1") as ws:
        await ws.send_json({"type": "start_recording"})
        assert await nothing_within(ws, 0.3)
        await ws.send_json(chunk(CLIP[:9600]))
        assert (await receive(ws))["type"] == "recognition_result"
    await v2.fault("stream", garbage=True)
    async with v2.ws("/ws/garbage-1") as ws:
        await ws.send_json({"type": "start_recording"})
        msg = await asyncio.wait_for(ws.receive(), WAIT)
        assert msg.type == WSMsgType.TEXT
        with pytest.raises(ValueError):
            json.loads(msg.data)
    await v2.fault("stream", status=503)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await asyncio.wait_for(v2.ws("/ws/status-1"), WAIT)
    assert refused.value.status == 503
    await v2.fault("stream", hang=True)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(v2.ws("/ws/hang-1"), 0.3)


async def test_stream_latency_is_per_stride(v2):
    await v2.fault("stream", latency=0.1)
    async with v2.ws("/ws/latency-1") as ws:
        elapsed, messages = await timed(stream_session(ws, CLIP[: 9600 * 3]))
    assert len(results(messages)) >= 2 and elapsed >= 0.3


async def test_stream_vad_model_exception(v2):
    await v2.fault("stream_vad", model_exception=True)
    async with v2.ws("/vad/ws/vad-exc") as ws:
        messages = await stream_session_vad(ws, CLIP[:3200 * 2])
    assert [m["message"] for m in messages if m["type"] == "error"] == ["VAD processing error: injected model exception"] * 2


async def test_health_and_model_info_model_exception(v2):
    await v2.fault("health", model_exception=True)
    status, body = await v2.json("GET", "/health")
    assert status == 200 and body["status"] == "healthy"
    assert set(body["system"].values()) == {"unknown"}  # psutil failing upstream
    await v2.fault("model_info", model_exception=True)
    status, body = await v2.json("GET", "/model/info")
    assert status == 500 and body["detail"].startswith("Failed to get model info: ")


async def test_stream_vad_never_start_and_wrong_shape(v2):
    await v2.fault("stream_vad", never_start=True)
    async with v2.ws("/vad/ws/vad-never") as ws:
        await ws.send_json({"type": "start_vad"})
        assert await nothing_within(ws, 0.3)
        await ws.send_json({"type": "ping"})
        assert await receive(ws) == {"type": "pong"}
    await v2.fault("stream_vad", wrong_shape=True)
    async with v2.ws("/vad/ws/vad-shape") as ws:
        await ws.send_json({"type": "ping"})
        assert await receive(ws) == {"unexpected": True}


async def test_stats_show_what_reached_the_server(v2):
    await v2.json("GET", "/health")
    await v2.upload("recognize")
    status, stats = await v2.json("GET", "/-/sim/stats")
    assert status == 200
    assert stats["requests"]["health"] == 1 and stats["requests"]["recognize"] == 1
    assert stats["requests"]["stream"] == 0 and stats["requests"]["punctuation"] == 0
    await v2.json("DELETE", "/-/sim/stats")
    assert (await v2.json("GET", "/-/sim/stats"))[1]["requests"]["health"] == 0


# ---------------------------------------------------------------- as a process

def test_simulate_command_serves_and_stops_cleanly(tmp_path):
    from tests.support import http_get

    proc, url = start_simulator(tmp_path, "v1", "--unloaded", "vad,timestamp", "--transcript", "你好世界")
    try:
        status, body, _ = http_get(url + "/health", timeout=5)
        health = json.loads(body)
        assert status == 200 and health["total_loaded"] == 3 and health["services"]["vad"]["loaded"] is False
        paths = json.loads(http_get(url + "/openapi.json")[1])["paths"]
        assert "/recognize" in paths and "/offline/recognize" not in paths
        proc.signal(signal.SIGTERM)
        proc.proc.wait(timeout=10)
        assert proc.proc.returncode == 0
        assert "simulator listening" in proc.output()
    finally:
        proc.stop()
