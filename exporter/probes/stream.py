"""The `stream` probe: the voice path, as the seed's microphone client uses it (WS /ws/{client_id}).

It streams the clip in real time and measures per message, as streaming-ASR benchmarks do: connect,
first audio frame -> first recognition_result, stop_recording -> "Recording stopped", the partial
results, and the CER of the transcript (whoAsr's results are incremental pieces: joined in order).

`pace: fast` sends the frames as fast as the server reads them. It is a stress mode: whoAsr handles at
most one 600 ms stride per message, so the server sees a very different load than from a microphone,
and the latencies it reports are not what a user would feel.
"""

from __future__ import annotations

from typing import Any, Optional

from exporter.accuracy import character_error_rate
from exporter.probes import ProbeContext
from exporter.probes.websocket import RECOGNITION, Pacing, run_streaming_probe
from exporter.results import Failure, ProbeResult, redact

KIND = "stream"
MAX_TRANSCRIPT_CHARS = 10_000  # whoAsr's transcript of a probe clip is a few dozen characters
TRACE_TEXT_CHARS = 200


async def run(ctx: ProbeContext, *, pacing: Optional[Pacing] = None) -> ProbeResult:
    """One session; `pacing` (benchmarks only) collects the lateness of every frame."""
    max_cer = ctx.settings.max_cer
    transcript = Transcript()

    def read_result(message: dict[str, Any], result: ProbeResult) -> tuple[bool, str]:
        text, is_final = message.get("text"), message.get("is_final")
        if not isinstance(text, str) or not isinstance(is_final, bool):
            raise Failure("bad_response", f"recognition_result without text or is_final: {redact(str(message), 80)}")
        transcript.add(text)
        return is_final, repr(text[:TRACE_TEXT_CHARS])

    def finish(result: ProbeResult) -> None:
        # Incremental pieces, joined once the session ended: what came before a failure is kept.
        result.transcript = transcript.text() if transcript.pieces else None

    def check(result: ProbeResult, results: int) -> None:
        _check(ctx, result, results, max_cer)

    return await run_streaming_probe(ctx, KIND, RECOGNITION, read_result, check,
                                     realtime=ctx.settings.pace == "realtime", expected_transcript=ctx.clip.transcript,
                                     pacing=pacing, finish=finish)


class Transcript:
    """whoAsr's incremental pieces, gathered in linear time and bounded: a server that keeps sending text
    cannot make the exporter copy or hold more than MAX_TRANSCRIPT_CHARS."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.length = 0

    def add(self, text: str) -> None:
        room = MAX_TRANSCRIPT_CHARS - self.length
        if room > 0:
            piece = text[:room]
            self.pieces.append(piece)
            self.length += len(piece)

    def text(self) -> str:
        return "".join(self.pieces)


def _check(ctx: ProbeContext, result: ProbeResult, results: int, max_cer: float) -> None:
    """After a complete session: some result, some text, and a CER within bounds, in that order."""
    if not results:
        raise Failure("no_result", "the session ended without any recognition_result", step="transcript")
    if not result.transcript.strip():
        raise Failure("empty_transcript", f"{results} results, all without text", step="transcript")
    accuracy = character_error_rate(result.expected_transcript, result.transcript)
    result.cer = accuracy.cer
    result.character_errors = accuracy.character_errors
    result.reference_characters = accuracy.reference_characters
    ctx.trace(f"transcript {result.transcript!r}: CER {accuracy.cer:.3f} "
              f"({accuracy.character_errors}/{accuracy.reference_characters})")
    if accuracy.cer > max_cer:
        raise Failure("accuracy", f"CER {accuracy.cer:.3f} above {max_cer:g}: {redact(result.transcript, 80)!r}",
                      step="accuracy")
