"""The simulator's mutable world: options, model states, faults, system values, counters.

Everything a handler or the admin API reads or changes lives in one `SimState` per application, so
that two simulators in one process (as in the tests) never share anything.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from exporter.simulator.compute import SharedCompute

log = structlog.get_logger("exporter.simulator")

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEFAULT_TRANSCRIPT_FILE = DATA_DIR / "default.txt"

MODEL_TYPES = ("streaming_asr", "offline_asr", "punctuation", "vad", "timestamp")
ENDPOINTS = ("health", "model_info", "recognize", "punctuation", "vad", "timestamp", "stream", "stream_vad")
SUBSTITUTE_CHAR = "错"
SUBSTITUTE_FALLBACK = "误"  # used where the transcript already has SUBSTITUTE_CHAR, so every swap is an error
DEFAULT_LOAD_DELAY = 2.0


@dataclass(frozen=True)
class SimulatorOptions:
    api: str = "v2"                      # "v1" | "v2"
    health_delay: float = 1.0            # seconds /health blocks the whole server
    unloaded: tuple[str, ...] = ()       # model types that start unloaded; all others start loaded
    transcript: str | None = None        # None: contents of exporter/data/default.txt
    health_schema: str = "current"       # "current" (both generations) | "documented" (the seed's older schema)
    ms_per_char: int = 450               # streaming: one transcript character per this much audio
    stream_capacity: int | None = None   # streaming: real-time streams the model keeps up with; None: no limit

    def __post_init__(self) -> None:
        if self.api not in ("v1", "v2"):
            raise ValueError(f"api must be v1 or v2, got {self.api!r}")
        if self.health_schema not in ("current", "documented"):
            raise ValueError(f"health_schema must be current or documented, got {self.health_schema!r}")
        unknown = [m for m in self.unloaded if m not in MODEL_TYPES]
        if unknown:
            raise ValueError(f"unknown model type(s) {unknown}; expected any of {', '.join(MODEL_TYPES)}")
        if self.health_delay < 0:
            raise ValueError("health_delay must be >= 0")
        if self.stream_capacity is not None and self.stream_capacity <= 0:
            raise ValueError("stream_capacity must be > 0")
        if self.ms_per_char <= 0:
            raise ValueError("ms_per_char must be > 0")


@dataclass(frozen=True)
class ModelSpec:
    """Static facts about one model type, as whoAsr's registry describes it."""

    model_name: str
    display_name: str
    description: str
    dependencies: tuple[str, ...]
    config: dict
    memory_mb: float          # documented schema: memory used while loaded
    memory_label: str         # documented schema: the same as the server's human-readable string


MODEL_SPECS: dict[str, ModelSpec] = {
    "streaming_asr": ModelSpec(
        "paraformer-zh-streaming", "流式语音识别", "实时中文语音识别（Paraformer 流式）", (),
        {"chunk_size": [0, 10, 5], "encoder_chunk_look_back": 4, "decoder_chunk_look_back": 1},
        1024.0, "1.0GB"),
    "offline_asr": ModelSpec(
        "paraformer-zh", "离线语音识别", "整段音频的高精度中文识别（含端点检测、标点、说话人）",
        ("fsmn-vad", "ct-punc", "cam++"),
        {"vad_model": "fsmn-vad", "punc_model": "ct-punc", "spk_model": "cam++", "batch_size_s": 300},
        1536.0, "1.5GB"),
    "punctuation": ModelSpec("ct-punc", "标点符号添加", "中文文本自动加标点", (), {}, 200.0, "200MB"),
    "vad": ModelSpec(
        "fsmn-vad", "语音端点检测", "离线与实时语音端点检测", (),
        {"chunk_size": 200, "sample_rate": 16000, "max_end_silence_time": 800}, 64.0, "64MB"),
    "timestamp": ModelSpec("fa-zh", "时间戳预测", "按文本预测字级时间戳", (), {}, 512.0, "512MB"),
}

# What /health's services list per model type (the real server's fixed tables).
SUPPORTED_FORMATS = {
    "streaming_asr": ["wav", "mp3", "flac", "ogg"],
    "offline_asr": ["wav", "mp3", "mpeg", "m4a", "flac", "ogg"],
    "punctuation": ["text/plain"],
    "vad": ["wav", "mp3", "m4a", "flac", "ogg"],
    "timestamp": ["wav", "mp3", "m4a", "flac", "ogg"],
}
API_ENDPOINTS = {
    "streaming_asr": ["GET /health", "POST /model/load", "WS /ws/{client_id}"],
    "offline_asr": ["GET /health", "POST /model/load", "POST /recognize"],
    "punctuation": ["GET /health", "POST /model/load", "POST /punctuate"],
    "vad": ["GET /health", "POST /model/load", "POST /vad", "WS /vad/ws/{client_id}"],
    "timestamp": ["GET /health", "POST /model/load", "POST /timestamp"],
}

# Exact in binary floating point, so tests and dashboards can compare without tolerance:
# 12.5 % CPU, 37.5 % of 16 GiB memory used (10 GiB available), 25 % disk.
DEFAULT_SYSTEM: dict[str, Any] = {
    "cpu_percent": 12.5,
    "memory_percent": 37.5,
    "memory_total_gb": 16.0,
    "memory_available_gb": 10.0,
    "disk_percent": 25.0,
}

# Fault kinds and the JSON types their values may take.
FAULT_KINDS: dict[str, tuple[type, ...]] = {
    "latency": (int, float),
    "status": (int,),
    "garbage": (bool,),
    "wrong_shape": (bool, str),
    "hang": (bool,),
    "model_exception": (bool,),
    "drop_after": (int,),
    "substitute_chars": (int,),
    "never_start": (bool,),
}


def validate_faults(body: Any) -> dict[str, Any]:
    """Checks an admin fault body; raises ValueError with a message for the caller."""
    if not isinstance(body, dict):
        raise ValueError("expected a JSON object of fault kinds")
    faults: dict[str, Any] = {}
    for key, value in body.items():
        if key not in FAULT_KINDS:
            raise ValueError(f"unknown fault {key!r}; expected any of {', '.join(FAULT_KINDS)}")
        kinds = FAULT_KINDS[key]
        if isinstance(value, bool) and bool not in kinds:
            raise ValueError(f"{key} must be a number, not a boolean")
        if not isinstance(value, kinds):
            raise ValueError(f"{key} has the wrong type: {type(value).__name__}")
        if key == "latency" and value < 0:
            raise ValueError("latency must be >= 0")
        if key == "status" and not 200 <= value <= 599:
            raise ValueError("status must be an HTTP status between 200 and 599")
        if key in ("drop_after", "substitute_chars") and value < 0:
            raise ValueError(f"{key} must be >= 0")
        if key == "wrong_shape" and isinstance(value, str) and value not in ("object", "list"):
            raise ValueError("wrong_shape must be true, 'object' or 'list'")
        faults[key] = value
    return faults


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).replace(tzinfo=None).isoformat() + "Z"


@dataclass
class ModelState:
    loaded: bool
    fail_load: bool = False          # admin: loads of this model fail (200 success:false, on-demand 500)
    total_requests: int = 0          # documented /health schema
    last_used: str | None = None


@dataclass
class SimState:
    """Shared by every handler of one simulator application."""

    options: SimulatorOptions
    transcript: str
    models: dict[str, ModelState]
    load_delay: float = DEFAULT_LOAD_DELAY
    system: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SYSTEM))
    faults: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    on_demand_loads: dict[str, int] = field(default_factory=dict)  # model type -> loads a request triggered
    leaked_files: int = 0  # v2 /timestamp/predict never deletes its uploads (whoasr-api.md)
    leaked_bytes: int = 0
    ws_messages: dict[str, dict[str, int]] = field(default_factory=dict)  # endpoint -> client message type -> n
    ws_closes: dict[str, dict[str, int]] = field(default_factory=dict)  # endpoint -> close code -> n
    started: float = field(default_factory=time.monotonic)
    open_websockets: set = field(default_factory=set)
    stream_sessions: dict[str, Any] = field(default_factory=dict)
    vad_sessions: dict[str, Any] = field(default_factory=dict)
    shutting_down: bool = False
    stream_compute: SharedCompute | None = None  # with stream_capacity: the budget stream strides share

    @classmethod
    def from_options(cls, options: SimulatorOptions) -> "SimState":
        if options.transcript is not None:
            transcript = options.transcript
        else:
            transcript = DEFAULT_TRANSCRIPT_FILE.read_text(encoding="utf-8").strip()
        models = {m: ModelState(loaded=m not in options.unloaded) for m in MODEL_TYPES}
        compute = SharedCompute(options.stream_capacity) if options.stream_capacity else None
        return cls(options=options, transcript=transcript, models=models, stream_compute=compute)

    def count(self, endpoint: str) -> None:
        self.requests[endpoint] = self.requests.get(endpoint, 0) + 1

    def leak_upload(self, path: str, size: int) -> None:
        """An upload left in the server's temp directory for good, logged as upstream logs it (twice)."""
        self.leaked_files += 1
        self.leaked_bytes += size
        for _ in range(2):
            log.warning("Failed to cleanup temp file", path=path, error="'str' object has no attribute 'exists'")

    def count_ws_message(self, endpoint: str, kind: str) -> None:
        counts = self.ws_messages.setdefault(endpoint, {})
        counts[kind] = counts.get(kind, 0) + 1

    def count_ws_close(self, endpoint: str, code: int | None) -> None:
        counts = self.ws_closes.setdefault(endpoint, {})
        key = str(code) if code is not None and 1000 <= code <= 4999 else "none"
        counts[key] = counts.get(key, 0) + 1

    def fault(self, endpoint: str) -> dict[str, Any]:
        return self.faults.get(endpoint, {})

    def use_model(self, model_type: str) -> None:
        state = self.models[model_type]
        state.total_requests += 1
        state.last_used = utc_now_iso()

    def total_loaded(self) -> int:
        return sum(1 for m in self.models.values() if m.loaded)

    def spoken_transcript(self, endpoint: str) -> str:
        """The transcript as the 'model' hears it, with any substitute_chars fault applied."""
        n = min(int(self.fault(endpoint).get("substitute_chars", 0)), len(self.transcript))
        swapped = [SUBSTITUTE_FALLBACK if ch == SUBSTITUTE_CHAR else SUBSTITUTE_CHAR for ch in self.transcript[:n]]
        return "".join(swapped) + self.transcript[n:]


SIM_KEY = web.AppKey("whoasr_simulator", SimState)


def sim_of(request: web.Request) -> SimState:
    """The state of the simulator application serving this request."""
    return request.app[SIM_KEY]
