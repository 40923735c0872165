"""The `timestamp` probe (v2 /timestamp/predict): forced alignment of the clip's transcript.

v1's /timestamp always answers 500 (upstream bug), so on v1 the probe is reported as not applicable
rather than failing forever. On v2 whoAsr keeps only `text/start/end/confidence` of each fa-zh result,
and fa-zh's output has no start/end, so a healthy server answers one result whose text is the aligned
characters and whose times are 0. The probe therefore checks that the whole text was aligned and that
any times given are well formed; it cannot check the times themselves.
"""

from __future__ import annotations

from typing import Any

from exporter.accuracy import normalize
from exporter.client import Reply
from exporter.probes import ProbeContext
from exporter.probes.common import audio_form, check, expect_ok, is_number, json_object, post, run_checked, shape_error
from exporter.results import Check, Failure, ProbeResult

KIND = "timestamp"
DAY_SECONDS = 86400
V1_DETAIL = "v1 has no usable timestamp endpoint (its /timestamp always answers 500)"


async def run(ctx: ProbeContext) -> ProbeResult:
    return await run_checked(ctx, KIND, _probe)


async def _probe(ctx: ProbeContext, result: ProbeResult) -> None:
    clip = ctx.clip
    result.expected_transcript = clip.transcript
    try:
        api = await ctx.client.detect_api(ctx.remaining(), ctx.trace)
    except Failure as failure:
        failure.step = failure.step or "detect_api"
        raise
    if api == "v1":
        result.applicable = False
        result.detail = V1_DETAIL
        ctx.trace(f"not applicable: {V1_DETAIL}")
        return

    reply = await post(ctx, result, KIND, form=audio_form(clip, "audio_file", text_content=clip.transcript))
    expect_ok(reply)
    result.audio_seconds = clip.duration_seconds
    result.processing_seconds = reply.elapsed
    items = _items(reply, json_object(reply))
    result.transcript = aligned = "".join(text for text, _ in items)
    ctx.trace(f"aligned {aligned!r}, {sum(len(times) for _, times in items)} time spans")

    check(ctx, result, "results", bool(items), f"{len(items)} results" if items else "no timestamp results")
    expected, got = normalize(clip.transcript), normalize(aligned)
    check(ctx, result, "text_aligned", got == expected,
          f"all {len(expected)} characters aligned" if got == expected
          else f"aligned text {aligned[:60]!r} does not match the transcript {clip.transcript[:60]!r}")
    spans = [span for _, times in items for span in times]
    if spans and all(end == 0 for _, end in spans):
        # Informational only: that is what every v2 server answers today (see the module docstring).
        result.checks.append(Check("times", True, "all times are 0: whoAsr v2 drops fa-zh's timestamps"))
        ctx.trace("all times are 0 (whoAsr v2 drops fa-zh's timestamps): not checked")


def _items(reply: Reply, document: dict[str, Any]) -> list[tuple[str, list[tuple[float, float]]]]:
    """Each result as (text, [(start, end), ...]): `text` (current) or `word` (documented), with `start`/`end`
    and, where a server keeps fa-zh's output, a `timestamp` list of [start, end] pairs."""
    results = document.get("results")
    if not isinstance(results, list):
        raise shape_error(reply, "the answer has no results list")
    items = []
    for entry in results:
        text = entry.get("text", entry.get("word")) if isinstance(entry, dict) else None
        if not isinstance(text, str):
            raise shape_error(reply, "results[] entries must be objects with a text (or word) string")
        spans = [_span(reply, entry.get("start"), entry.get("end"))] if "start" in entry or "end" in entry else []
        pairs = entry.get("timestamp", [])
        if not isinstance(pairs, list):
            raise shape_error(reply, "results[].timestamp must be a list of [start, end] pairs")
        for pair in pairs:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise shape_error(reply, f"malformed time span {str(pair)[:40]}: expected [start, end]")
            spans.append(_span(reply, *pair))
        items.append((text, spans))
    return items


def _span(reply: Reply, start: Any, end: Any) -> tuple[float, float]:
    if not (is_number(start) and is_number(end) and 0 <= start <= end):
        raise shape_error(reply, f"malformed time span start={start!r} end={end!r}: expected 0 <= start <= end")
    return float(start), float(end)


def upload_leak(interval_seconds: float, clip_bytes: int) -> tuple[int, int]:
    """(files, bytes) a v2 server keeps per day from this probe: v2's /timestamp/predict never deletes an
    upload, whether the request succeeds or not (whoasr-api.md)."""
    files = int(DAY_SECONDS // interval_seconds)
    return files, files * clip_bytes


def upload_leak_warnings(config) -> list[str]:
    """One line per target that runs the timestamp probe, with what it costs the server per day."""
    from pathlib import Path

    from exporter.clips import builtin_clip_bytes
    from exporter.config import BUILTIN_CLIPS

    clip = config.probes.timestamp.clip
    clip_bytes = builtin_clip_bytes(clip) if clip in BUILTIN_CLIPS else Path(config.clips[clip].path).stat().st_size
    interval = config.schedules.timestamp.interval
    files, size = upload_leak(interval, clip_bytes)
    return [f"warning: targets[{i}] ({target.name}) runs the timestamp probe: whoAsr v2 never deletes its uploads, "
            f"so every run (each {interval:g} s, clip {clip!r} of {clip_bytes / 1000:.0f} kB) leaves a file in the "
            f"server's temp directory: {files} files, {size / 1e6:.1f} MB a day, kept until someone deletes them "
            "(v1: not applicable, no cost)"
            for i, target in enumerate(config.targets) if KIND in target.enabled_probes()]
