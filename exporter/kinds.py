"""The registry of run kinds: the two scrapes of a target's state and the synthetic probes.

Everything that differs between kinds and is not the probe's own code lives here, once: the path per
whoAsr API generation, the model a probe needs and whether whoAsr would load it on demand, the default
schedule, the settings model of `probes.<kind>`, and whether a target runs it when it lists no probes.
Config, client, probes, state, rules and the command line read this table; adding a probe kind means
adding its module under exporter/probes/ and an entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ProbeSettings(BaseModel):
    """Base of a `probes.<kind>` section: unknown keys are errors, values immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BatchProbe(ProbeSettings):
    clip: str = "default"
    hotwords: tuple[str, ...] = ()
    expect_hotwords: bool = False
    max_cer: float = Field(default=0.2, ge=0, le=1)
    allow_model_load: bool = False
    batch_size_s: int = Field(default=300, ge=1)
    batch_size_threshold_s: int = Field(default=60, ge=1)


class PunctuationProbe(ProbeSettings):
    text: str = Field(default="今天天气很好我们去公园散步然后一起吃午饭", min_length=2)
    allow_model_load: bool = False


class VadProbe(ProbeSettings):
    clip: str = "default"
    min_segments: int = Field(default=1, ge=0)
    max_segments: int = Field(default=20, ge=1)
    min_speech_ratio: float = Field(default=0.3, ge=0, le=1)  # speech time / clip duration
    max_speech_ratio: float = Field(default=1.05, ge=0, le=2)

    @model_validator(mode="after")
    def _bounds(self) -> "VadProbe":
        if self.min_segments > self.max_segments:
            raise ValueError("min_segments must not exceed max_segments")
        if self.min_speech_ratio > self.max_speech_ratio:
            raise ValueError("min_speech_ratio must not exceed max_speech_ratio")
        return self


class TimestampProbe(ProbeSettings):
    clip: str = "short"  # v2 keeps every upload on disk: the shortest clip that still checks alignment


class StreamProbe(ProbeSettings):
    clip: str = "default"
    frame_ms: int = Field(default=100, ge=10, le=600)
    pace: Literal["realtime", "fast"] = "realtime"
    client_id_prefix: str = Field(default="whoasr-exporter", pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    max_cer: float = Field(default=0.2, ge=0, le=1)


class StreamVadProbe(ProbeSettings):
    clip: str = "default"
    frame_ms: int = Field(default=100, ge=10, le=600)
    client_id_prefix: str = Field(default="whoasr-exporter-vad", pattern=r"^[A-Za-z0-9_.-]{1,40}$")


@dataclass(frozen=True)
class Kind:
    name: str
    v1_path: str  # HTTP path, or the WebSocket path the client id is appended to
    v2_path: str
    interval: float  # default schedule, seconds
    timeout: float
    scrape: bool = False  # reads the target's state (health, model_info) rather than probing a service
    settings: Optional[type[ProbeSettings]] = None  # the probes.<kind> section; scrapes have none
    model: Optional[str] = None  # the whoAsr model type the probe needs
    loads_on_demand: bool = False  # whoAsr loads that model on the request, blocking the server for minutes
    default: bool = False  # run on a target that lists no probes
    measures_accuracy: bool = False  # counts reference characters and character errors (CER)
    voice_path: bool = False  # has the whoasr_stream_* histograms

    def path(self, api: str) -> str:
        return self.v1_path if api == "v1" else self.v2_path

    @property
    def same_path(self) -> bool:
        """True when both generations use one path, so it is known before the generation is detected."""
        return self.v1_path == self.v2_path


# Paths: /work/shared/whoasr-api.md. The order is the canonical one (tables, rules, `--module all`).
_KINDS = (
    # All but 2 s of the timeout may go to the wait for the target's gate (runner.HEALTH_RESERVE): behind
    # a real-time stream session (the built-in clip: ~6 s); the rest to the ~1 s call.
    Kind("health", "/health", "/health", interval=60, timeout=15, scrape=True),
    Kind("model_info", "/model/info", "/model/info", interval=15, timeout=5, scrape=True),
    Kind("batch", "/recognize", "/offline/recognize", interval=60, timeout=30, settings=BatchProbe,
         model="offline_asr", loads_on_demand=True, default=True, measures_accuracy=True),
    Kind("stream", "/ws/", "/ws/", interval=60, timeout=30, settings=StreamProbe, model="streaming_asr",
         default=True, measures_accuracy=True, voice_path=True),
    Kind("punctuation", "/punctuate", "/punctuation/add", interval=60, timeout=10, settings=PunctuationProbe,
         model="punctuation", loads_on_demand=True, default=True),
    Kind("vad", "/vad", "/vad/detect", interval=60, timeout=15, settings=VadProbe, model="vad", default=True),
    # Not a default: whoAsr v2 never deletes a /timestamp/predict upload (whoasr-api.md), so each run
    # leaves its clip on the server's disk for good; only where an operator lists it.
    Kind("timestamp", "/timestamp", "/timestamp/predict", interval=120, timeout=30, settings=TimestampProbe,
         model="timestamp"),
    Kind("stream_vad", "/vad/ws/", "/vad/ws/", interval=120, timeout=30, settings=StreamVadProbe, model="vad"),
)

KINDS: dict[str, Kind] = {kind.name: kind for kind in _KINDS}
SCRAPE_KINDS: tuple[str, ...] = tuple(kind.name for kind in _KINDS if kind.scrape)
PROBE_KINDS: tuple[str, ...] = tuple(kind.name for kind in _KINDS if not kind.scrape)
DEFAULT_PROBES: tuple[str, ...] = tuple(kind.name for kind in _KINDS if kind.default)
# What /probe?module= and `probe --module` accept.
MODULES: tuple[str, ...] = (*PROBE_KINDS, *SCRAPE_KINDS)


def is_scrape(name: str) -> bool:
    kind = KINDS.get(name)
    return kind is not None and kind.scrape
