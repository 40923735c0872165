"""Audio handling for the fake models: decoding, a deterministic energy VAD, timestamps, punctuation.

Nothing here is speech recognition: the 'model' always hears the configured transcript whenever the
audio holds speech-like energy. That makes every answer predictable, which is what tests need.
"""

from __future__ import annotations

import base64
import binascii
import io
import wave

import numpy as np

FRAME_MS = 10
SPEECH_RMS = 0.01            # about -40 dBFS: quieter frames count as silence
MAX_END_SILENCE_MS = 800     # fsmn-vad's default: a segment ends after this much silence
PUNCTUATION_MARKS = "，。！？、；：,.!?;:"


def decode_wav(content: bytes) -> tuple[np.ndarray, int]:
    """WAV bytes -> mono float32 samples in [-1, 1] and the sample rate; raises on anything else."""
    with wave.open(io.BytesIO(content), "rb") as wav:
        channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
        raw = wav.readframes(wav.getnframes())
    if width == 1:
        samples = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        bytes3 = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3)
        ints = (bytes3[:, 0].astype(np.int32) | (bytes3[:, 1].astype(np.int32) << 8)
                | (bytes3[:, 2].astype(np.int32) << 16))
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        samples = ints.astype(np.float32) / float(1 << 23)
    elif width == 4:
        samples = (np.frombuffer(raw, dtype="<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    else:
        raise wave.Error(f"unsupported sample width: {width}")
    if channels > 1:
        samples = samples[: len(samples) // channels * channels].reshape(-1, channels).mean(axis=1)
    return samples.astype(np.float32), rate


def decode_chunk(data: str) -> np.ndarray:
    """A WebSocket audio_chunk payload: base64 of float32 little-endian PCM (as whoAsr reads it).

    Like the real server, int16 input is not detected: its bytes are simply misread as float32.
    Undecodable base64 gives an empty array (the chunk is ignored).
    """
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError, TypeError):
        return np.zeros(0, dtype=np.float32)
    if len(raw) % 4 == 0:
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if len(raw) % 2 == 0:  # the real server's fallback when float32 fails
        return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    return np.zeros(0, dtype=np.float32)


def is_garbled(samples: np.ndarray) -> bool:
    """Samples no microphone produces (int16 bytes read as float32 come out huge or NaN)."""
    if samples.size == 0:
        return False
    with np.errstate(invalid="ignore", over="ignore"):
        return bool(not np.all(np.isfinite(samples)) or np.max(np.abs(samples)) > 1.5)


def _speech_frames(samples: np.ndarray, rate: int) -> np.ndarray:
    frame = max(1, rate * FRAME_MS // 1000)
    usable = len(samples) // frame * frame
    if usable == 0:
        return np.zeros(0, dtype=bool)
    frames = np.nan_to_num(samples[:usable].astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    frames = np.clip(frames, -1.0, 1.0).reshape(-1, frame)
    return np.sqrt(np.mean(frames * frames, axis=1)) > SPEECH_RMS


class EnergyVad:
    """A streaming energy detector with fsmn-vad's output conventions.

    feed() returns the events found in that audio: [start, -1] when speech begins, [-1, end] when
    it ends, [start, end] when both happen within one call. Times are ms from the stream start.
    A segment ends after MAX_END_SILENCE_MS of silence, or when feed(final=True) is called.
    """

    def __init__(self, rate: int = 16000):
        self.rate = rate
        self.frames_seen = 0
        self.carry = np.zeros(0, dtype=np.float32)
        self.start_ms: int | None = None    # start of the open segment, if any
        self.start_reported = False
        self.last_speech_ms = 0             # end of the latest speech frame

    def feed(self, samples: np.ndarray, final: bool = False) -> list[list[int]]:
        samples = np.concatenate([self.carry, samples.astype(np.float32)])
        frame = max(1, self.rate * FRAME_MS // 1000)
        usable = len(samples) // frame * frame
        self.carry = samples[usable:]
        events: list[list[int]] = []
        for is_speech in _speech_frames(samples[:usable], self.rate):
            t0 = self.frames_seen * FRAME_MS
            self.frames_seen += 1
            if is_speech:
                if self.start_ms is None:
                    self.start_ms, self.start_reported = t0, False
                self.last_speech_ms = t0 + FRAME_MS
            elif self.start_ms is not None and t0 + FRAME_MS - self.last_speech_ms >= MAX_END_SILENCE_MS:
                events.append(self._close())
        if self.start_ms is not None:
            if final:
                events.append(self._close())
            elif not self.start_reported:
                events.append([self.start_ms, -1])
                self.start_reported = True
        return events

    def _close(self) -> list[int]:
        event = [-1 if self.start_reported else self.start_ms, self.last_speech_ms]
        self.start_ms, self.start_reported = None, False
        return event


def speech_segments(samples: np.ndarray, rate: int) -> list[list[int]]:
    """Whole-file VAD: complete [start_ms, end_ms] segments (one call, so no open ends)."""
    return EnergyVad(rate).feed(samples, final=True)


def char_timestamps(n_chars: int, segments: list[list[int]]) -> list[list[int]]:
    """Spreads n characters evenly over the speech (first start to last end), one [start, end] each."""
    if n_chars == 0 or not segments:
        return []
    begin, end = segments[0][0], segments[-1][1]
    step = (end - begin) / n_chars
    return [[int(begin + i * step), int(begin + (i + 1) * step)] for i in range(n_chars)]


def punctuate(text: str, every: int = 4) -> str:
    """What ct-punc would do, roughly: a comma every few characters and a full stop at the end."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return text
    out: list[str] = []
    run = 0
    for ch in chars:
        out.append(ch)
        run = 0 if ch in PUNCTUATION_MARKS else run + 1
        if run == every:
            out.append("，")
            run = 0
    while out and out[-1] == "，":
        out.pop()
    if out[-1] not in PUNCTUATION_MARKS:
        out.append("。")
    return "".join(out)
