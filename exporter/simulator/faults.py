"""FastAPI-style error bodies and the HTTP side of fault injection.

Injected faults are checked when a request arrives, before any validation, so a fault always shows
whatever the request was. `model_exception` and `substitute_chars` act inside the handlers instead,
because what they change depends on the endpoint.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from exporter.simulator.state import SimState

GARBAGE_BODY = "<html><body>502 upstream garbage \x00\x01 {not json"


def detail(status: int, text: str) -> web.Response:
    """FastAPI's HTTPException body."""
    return web.json_response({"detail": text}, status=status, dumps=_dumps)


def validation_error(*errors: dict[str, Any]) -> web.Response:
    """FastAPI's 422 for request validation, a list of pydantic-style errors."""
    return web.json_response({"detail": list(errors)}, status=422, dumps=_dumps)


def missing(*loc: str | int) -> dict[str, Any]:
    return {"type": "missing", "loc": list(loc), "msg": "Field required", "input": None}


def int_parsing(loc: tuple, value: Any) -> dict[str, Any]:
    return {"type": "int_parsing", "loc": list(loc),
            "msg": "Input should be a valid integer, unable to parse string as an integer", "input": value}


def json_invalid(error: str) -> dict[str, Any]:
    return {"type": "json_invalid", "loc": ["body", 0], "msg": "JSON decode error", "input": {},
            "ctx": {"error": error}}


def ok(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status, dumps=_dumps)


def _dumps(value: Any) -> str:
    # FastAPI sends UTF-8 JSON without \\u escapes; clients and humans read Chinese text directly.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


async def hang(request: web.Request, sim: SimState) -> web.StreamResponse:
    """Never answers: waits until the client gives up (closes the connection) or the server stops."""
    while not sim.shutting_down:
        transport = request.transport
        if transport is None or transport.is_closing():
            break
        await asyncio.sleep(0.05)
    if request.transport is not None:
        request.transport.close()  # still no answer: the connection just ends
    return web.Response(status=503)  # never reaches anyone; aiohttp ignores the closed connection


def wrong_shape_body(value: Any) -> Any:
    return ["unexpected"] if value == "list" else {"unexpected": True}


async def http_faults(request: web.Request, sim: SimState, endpoint: str,
                      blocking: bool = False) -> web.StreamResponse | None:
    """Applies hang/latency/status/garbage/wrong_shape for one endpoint; None when the request goes on.

    `blocking` sleeps with time.sleep (the whole server stalls), for endpoints the real server runs on
    its event loop.
    """
    fault = sim.fault(endpoint)
    if not fault:
        return None
    if fault.get("hang"):
        return await hang(request, sim)
    latency = float(fault.get("latency", 0))
    if latency > 0:
        if blocking:
            time.sleep(latency)
        else:
            await asyncio.sleep(latency)
    if "status" in fault:
        return detail(int(fault["status"]), "injected")
    if fault.get("garbage"):
        return web.Response(text=GARBAGE_BODY, content_type="application/json")
    if fault.get("wrong_shape"):
        return ok(wrong_shape_body(fault["wrong_shape"]))
    return None
