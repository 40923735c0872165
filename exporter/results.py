"""Plain result objects: what one run of a kind (a scrape or a probe) observed. Every run ends in one
`ProbeResult`, which the sinks (state and metrics, history, log) take in."""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

from exporter.kinds import is_scrape

# The closed set of failure reasons (conventions.md). A failed run carries exactly one: the first that applies.
REASONS = (
    "connect_error",
    "timeout",
    "tls_error",
    "http_4xx",
    "http_5xx",
    "model_not_loaded",
    "bad_response",
    "server_error",
    "handshake_rejected",
    "closed_early",
    "no_result",
    "empty_transcript",
    "accuracy",
    "check_failed",
)

ERROR_BODY_CHARS = 200

_REDACTIONS = (
    # Server temp paths (whoAsr's 500 texts include them) and anything that looks like a secret.
    (re.compile(r"(/(?:tmp|var|home|root|private|Users)/[^\s'\"]*)"), "<path>"),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1<redacted>"),
    (re.compile(r"(?i)((?:token|password|secret|api[_-]?key)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"), r"\1<redacted>"),
)


def redact(text: str, limit: int = ERROR_BODY_CHARS) -> str:
    """Bounded, secret- and path-free excerpt of a server's text, safe to show and log."""
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    text = " ".join(text.split())
    return text[:limit]


TRACE_LINE_CHARS = 300  # a server's message in a trace line is cut here
TRACE_HEAD_LINES = 200  # the first lines of a run are kept ...
TRACE_TAIL_LINES = 100  # ... and its last ones; those between are counted


class Trace:
    """A readable log of one run (requests, statuses, messages, timings, checks) for &debug=true.

    Bounded whatever the server sends: lines are cut to TRACE_LINE_CHARS, and of a long run the first
    TRACE_HEAD_LINES and the last TRACE_TAIL_LINES lines are kept."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._start = clock()
        self._head: list[str] = []
        self._tail: deque[str] = deque(maxlen=TRACE_TAIL_LINES)
        self._omitted = 0

    def __call__(self, message: str) -> str:
        line = f"{self._clock() - self._start:8.3f}s  {message}"
        if len(line) > TRACE_LINE_CHARS:
            line = line[:TRACE_LINE_CHARS - 1] + "…"
        if len(self._head) < TRACE_HEAD_LINES:
            self._head.append(line)
        else:
            if len(self._tail) == TRACE_TAIL_LINES:
                self._omitted += 1
            self._tail.append(line)
        return line

    @property
    def lines(self) -> list[str]:
        omitted = [f"          ... {self._omitted} lines omitted ..."] if self._omitted else []
        return [*self._head, *omitted, *self._tail]


@dataclass
class Failure(Exception):
    """Raised inside a probe or scrape to stop at the first failing step; becomes the result's reason."""

    reason: str
    detail: str = ""
    http_status: Optional[int] = None
    error_body: Optional[str] = None
    step: Optional[str] = None

    def __post_init__(self) -> None:
        if self.reason not in REASONS:  # a bug of the exporter: raised, never `assert`ed (python -O drops those)
            raise ValueError(f"failure reason {self.reason!r} is not one of the closed set")
        super().__init__(f"{self.reason}: {self.detail}")


@dataclass
class StreamTimings:
    connect_seconds: Optional[float] = None
    first_result_seconds: Optional[float] = None
    final_result_seconds: Optional[float] = None
    partial_results: int = 0
    final_received: bool = False
    frames_sent: int = 0
    max_pacing_error_seconds: Optional[float] = None
    # Per result, in arrival order: its lag behind the speech it was computed from (probes/result_lag.py).
    # Real-time recognition sessions only; at most result_lag.MAX_RESULTS.
    result_lags: list[float] = field(default_factory=list)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class HealthState:
    """What a `/health` answer said, in base units; None where the server did not say."""

    status: Optional[str] = None
    version: Optional[str] = None
    models_loaded: dict[str, bool] = field(default_factory=dict)
    total_loaded: Optional[int] = None
    cpu_ratio: Optional[float] = None
    memory_ratio: Optional[float] = None
    memory_total_bytes: Optional[float] = None
    memory_available_bytes: Optional[float] = None
    disk_ratio: Optional[float] = None
    active_connections: Optional[float] = None
    uptime_seconds: Optional[float] = None
    model_memory_bytes: dict[str, float] = field(default_factory=dict)
    model_requests: dict[str, float] = field(default_factory=dict)


@dataclass
class ModelInfoState:
    models_loaded: dict[str, bool] = field(default_factory=dict)
    total_loaded: Optional[int] = None


@dataclass
class ProbeResult:
    target: str
    probe: str
    success: bool
    started_at: float  # unix time
    duration_seconds: float
    reason: Optional[str] = None
    detail: str = ""
    step: Optional[str] = None
    applicable: bool = True  # False: the probe does not apply to this target (e.g. timestamps on v1)
    skipped: bool = False  # True: not started within its timeout (the target's gate); counted, not a run
    http_status: Optional[int] = None
    error_body: Optional[str] = None
    transcript: Optional[str] = None
    expected_transcript: Optional[str] = None
    cer: Optional[float] = None
    character_errors: Optional[int] = None
    reference_characters: Optional[int] = None
    audio_seconds: Optional[float] = None
    processing_seconds: Optional[float] = None
    stream: Optional[StreamTimings] = None
    checks: list[Check] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    # scrapes (health, model_info): the detected API generation and what the server said
    api: Optional[str] = None
    version: Optional[str] = None
    health: Optional[HealthState] = None
    model_info: Optional[ModelInfoState] = None

    @property
    def finished_at(self) -> float:
        return self.started_at + self.duration_seconds

    def models_loaded(self) -> Optional[dict[str, bool]]:
        """A scrape's loaded flags (model_info, else health); None when it has none."""
        state = self.model_info or self.health
        return dict(state.models_loaded) if state is not None else None

    def failed_without_reason(self) -> bool:
        return not self.success and self.applicable and self.reason is None

    @property
    def real_time_factor(self) -> Optional[float]:
        if self.audio_seconds and self.processing_seconds is not None:
            return self.processing_seconds / self.audio_seconds
        return None

    def to_dict(self) -> dict[str, Any]:
        data = {
            "target": self.target,
            "probe": self.probe,
            "success": self.success,
            "applicable": self.applicable,
            "reason": self.reason,
            "detail": self.detail,
            "step": self.step,
            "started_at": self.started_at,
            "duration_seconds": round(self.duration_seconds, 6),
            "http_status": self.http_status,
            "error_body": self.error_body,
            "transcript": self.transcript,
            "expected_transcript": self.expected_transcript,
            "cer": self.cer,
            "audio_seconds": self.audio_seconds,
            "processing_seconds": self.processing_seconds,
            "real_time_factor": self.real_time_factor,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }
        if self.stream is not None:
            data["stream"] = {key: list(value) if isinstance(value, list) else value
                              for key, value in vars(self.stream).items()}
        if self.skipped:
            data["skipped"] = True
        if is_scrape(self.probe):
            data["api"] = self.api
            data["models_loaded"] = self.models_loaded()
        return data
