"""The `batch` probe: file recognition as the seed's batch service uses it (v1 /recognize, v2
/offline/recognize), with the configured batch sizes and hotwords, checked for accuracy.
"""

from __future__ import annotations

from typing import Any

from exporter.accuracy import character_error_rate, normalize
from exporter.client import Reply
from exporter.probes import ProbeContext
from exporter.probes.common import audio_form, check, expect_ok, json_object, post, run_checked, shape_error
from exporter.results import ProbeResult

KIND = "batch"


async def run(ctx: ProbeContext) -> ProbeResult:
    return await run_checked(ctx, KIND, _probe)


async def _probe(ctx: ProbeContext, result: ProbeResult) -> None:
    settings, clip = ctx.settings, ctx.clip
    result.expected_transcript = clip.transcript
    form = audio_form(
        clip, "file",
        batch_size_s=str(settings.batch_size_s),
        batch_size_threshold_s=str(settings.batch_size_threshold_s),
        hotword=",".join(settings.hotwords) if settings.hotwords else None,
    )
    reply = await post(ctx, result, KIND, form=form)
    expect_ok(reply)
    result.audio_seconds = clip.duration_seconds
    result.processing_seconds = reply.elapsed

    result.transcript = transcript = _transcript(reply, json_object(reply))
    ctx.trace(f"transcript {transcript!r}")
    # Measured before any check, so that an empty answer still counts as every character wrong.
    accuracy = character_error_rate(clip.transcript, transcript)
    result.cer = accuracy.cer
    result.character_errors = accuracy.character_errors
    result.reference_characters = accuracy.reference_characters

    heard = bool(transcript.strip())
    check(ctx, result, "transcript", heard, f"{len(transcript)} characters" if heard else "the transcript is empty",
          reason="empty_transcript")
    check(ctx, result, "cer", accuracy.cer <= settings.max_cer,
          f"CER {accuracy.cer:.3f} ({accuracy.character_errors}/{accuracy.reference_characters} characters wrong), "
          f"bound {settings.max_cer:g}", reason="accuracy")

    if settings.expect_hotwords and settings.hotwords:
        spoken = normalize(transcript)
        missing = [word for word in settings.hotwords if normalize(word) not in spoken]
        detail = f"missing hotwords: {', '.join(missing)}" if missing else f"all {len(settings.hotwords)} present"
        check(ctx, result, "hotwords", not missing, detail)


def _transcript(reply: Reply, document: dict[str, Any]) -> str:
    """`results[].text` joined in order (current servers), else a top-level `text` (documented schema)."""
    results = document.get("results")
    if isinstance(results, list):
        texts = [item.get("text") if isinstance(item, dict) else None for item in results]
        if not all(isinstance(text, str) for text in texts):
            raise shape_error(reply, "results[] entries must be objects with a text string")
        return "".join(texts)
    if isinstance(document.get("text"), str):
        return document["text"]
    raise shape_error(reply, "the answer has neither a results list nor a text")
