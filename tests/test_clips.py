"""Probe clips: the built-in one, and users' own in other rates, channel counts and formats."""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
import soundfile
import soxr

from exporter.client import TargetClient, new_session
from exporter.clips import SAMPLE_RATE, ClipError, builtin_clip, decode, load_clip
from exporter.config import TargetConfig, parse_config
from exporter.kinds import StreamProbe
from exporter.probes import ProbeContext, run_probe
from tests.support import ROOT, start_simulator

TRANSCRIPT = (ROOT / "exporter/data/default.txt").read_text("utf-8").strip()


def encoded(rate: int, channels: int, fmt: str) -> bytes:
    """The built-in clip re-encoded at another rate, channel count and container."""
    mono = builtin_clip().samples
    resampled = soxr.resample(mono, SAMPLE_RATE, rate).astype(np.float32)
    data = np.stack([resampled] * channels, axis=1) if channels > 1 else resampled
    out = io.BytesIO()
    soundfile.write(out, data, rate, format=fmt, subtype="VORBIS" if fmt == "OGG" else "PCM_16")
    return out.getvalue()


def test_builtin_clip_is_short_16k_mandarin_with_its_transcript():
    clip = builtin_clip()
    assert clip.transcript == "今天天气很好我们去公园" == TRANSCRIPT
    assert 3.0 <= clip.duration_seconds <= 6.0 and clip.source_rate == 16000
    assert clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert len(clip.samples) % 9600 != 0  # leaves audio buffered at stop: whoAsr sends a final result
    assert clip.file_bytes[:4] == b"RIFF"


@pytest.mark.parametrize("rate,channels,fmt", [(44100, 2, "WAV"), (48000, 1, "FLAC"), (8000, 1, "OGG")])
def test_other_rates_channels_and_formats_are_resampled_to_16k_mono(rate, channels, fmt):
    clip = decode("mine", encoded(rate, channels, fmt), " 你好 ")
    assert clip.source_rate == rate and clip.transcript == "你好"
    assert clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert abs(clip.duration_seconds - builtin_clip().duration_seconds) < 0.02
    # same speech: the resampled waveform follows the original closely (lossless formats only)
    if fmt != "OGG":
        n = min(len(clip.samples), len(builtin_clip().samples))
        assert np.corrcoef(clip.samples[:n], builtin_clip().samples[:n])[0, 1] > 0.95


def test_undecodable_and_empty_audio_are_clip_errors():
    with pytest.raises(ClipError, match="cannot decode audio"):
        decode("junk", b"definitely not audio", "x")
    empty = io.BytesIO()
    soundfile.write(empty, np.zeros(0, dtype=np.float32), 16000, format="WAV")
    with pytest.raises(ClipError, match="no audio samples"):
        decode("empty", empty.getvalue(), "x")


def test_configured_clip_is_cached_until_the_file_changes(tmp_path):
    path = tmp_path / "mine.flac"
    path.write_bytes(encoded(48000, 1, "FLAC"))
    config = parse_config({"clips": {"mine": {"path": str(path), "transcript": TRANSCRIPT}}})
    first = load_clip(config, "mine")
    assert load_clip(config, "mine") is first
    path.write_bytes(encoded(44100, 2, "WAV"))
    stamp = time.time() + 5
    os.utime(path, (stamp, stamp))
    second = load_clip(config, "mine")
    assert second is not first and second.source_rate == 44100
    with pytest.raises(ClipError, match="unknown clip"):
        load_clip(config, "other")


@pytest.fixture(scope="module")
def simulator(tmp_path_factory):
    proc, url = start_simulator(tmp_path_factory.mktemp("clips"), "v2")
    yield url
    proc.stop()


async def test_a_resampled_stereo_clip_streams_and_transcribes(simulator):
    clip = decode("stereo-44k", encoded(44100, 2, "WAV"), TRANSCRIPT)
    async with new_session() as session:
        client = TargetClient(session, TargetConfig(name="sim", url=simulator))
        ctx = ProbeContext(client=client, settings=StreamProbe(pace="fast"), timeout=10.0, clip=clip)
        result = await run_probe("stream", ctx)
    assert result.success, (result.reason, result.detail)
    assert result.cer == 0.0 and result.transcript == TRANSCRIPT
    assert abs(result.audio_seconds - builtin_clip().duration_seconds) < 0.02
