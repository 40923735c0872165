"""Scrapes of a target's state: `GET /health` and `GET /model/info`, each a plain async function."""

from __future__ import annotations

import time
from typing import Optional

from exporter.client import TargetClient
from exporter.health import parse_health, parse_model_info
from exporter.results import Failure, ProbeResult, Trace


async def scrape(client: TargetClient, kind: str, timeout: float, trace: Optional[Trace] = None) -> ProbeResult:
    """One scrape; failures come back as a result with a reason, never as an exception."""
    started = time.monotonic()
    deadline = started + timeout
    result = ProbeResult(target=client.name, probe=kind, success=False, started_at=time.time(), duration_seconds=0.0)
    try:
        reply, document = await client.get_json(await client.path(kind, timeout, trace), timeout, trace)
        result.http_status = reply.status
        if kind == "health":
            result.health = parse_health(document)
            client.version = result.health.version or client.version
        else:
            result.model_info = parse_model_info(document)
        result.success = True
    except Failure as failure:
        result.reason, result.detail, result.http_status = failure.reason, failure.detail, failure.http_status
        client.forget_api()
    result.duration_seconds = time.monotonic() - started
    if result.success and client.api is None:
        # Detection is best effort here: a scrape that worked stays a success without it.
        try:
            await client.detect_api(max(deadline - time.monotonic(), 0.5), trace)
        except Failure as failure:
            if trace:
                trace(f"API generation not detected: {failure.reason}: {failure.detail}")
    result.api = client.api
    result.version = client.version  # the same whoasr_info from either scrape
    if trace is not None:
        result.trace = trace.lines
    return result
