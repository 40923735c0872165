"""The `stream_vad` probe: streaming voice-activity detection on WS /vad/ws/{client_id}.

The same real-time session as `stream` (start_vad, paced audio frames, stop_vad, then "VAD stopped");
it passes if the VAD reported at least one segment for a clip that contains speech. whoAsr refuses the
upgrade with HTTP 403 when the VAD model is not loaded, which is model_not_loaded here.
"""

from __future__ import annotations

from typing import Any, Optional

from exporter.probes import ProbeContext
from exporter.probes.websocket import VAD, Pacing, run_streaming_probe
from exporter.results import Check, Failure, ProbeResult, redact

KIND = "stream_vad"


async def run(ctx: ProbeContext, *, pacing: Optional[Pacing] = None) -> ProbeResult:
    segments = 0  # segment reports received (only their number is checked)

    def read_result(message: dict[str, Any], result: ProbeResult) -> tuple[bool, str]:
        nonlocal segments
        reported, is_final = message.get("segments"), message.get("is_final", False)
        if not (isinstance(reported, list) and isinstance(is_final, bool) and all(_is_segment(s) for s in reported)):
            raise Failure("bad_response", f"malformed vad_result: {redact(str(message), 80)}")
        segments += len(reported)
        return is_final, str(reported)

    def check(result: ProbeResult, results: int) -> None:
        ok = segments > 0
        detail = f"{segments} segment reports for {ctx.clip.duration_seconds:.2f} s of audio"
        result.checks.append(Check("segments", ok, detail))
        ctx.trace(f"check segments: {'ok' if ok else 'FAILED'} ({detail})")
        if not ok:
            raise Failure("check_failed", detail, step="segments")

    # StreamVadProbe has no `pace`: a VAD session is always paced like a microphone.
    realtime = getattr(ctx.settings, "pace", "realtime") == "realtime"
    return await run_streaming_probe(ctx, KIND, VAD, read_result, check, realtime=realtime, pacing=pacing)


def _is_segment(item: Any) -> bool:
    """[start_ms, end_ms] with -1 for an end (or start) not known yet, as FunASR's streaming VAD reports."""
    return (isinstance(item, list) and len(item) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in item))
