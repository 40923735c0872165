"""The `vad` probe (v1 /vad, v2 /vad/detect): the clip's speech segments must be plausible.

Plausible means a segment count and a share of speech in the clip within configured bounds; exact
boundaries differ between VAD models and are not checked. whoAsr answers 503 when the VAD model is not
loaded (it never loads it on demand), which is model_not_loaded.
"""

from __future__ import annotations

from typing import Any

from exporter.client import Reply
from exporter.probes import ProbeContext
from exporter.probes.common import audio_form, check, expect_ok, is_number, json_object, post, run_checked, shape_error
from exporter.results import ProbeResult

KIND = "vad"


async def run(ctx: ProbeContext) -> ProbeResult:
    return await run_checked(ctx, KIND, _probe)


async def _probe(ctx: ProbeContext, result: ProbeResult) -> None:
    settings, clip = ctx.settings, ctx.clip
    reply = await post(ctx, result, KIND, form=audio_form(clip, "file"))
    expect_ok(reply)
    result.audio_seconds = clip.duration_seconds
    result.processing_seconds = reply.elapsed
    segments = _segments(reply, json_object(reply))
    ctx.trace(f"segments {segments}")

    count = len(segments)
    check(ctx, result, "segment_count", settings.min_segments <= count <= settings.max_segments,
          f"{count} segments, expected {settings.min_segments} to {settings.max_segments}")
    speech = sum(end - start for start, end in segments) / 1000.0
    ratio = speech / clip.duration_seconds
    check(ctx, result, "speech_ratio", settings.min_speech_ratio <= ratio <= settings.max_speech_ratio,
          f"{speech:.2f}s of speech in {clip.duration_seconds:.2f}s (ratio {ratio:.2f}), expected "
          f"{settings.min_speech_ratio:g} to {settings.max_speech_ratio:g}")


def _segments(reply: Reply, document: dict[str, Any]) -> list[tuple[float, float]]:
    """`segments` (current servers) or `speech_segments` (documented schema): [[start_ms, end_ms], ...]."""
    raw = document.get("segments", document.get("speech_segments"))
    if not isinstance(raw, list):
        raise shape_error(reply, "the answer has no segments list")
    segments = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 2 and all(is_number(v) for v in item)
                and 0 <= item[0] <= item[1]):
            raise shape_error(reply, f"malformed segment {str(item)[:40]}: expected [start_ms, end_ms]")
        segments.append((float(item[0]), float(item[1])))
    return segments
