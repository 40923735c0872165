"""What the batch-path probes (batch, punctuation, vad, timestamp) share: the run frame, the upload
form whoAsr accepts in both generations, the status rules and small JSON readers.

Every helper raises `Failure` at the first problem; `run_checked` turns that into a failed result that
keeps whatever the probe had already measured.
"""

from __future__ import annotations

import re
from typing import Any, Awaitable, Callable, Optional

import aiohttp

from exporter.client import Reply
from exporter.clips import Clip
from exporter.probes import ProbeContext, failed
from exporter.probes.model_check import ensure_model_loaded
from exporter.results import Check, Failure, ProbeResult, redact

# v1 checks the part's Content-Type, v2 the file name's extension: this pair satisfies both.
UPLOAD_FILENAME = "probe.wav"
UPLOAD_CONTENT_TYPE = "audio/wav"

# whoAsr's "model not loaded" texts (VAD/timestamp 503s); a failed on-demand load says "Failed to load"
# instead and stays an http_5xx.
_NOT_LOADED = re.compile(r"\bnot\s+loaded\b|\bmodel\s+not\s+available\b", re.IGNORECASE)

ProbeBody = Callable[[ProbeContext, ProbeResult], Awaitable[None]]


async def run_checked(ctx: ProbeContext, kind: str, body: ProbeBody) -> ProbeResult:
    """Runs a probe body on a fresh result; a Failure keeps the partly filled result, else it passed."""
    result = ctx.new_result(kind)
    try:
        await body(ctx, result)
    except Failure as failure:
        return failed(ctx, kind, failure, result)
    if result.applicable:
        result.success = True
        ctx.trace("passed")
    result.duration_seconds = ctx.elapsed()
    return result


def audio_form(clip: Clip, field: str, **fields: Optional[str]) -> aiohttp.FormData:
    """A multipart upload of the clip plus text fields (those that are None are left out)."""
    form = aiohttp.FormData()
    form.add_field(field, clip.file_bytes, filename=UPLOAD_FILENAME, content_type=UPLOAD_CONTENT_TYPE)
    for name, value in fields.items():
        if value is not None:
            form.add_field(name, value)
    return form


async def post(ctx: ProbeContext, result: ProbeResult, kind: str, *, form: Optional[aiohttp.FormData] = None,
               json_body: Any = None) -> Reply:
    """POSTs to the generation's path for the probe kind within the run's deadline; records the HTTP status.

    A request whoAsr would answer by loading a model on demand is preceded by a fresh model check."""
    try:
        path = await ctx.client.path(kind, ctx.remaining(), ctx.trace)
    except Failure as failure:
        failure.step = failure.step or "request"
        raise
    await ensure_model_loaded(ctx, kind)
    try:
        reply = await ctx.client.request("POST", path, timeout=ctx.remaining(), form=form, json_body=json_body,
                                         trace=ctx.trace)
    except Failure as failure:
        failure.step = failure.step or "request"
        raise
    result.http_status = reply.status
    return reply


def expect_ok(reply: Reply) -> None:
    """Non-2xx -> http_4xx/http_5xx, except a 5xx that says its model is not loaded -> model_not_loaded."""
    if reply.status >= 500:
        detail = error_detail(reply)
        if _NOT_LOADED.search(detail):
            body = redact(reply.text())
            raise Failure("model_not_loaded", f"HTTP {reply.status}: {redact(detail)}", http_status=reply.status,
                          error_body=body, step="status")
    try:
        reply.expect_ok()
    except Failure as failure:
        failure.step = "status"
        raise


def error_detail(reply: Reply) -> str:
    """FastAPI's {"detail": "..."} text if there is one, else the raw body."""
    try:
        document = reply.json()
    except Failure:
        return reply.text()
    if isinstance(document, dict) and isinstance(document.get("detail"), str):
        return document["detail"]
    return reply.text()


def json_object(reply: Reply) -> dict[str, Any]:
    """The answer as a JSON object whose `success` is not false; bad_response / server_error otherwise."""
    try:
        document = reply.json()
    except Failure as failure:
        failure.step = "parse"
        raise
    if not isinstance(document, dict):
        raise Failure("bad_response", f"expected a JSON object, got {type(document).__name__}",
                      http_status=reply.status, step="parse")
    # Checked before the shape: a server that says it failed is a server_error, whatever else it left out.
    if "success" in document and document["success"] is not True:
        message = document.get("message") or document.get("detail") or ""
        raise Failure("server_error", f"success is {document['success']!r}: {redact(str(message))}",
                      http_status=reply.status, error_body=redact(reply.text()), step="success")
    return document


def shape_error(reply: Reply, what: str) -> Failure:
    return Failure("bad_response", what, http_status=reply.status, step="parse")


def check(ctx: ProbeContext, result: ProbeResult, name: str, ok: bool, detail: str,
          reason: str = "check_failed") -> None:
    """Records one check and stops the run with `reason` if it failed."""
    result.checks.append(Check(name, ok, detail))
    ctx.trace(f"check {name}: {'ok' if ok else 'FAILED'} ({detail})")
    if not ok:
        raise Failure(reason, detail, http_status=result.http_status, step=name)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
