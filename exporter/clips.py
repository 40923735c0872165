"""Probe clips: known audio with a known transcript, read once and kept in memory.

A clip is sent as-is (its original file bytes) for file recognition and VAD, and as 16 kHz mono
float32 samples for streaming, resampled if the file has another rate or more channels.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import soundfile
import soxr

from exporter.config import BUILTIN_CLIPS, Config

SAMPLE_RATE = 16000
DEFAULT_CLIP = "default"


@dataclass(frozen=True)
class Clip:
    name: str
    transcript: str
    file_bytes: bytes  # the file as stored: what file uploads send
    samples: np.ndarray  # float32 mono at 16 kHz: what streaming sends
    source_rate: int

    @property
    def duration_seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


class ClipError(Exception):
    pass


def decode(name: str, file_bytes: bytes, transcript: str) -> Clip:
    try:
        data, rate = soundfile.read(io.BytesIO(file_bytes), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise ClipError(f"clip {name!r}: cannot decode audio: {exc}") from None
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE).astype(np.float32)
    if len(mono) == 0:
        raise ClipError(f"clip {name!r}: no audio samples")
    return Clip(name=name, transcript=transcript.strip(), file_bytes=file_bytes, samples=np.ascontiguousarray(mono),
                source_rate=int(rate))


@functools.lru_cache(maxsize=len(BUILTIN_CLIPS))
def builtin_clip(name: str = DEFAULT_CLIP) -> Clip:
    """A clip shipped in exporter/data: 'default' (5.2 s) or 'short' (1.3 s, for the timestamp probe)."""
    if name not in BUILTIN_CLIPS:
        raise ClipError(f"no built-in clip {name!r}")
    data = resources.files("exporter") / "data"
    return decode(name, (data / f"{name}.wav").read_bytes(), (data / f"{name}.txt").read_text("utf-8"))


def builtin_clip_bytes(name: str) -> int:
    """Size of a built-in clip's file, without decoding it (check-config's cost estimate)."""
    return len((resources.files("exporter") / "data" / f"{name}.wav").read_bytes())


@functools.lru_cache(maxsize=32)
def _file_clip(name: str, path: str, transcript: str, mtime: float) -> Clip:
    return decode(name, Path(path).read_bytes(), transcript)


def load_clip(config: Config, name: str) -> Clip:
    """The named clip of a config ('default' and 'short' are built in); cached until the file changes."""
    if name in BUILTIN_CLIPS:
        return builtin_clip(name)
    spec = config.clips.get(name)
    if spec is None:
        raise ClipError(f"unknown clip {name!r}")
    try:
        mtime = Path(spec.path).stat().st_mtime
    except OSError as exc:
        raise ClipError(f"clip {name!r}: cannot read {spec.path}: {exc.strerror}") from None
    return _file_clip(name, spec.path, spec.transcript, mtime)


def clip_from_file(path: str, transcript: str) -> Clip:
    """A clip given on the command line."""
    try:
        return decode(Path(path).name, Path(path).read_bytes(), transcript)
    except OSError as exc:
        raise ClipError(f"cannot read {path}: {exc.strerror}") from None
