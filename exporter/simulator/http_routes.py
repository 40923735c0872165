"""whoAsr's HTTP endpoints, both generations, with their quirks.

Where the real server blocks its event loop (the 1 s CPU sample in /health, model loads, v1 inference)
these handlers call time.sleep on purpose, so that every other request waits, as it does upstream.
Everything else sleeps with asyncio.
"""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import time
import uuid
from pathlib import PurePosixPath
from typing import Any, Awaitable, Callable

from aiohttp import web

from exporter.simulator.audio import char_timestamps, decode_wav, punctuate, speech_segments
from exporter.simulator.faults import (
    detail,
    http_faults,
    int_parsing,
    json_invalid,
    missing,
    ok,
    validation_error,
)
from exporter.simulator.state import (
    API_ENDPOINTS,
    MODEL_SPECS,
    MODEL_TYPES,
    SUPPORTED_FORMATS,
    SimState,
    sim_of,
    utc_now_iso,
)

API_TITLE = "Real-time Speech Recognition API"
INFERENCE_RTF = 0.01   # fake model time: 1 % of the audio duration, so RTF metrics are not zero
V1_CONTENT_TYPES = ("audio/wav", "audio/mp3", "audio/mpeg", "audio/m4a", "audio/flac", "audio/ogg")
V2_EXTENSIONS = (".wav", ".mp3", ".m4a", ".flac", ".ogg")
MODEL_EXCEPTION = "injected model exception"
VAD_NOT_LOADED = "VAD model not loaded. Please load the VAD model using POST /model/load with model_type='vad'"
TIMESTAMP_NOT_LOADED = ("Timestamp model not loaded. Please load the model using POST /model/load "
                        "with model_type='Timestamp'")
V1_TIMESTAMP_BUG = ("cannot import name 'get_timestamp_model' from 'api.core.models' "
                    "(/app/api/core/models.py)")
INDEX_HTML = ("<!doctype html><html lang=\"zh\"><head><meta charset=\"utf-8\"><title>whoAsr</title></head>"
              "<body><div id=\"root\"></div><script type=\"module\" src=\"/assets/index.js\"></script></body></html>")


def is_upgrade(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


Handler = Callable[[web.Request, SimState, bool], Awaitable[web.StreamResponse]]
Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


def whoasr_endpoint(name: str, *, faults: bool = True, blocking: bool | str = False) -> Callable[[Handler], Route]:
    """What every whoAsr handler does first: counts the request under `name`, then (with `faults`) applies
    that endpoint's injected HTTP faults, which answer instead of the handler when they fire.

    `blocking` is http_faults' (latency stalls the whole server): True, False, or "v1" for endpoints only
    the v1 server runs on its event loop. The handler is called as handler(request, sim, v1).
    """
    def wrap(handler: Handler) -> Route:
        @functools.wraps(handler)
        async def run(request: web.Request) -> web.StreamResponse:
            sim = sim_of(request)
            v1 = sim.options.api == "v1"
            sim.count(name)
            if faults:
                stalls = v1 if blocking == "v1" else bool(blocking)
                if (fault := await http_faults(request, sim, name, blocking=stalls)) is not None:
                    return fault
            return await handler(request, sim, v1)
        return run
    return wrap


# ---------------------------------------------------------------- request parsing (FastAPI's rules)

async def read_json(request: web.Request) -> tuple[Any, web.Response | None]:
    """The JSON body, or FastAPI's 422 for a missing or undecodable one."""
    raw = await request.read()
    if not raw:
        return None, validation_error(missing("body"))
    try:
        return json.loads(raw), None
    except ValueError as exc:
        return None, validation_error(json_invalid(str(exc).split(":")[0]))


async def read_form(request: web.Request) -> tuple[Any, web.Response | None]:
    try:
        return await request.post(), None
    except Exception:  # noqa: BLE001 - a broken multipart body, as Starlette reports it
        return None, detail(400, "There was an error parsing the body")


def upload_error(form: Any, name: str) -> dict | None:
    """FastAPI's error for a required UploadFile field that is missing or is a plain string."""
    value = form.get(name)
    if value is None:
        return missing("body", name)
    if not isinstance(value, web.FileField):
        return {"type": "value_error", "loc": ["body", name],
                "msg": "Value error, Expected UploadFile, received: <class 'str'>", "input": value,
                "ctx": {"error": {}}}
    return None


def int_field(form: Any, name: str, default: int, errors: list) -> int:
    raw = form.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(str(raw).strip())
    except ValueError:
        errors.append(int_parsing(("body", name), str(raw)))
        return default


def temp_path(api: str, filename: str) -> str:
    """Where the real server would have saved the upload (its 500 texts show these paths)."""
    if api == "v1":
        return f"/tmp/tmp{secrets.token_hex(4)}/upload_{filename}"
    return f"/tmp/{uuid.uuid4()}{PurePosixPath(filename).suffix}"


def undecodable(path: str) -> str:
    return f"Error opening '{path}': Format not recognised."


async def model_time(sim: SimState, seconds: float, blocking: bool) -> None:
    if blocking:
        time.sleep(seconds)
    else:
        await asyncio.sleep(seconds)


def load_on_demand(sim: SimState, model_type: str, requested: bool = False) -> bool:
    """Loads a model the way whoAsr does on first use: blocking the whole server. False if it fails.

    Unless it was `requested` (POST /model/load), the attempt is counted as an on-demand load: what a
    monitor must never cause."""
    state = sim.models[model_type]
    if state.loaded:
        return True
    if not requested:
        sim.on_demand_loads[model_type] = sim.on_demand_loads.get(model_type, 0) + 1
    time.sleep(sim.load_delay)
    if state.fail_load:
        return False
    state.loaded = True
    return True


async def run_model(sim: SimState, endpoint: str, model_type: str, content: bytes, path: str, prefix: str,
                    blocking: bool) -> tuple[Any, web.Response | None]:
    """The fake model on an uploaded file: counts the model's use; an injected model_exception or an
    undecodable file is a 500 whose text starts with `prefix`; otherwise takes the model's time and gives
    ((samples, rate), None)."""
    sim.use_model(model_type)
    if sim.fault(endpoint).get("model_exception"):
        return None, detail(500, f"{prefix}: {MODEL_EXCEPTION}")
    try:
        samples, rate = decode_wav(content)
    except Exception:  # noqa: BLE001 - anything the decoder rejects is "undecodable", as upstream
        return None, detail(500, f"{prefix}: {undecodable(path)}")
    await model_time(sim, len(samples) / rate * INFERENCE_RTF, blocking=blocking)
    return (samples, rate), None


# ---------------------------------------------------------------- health and model management

def model_status(sim: SimState) -> dict[str, dict]:
    return {m: {"loaded": sim.models[m].loaded, "display_name": MODEL_SPECS[m].display_name,
                "description": MODEL_SPECS[m].description, "auto_load": False} for m in MODEL_TYPES}


def current_health(sim: SimState, broken: bool) -> dict:
    services = {}
    for m, status in model_status(sim).items():
        services[m] = {**status, "supported_formats": SUPPORTED_FORMATS[m], "api_endpoints": API_ENDPOINTS[m]}
    keys = {"memory_total_gb": "memory_total_gb", "memory_available_gb": "memory_available_gb",
            "memory_usage_percent": "memory_percent", "cpu_usage_percent": "cpu_percent"}
    system = {out: ("unknown" if broken else sim.system[key]) for out, key in keys.items()}
    return {
        "status": "healthy",
        "timestamp": utc_now_iso(),
        "services": services,
        "total_loaded": sim.total_loaded(),
        "system": system,
        "api_info": {"version": "1.0.0", "title": API_TITLE, "docs": "/docs", "websocket": "/ws/{client_id}"},
    }


def documented_health(sim: SimState, broken: bool) -> dict:
    def ratio(key: str) -> Any:
        value = sim.system[key]
        return "unknown" if broken or value == "unknown" else value / 100.0

    models = {}
    for m in MODEL_TYPES:
        state, spec = sim.models[m], MODEL_SPECS[m]
        models[m] = {
            "loaded": state.loaded,
            "memory_usage": spec.memory_label if state.loaded else "0MB",
            "memory_usage_mb": spec.memory_mb if state.loaded else 0.0,
            "total_requests": state.total_requests,
            "last_used": state.last_used,
        }
    return {
        "status": "healthy",
        "timestamp": utc_now_iso(),
        "uptime": round(time.monotonic() - sim.started, 3),
        "models": models,
        "system": {"cpu_usage": ratio("cpu_percent"), "memory_usage": ratio("memory_percent"),
                   "disk_usage": ratio("disk_percent"), "active_connections": len(sim.open_websockets)},
    }


@whoasr_endpoint("health", blocking=True)
async def health(request: web.Request, sim: SimState, v1: bool) -> web.StreamResponse:
    time.sleep(sim.options.health_delay)  # psutil.cpu_percent(interval=1) on the event loop
    broken = bool(sim.fault("health").get("model_exception"))  # psutil failing: system values "unknown"
    if sim.options.health_schema == "documented":
        return ok(documented_health(sim, broken))
    return ok(current_health(sim, broken))


@whoasr_endpoint("model_info")
async def model_info(request: web.Request, sim: SimState, v1: bool) -> web.StreamResponse:
    if sim.fault("model_info").get("model_exception"):
        return detail(500, f"Failed to get model info: {MODEL_EXCEPTION}")
    available = {}
    for m in MODEL_TYPES:
        spec = MODEL_SPECS[m]
        available[m] = {"display_name": spec.display_name, "description": spec.description,
                        "model_name": spec.model_name, "auto_load": False,
                        "dependencies": list(spec.dependencies), "loaded": sim.models[m].loaded,
                        "config": spec.config}
    return ok({"models": model_status(sim), "total_loaded": sim.total_loaded(), "available_models": available})


def invalid_type(model_type: str) -> web.Response:
    return detail(400, f"Invalid model type: {model_type}. Available types: {list(MODEL_TYPES)}")


@whoasr_endpoint("model_load", faults=False)
async def model_load(request: web.Request, sim: SimState, v1: bool) -> web.StreamResponse:
    body, error = await read_json(request)
    if error:
        return error
    if not isinstance(body, dict):
        return validation_error({"type": "model_attributes_type", "loc": ["body"],
                                 "msg": "Input should be a valid dictionary or object to extract fields from",
                                 "input": body})
    if "model_type" not in body:
        return validation_error(missing("body", "model_type"))
    model_type = body["model_type"]
    if model_type not in MODEL_TYPES:
        expected = ", ".join(f"'{m}'" for m in MODEL_TYPES[:-1]) + f" or '{MODEL_TYPES[-1]}'"
        return validation_error({"type": "enum", "loc": ["body", "model_type"], "msg": f"Input should be {expected}",
                                 "input": model_type, "ctx": {"expected": expected}})
    name = MODEL_SPECS[model_type].display_name
    if sim.models[model_type].loaded:
        return ok({"success": True, "model_type": model_type, "message": f"{name} is already loaded", "loaded": True})
    if not load_on_demand(sim, model_type, requested=True):
        return ok({"success": False, "model_type": model_type, "message": f"Failed to load {name}", "loaded": False})
    return ok({"success": True, "model_type": model_type, "message": f"{name} loaded successfully", "loaded": True})


@whoasr_endpoint("model_unload", faults=False)
async def model_unload(request: web.Request, sim: SimState, v1: bool) -> web.StreamResponse:
    model_type = request.match_info["model_type"]
    if model_type not in MODEL_TYPES:
        return invalid_type(model_type)
    name = MODEL_SPECS[model_type].display_name
    if not sim.models[model_type].loaded:
        return ok({"success": True, "model_type": model_type, "message": f"{name} is not loaded", "loaded": False})
    sim.models[model_type].loaded = False
    return ok({"success": True, "model_type": model_type, "message": f"{name} unloaded successfully", "loaded": False})


@whoasr_endpoint("model_config", faults=False)
async def model_config(request: web.Request, sim: SimState, v1: bool) -> web.StreamResponse:
    model_type = request.match_info["model_type"]
    if model_type not in MODEL_TYPES:
        return invalid_type(model_type)
    spec = MODEL_SPECS[model_type]
    return ok({"model_type": model_type, "display_name": spec.display_name, "description": spec.description,
               "model_name": spec.model_name, "auto_load": False, "dependencies": list(spec.dependencies),
               "config": spec.config, "loaded": sim.models[model_type].loaded})


# ---------------------------------------------------------------- file recognition

@whoasr_endpoint("recognize", blocking="v1")
async def recognize(request: web.Request, sim: SimState, v1: bool) -> web.StreamResponse:
    prefix = "Failed to recognize speech" if v1 else "Failed to recognize audio"
    form, error = await read_form(request)
    if error:
        return error
    errors = [e for e in [upload_error(form, "file")] if e]
    int_field(form, "batch_size_s", 300, errors)
    int_field(form, "batch_size_threshold_s", 60, errors)
    if errors:
        return validation_error(*errors)
    upload: web.FileField = form["file"]
    filename = upload.filename or ""
    if v1 and upload.content_type not in V1_CONTENT_TYPES:
        return detail(400, f"Unsupported file type. Allowed types: {', '.join(V1_CONTENT_TYPES)}")
    if not v1 and PurePosixPath(filename).suffix.lower() not in V2_EXTENSIONS:
        return detail(400, f"Unsupported audio format. Supported formats: {', '.join(V2_EXTENSIONS)}")
    content = upload.file.read()
    path = temp_path(sim.options.api, filename)
    if not load_on_demand(sim, "offline_asr"):
        return detail(500, f"{prefix}: Failed to load offline ASR model")
    audio, error = await run_model(sim, "recognize", "offline_asr", content, path, prefix, blocking=v1)
    if error is not None:
        return error
    samples, rate = audio
    segments = speech_segments(samples, rate)
    spoken = sim.spoken_transcript("recognize") if segments else ""
    stamps = char_timestamps(len(spoken), segments)
    text = spoken + "。" if spoken else ""
    result: dict[str, Any] = {"key": PurePosixPath(path).stem, "text": text, "timestamp": stamps}
    result["sentence_info"] = ([{"text": text, "start": stamps[0][0], "end": stamps[-1][1], "timestamp": stamps,
                                 "spk": 0}] if stamps else [])
    return ok({"success": True, "results": [result], "message": "Recognition completed successfully",
               "file_name": filename, "file_size": len(content)})


# ---------------------------------------------------------------- punctuation

@whoasr_endpoint("punctuation")
async def punctuation(request: web.Request, sim: SimState, v1: bool) -> web.StreamResponse:
    body, error = await read_json(request)
    if error:
        return error
    if not isinstance(body, dict):
        if v1:
            return validation_error({"type": "dict_type", "loc": ["body"], "msg": "Input should be a valid dictionary",
                                     "input": body})
        return validation_error({"type": "model_attributes_type", "loc": ["body"],
                                 "msg": "Input should be a valid dictionary or object to extract fields from",
                                 "input": body})
    text = body.get("text")
    if v1 and not text:
        return detail(400, "text is required")
    if not v1 and text is None:
        return validation_error(missing("body", "text"))
    if not isinstance(text, str):
        if v1:
            return detail(500, f"Failed to add punctuation: '{type(text).__name__}' object is not iterable")
        return validation_error({"type": "string_type", "loc": ["body", "text"], "msg": "Input should be a valid string",
                                 "input": text})
    punctuated = text  # whoAsr hands back the input unchanged when its model fails or cannot load
    if load_on_demand(sim, "punctuation"):
        sim.use_model("punctuation")
        if not sim.fault("punctuation").get("model_exception"):
            punctuated = punctuate(text)
    return ok({"original_text": text, "punctuated_text": punctuated, "success": True,
               "message": "Punctuation added successfully"})


# ---------------------------------------------------------------- VAD on a file

@whoasr_endpoint("vad", blocking="v1")
async def vad(request: web.Request, sim: SimState, v1: bool) -> web.StreamResponse:
    form, error = await read_form(request)
    if error:
        return error
    if (problem := upload_error(form, "file")) is not None:
        return validation_error(problem)
    upload: web.FileField = form["file"]
    filename = upload.filename or ""
    if PurePosixPath(filename).suffix.lower() not in V2_EXTENSIONS:
        return detail(400, "Unsupported file format. Please upload WAV, MP3, M4A, FLAC, or OGG files.")
    if not sim.models["vad"].loaded:
        return detail(503, VAD_NOT_LOADED)
    content = upload.file.read()
    path = temp_path("v2", filename)  # both generations save VAD uploads as /tmp/<uuid><ext>
    audio, error = await run_model(sim, "vad", "vad", content, path, "VAD processing failed", blocking=v1)
    if error is not None:
        return error
    samples, rate = audio
    segments = speech_segments(samples, rate)
    if v1:
        return ok({"success": True, "segments": segments, "file_name": filename, "file_size": len(content),
                   "message": "VAD detection completed successfully"})
    return ok({"success": True, "message": "VAD detection completed successfully", "segments": segments,
               "file_name": filename, "file_size": len(content)})


# ---------------------------------------------------------------- timestamps

@whoasr_endpoint("timestamp")
async def timestamp(request: web.Request, sim: SimState, v1: bool) -> web.StreamResponse:
    form, error = await read_form(request)
    if error:
        return error
    if (problem := upload_error(form, "audio_file")) is not None:
        return validation_error(problem)
    audio: web.FileField = form["audio_file"]
    text_file = form.get("text_file")
    text_content = form.get("text_content")
    if not v1 and PurePosixPath(audio.filename or "").suffix.lower() not in V2_EXTENSIONS:
        return detail(400, f"Unsupported audio format. Supported formats: {', '.join(V2_EXTENSIONS)}")
    if not text_file and not text_content:
        return detail(400, "Either text_file or text_content is required")
    if v1:  # upstream imports a function that does not exist: every real v1 request ends here
        return detail(500, f"Timestamp processing failed: {V1_TIMESTAMP_BUG}")
    if not sim.models["timestamp"].loaded:
        return detail(503, TIMESTAMP_NOT_LOADED)
    if text_content:
        text = str(text_content)
    elif isinstance(text_file, web.FileField):
        text = text_file.file.read().decode("utf-8", errors="replace")
    else:
        text = str(text_file)
    content = audio.file.read()
    path = temp_path("v2", audio.filename or "")
    # Upstream saves the upload (and a text file) to its temp directory and never deletes it: its cleanup
    # is called with plain strings and fails on .exists(). Counted, not written: the leak is the fact.
    sim.leak_upload(path, len(content))
    if isinstance(text_file, web.FileField):
        sim.leak_upload(temp_path("v2", text_file.filename or "text.txt"), len(text.encode("utf-8")))
    _, error = await run_model(sim, "timestamp", "timestamp", content, path, "Timestamp processing failed",
                               blocking=False)
    if error is not None:
        return error
    tokens = " ".join(ch for ch in text if not ch.isspace())
    # fa-zh answers {"key", "text", "timestamp"}; whoAsr keeps only text/start/end/confidence of it,
    # and those last three are absent upstream, so they come out as 0.
    return ok({"success": True, "message": "Timestamp prediction completed successfully",
               "results": [{"text": tokens, "start": 0, "end": 0, "confidence": 0.0}]})


# ---------------------------------------------------------------- the web UI and docs

async def index(request: web.Request) -> web.StreamResponse:
    if is_upgrade(request):
        return web.Response(status=403)
    return web.Response(text=INDEX_HTML, content_type="text/html")


async def docs(request: web.Request) -> web.StreamResponse:
    html = (f"<!doctype html><html><head><title>{API_TITLE} - Swagger UI</title></head>"
            "<body><div id=\"swagger-ui\"></div></body></html>")
    return web.Response(text=html, content_type="text/html")


async def fallback(request: web.Request) -> web.StreamResponse:
    """A GET no route matched: v2's catch-all web UI, v1's 404 (an upgrade is refused: 403)."""
    if is_upgrade(request):
        return web.Response(status=403)
    if sim_of(request).options.api == "v2":
        return await index(request)
    return detail(404, "Not Found")
