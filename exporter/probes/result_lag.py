"""Result lag on whoAsr's voice path: for each recognition_result, its arrival minus the instant the audio
it was computed from had been fully spoken.

whoAsr runs its streaming model on 9,600-sample strides (600 ms), at most one per `audio_chunk` message,
and a message of at most 600 ms completes at most one stride. So stride s ends with sample (s+1)*9,600,
spoken at speech start + (s+1)*0.6 s, and it can run only once the frame holding that sample was sent.
A result does not say which stride it came from (strides that yield no text send nothing), but the
server answers strides in order, one model call each. So each partial result is attributed to the oldest
stride that had been sent when it arrived, that no earlier result claimed and whose audio holds speech
(the clip is known: a stride of silence yields no words, so it is skipped). On a server that falls
behind, results keep coming for strides long sent and the lag grows as it truly does; attributing a
result to the newest stride sent instead would cap every partial lag below one stride (600 ms) however
far behind the server is. The estimate is exact for a server that answers every stride with speech; one
that hears no words in a stride with speech makes later results of that session look up to a stride
later than they are. The final result is computed from all the audio, spoken in full at speech start +
the clip's length.

The lag is then the server's own delay (queueing plus one model call), free of the 600 ms the model
waits to fill a stride. Plain functions and data, so that load tools can reuse them.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

SAMPLE_RATE = 16000
STREAM_STRIDE_SAMPLES = 9600
SPEECH_WINDOW_SAMPLES = 160  # 10 ms
SPEECH_RMS = 0.01  # about -40 dBFS: a stride without a louder 10 ms window holds no words to hear
MAX_RESULTS = 1000  # a session's lags kept at most (whoAsr sends one result per stride; a liar may send more)


@dataclass
class ResultLagClock:
    """The timeline of one real-time session: when each stride had been sent, and which results claimed which."""

    speech_start: float  # loop time at which frame 0's audio begins
    total_samples: int
    stride_samples: int = STREAM_STRIDE_SAMPLES
    sample_rate: int = SAMPLE_RATE
    samples_sent: int = 0
    stride_sent_at: list[float] = field(default_factory=list)  # per stride: when the frame completing it left
    last_claimed: int = -1  # the newest stride a result has been attributed to
    speech: Optional[Sequence[bool]] = None  # per full stride: holds speech; None: assume every stride does

    def frame_sent(self, samples: int, at: float) -> None:
        """Records one audio_chunk of `samples` sent at `at` (loop time)."""
        self.samples_sent += samples
        while (len(self.stride_sent_at) + 1) * self.stride_samples <= self.samples_sent:
            self.stride_sent_at.append(at)

    def spoken_at(self, stride: int) -> float:
        """The instant the last sample of `stride` had been spoken."""
        return self.speech_start + (stride + 1) * self.stride_samples / self.sample_rate

    def lag(self, at: float, is_final: bool) -> Optional[float]:
        """The lag of a result arriving at `at`; None when no stride is left it could come from."""
        if is_final:
            return at - (self.speech_start + self.total_samples / self.sample_rate)
        newest = bisect.bisect_right(self.stride_sent_at, at) - 1
        if newest <= self.last_claimed:
            return None  # more results than strides sent: nothing to measure from
        candidates = range(self.last_claimed + 1, newest + 1)
        stride = next((s for s in candidates if self._has_speech(s)), candidates[0])
        self.last_claimed = stride
        return at - self.spoken_at(stride)

    def _has_speech(self, stride: int) -> bool:
        return self.speech is None or stride >= len(self.speech) or bool(self.speech[stride])


def speech_strides(samples: np.ndarray, stride_samples: int = STREAM_STRIDE_SAMPLES) -> tuple[bool, ...]:
    """Per full stride of the clip: whether some 10 ms of it is louder than SPEECH_RMS."""
    strides = len(samples) // stride_samples
    if strides == 0:
        return ()
    audio = np.nan_to_num(samples[:strides * stride_samples].astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    windows = audio.reshape(strides, stride_samples // SPEECH_WINDOW_SAMPLES, SPEECH_WINDOW_SAMPLES)
    loudest = np.sqrt(np.mean(windows * windows, axis=2)).max(axis=1)
    return tuple(bool(value > SPEECH_RMS) for value in loudest)
