"""The simulator's own control API under /-/sim/ (a prefix whoAsr never uses). JSON in and out."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from exporter.simulator.faults import detail, ok
from exporter.simulator.state import DEFAULT_SYSTEM, ENDPOINTS, MODEL_TYPES, sim_of, validate_faults

SYSTEM_KEYS = tuple(DEFAULT_SYSTEM)


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise web.HTTPBadRequest(text=json.dumps({"detail": f"invalid JSON: {exc}"}),
                                 content_type="application/json") from exc


async def get_faults(request: web.Request) -> web.Response:
    return ok({"faults": sim_of(request).faults})


async def put_faults(request: web.Request) -> web.Response:
    sim, endpoint = sim_of(request), request.match_info["endpoint"]
    if endpoint not in ENDPOINTS:
        return detail(404, f"unknown endpoint {endpoint!r}; expected any of {', '.join(ENDPOINTS)}")
    try:
        faults = validate_faults(await _body(request))
    except ValueError as exc:
        return detail(400, str(exc))
    if faults:
        sim.faults[endpoint] = faults
    else:
        sim.faults.pop(endpoint, None)
    return ok({"endpoint": endpoint, "faults": faults})


async def delete_faults(request: web.Request) -> web.Response:
    sim, endpoint = sim_of(request), request.match_info.get("endpoint")
    if endpoint is None:
        sim.faults.clear()
    elif endpoint not in ENDPOINTS:
        return detail(404, f"unknown endpoint {endpoint!r}")
    else:
        sim.faults.pop(endpoint, None)
    return ok({"faults": sim.faults})


async def get_system(request: web.Request) -> web.Response:
    return ok(sim_of(request).system)


async def put_system(request: web.Request) -> web.Response:
    """Sets what /health reports. Percentages in 0..100 (or "unknown"); memory_available_gb follows
    memory_percent and memory_total_gb unless given explicitly."""
    sim, body = sim_of(request), await _body(request)
    if not isinstance(body, dict):
        return detail(400, "expected a JSON object")
    for key, value in body.items():
        if key not in SYSTEM_KEYS:
            return detail(400, f"unknown key {key!r}; expected any of {', '.join(SYSTEM_KEYS)}")
        if value != "unknown" and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            return detail(400, f"{key} must be a non-negative number or \"unknown\"")
        if key.endswith("_percent") and value != "unknown" and value > 100:
            return detail(400, f"{key} must be at most 100")
    system = {**sim.system, **{k: (v if v == "unknown" else float(v)) for k, v in body.items()}}
    if "memory_available_gb" not in body and ({"memory_percent", "memory_total_gb"} & body.keys()):
        total, used = system["memory_total_gb"], system["memory_percent"]
        unknown = "unknown" in (total, used)
        system["memory_available_gb"] = "unknown" if unknown else total * (100.0 - used) / 100.0
    sim.system = system
    return ok(system)


async def get_models(request: web.Request) -> web.Response:
    sim = sim_of(request)
    return ok({m: {"loaded": s.loaded, "fail_load": s.fail_load} for m, s in sim.models.items()})


async def put_model(request: web.Request) -> web.Response:
    """Flips a model's state at once (no load delay); fail_load makes later loads of it fail."""
    sim, model_type = sim_of(request), request.match_info["model_type"]
    if model_type not in MODEL_TYPES:
        return detail(404, f"unknown model type {model_type!r}; expected any of {', '.join(MODEL_TYPES)}")
    body = await _body(request)
    if not isinstance(body, dict) or not body or set(body) - {"loaded", "fail_load"}:
        return detail(400, "expected a JSON object with loaded and/or fail_load")
    if any(not isinstance(v, bool) for v in body.values()):
        return detail(400, "loaded and fail_load must be booleans")
    state = sim.models[model_type]
    state.loaded = body.get("loaded", state.loaded)
    state.fail_load = body.get("fail_load", state.fail_load)
    return ok({"model_type": model_type, "loaded": state.loaded, "fail_load": state.fail_load})


async def get_load_delay(request: web.Request) -> web.Response:
    return ok({"seconds": sim_of(request).load_delay})


async def put_load_delay(request: web.Request) -> web.Response:
    sim, body = sim_of(request), await _body(request)
    seconds = body.get("seconds") if isinstance(body, dict) else None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        return detail(400, "expected {\"seconds\": <non-negative number>}")
    sim.load_delay = float(seconds)
    return ok({"seconds": sim.load_delay})


async def get_stats(request: web.Request) -> web.Response:
    sim = sim_of(request)
    return ok({
        "requests": {e: sim.requests.get(e, 0) for e in ENDPOINTS} | {
            k: v for k, v in sim.requests.items() if k not in ENDPOINTS},
        "open_websockets": len(sim.open_websockets),
        "model_requests": {m: s.total_requests for m, s in sim.models.items()},
        "on_demand_loads": {m: sim.on_demand_loads.get(m, 0) for m in sim.models},
        "leaked_uploads": {"files": sim.leaked_files, "bytes": sim.leaked_bytes},
        "websocket_messages": sim.ws_messages,
        "websocket_closes": sim.ws_closes,
    })


async def delete_stats(request: web.Request) -> web.Response:
    sim = sim_of(request)
    sim.requests.clear()
    sim.on_demand_loads.clear()
    sim.ws_messages.clear()
    sim.leaked_files = sim.leaked_bytes = 0
    sim.ws_closes.clear()
    for state in sim.models.values():
        state.total_requests, state.last_used = 0, None
    return await get_stats(request)


# path below /-/sim -> method -> handler; GETs answer HEAD too (aiohttp's add_get).
ROUTES = {
    "/faults": {"GET": get_faults, "DELETE": delete_faults},
    "/faults/{endpoint}": {"PUT": put_faults, "DELETE": delete_faults},
    "/system": {"GET": get_system, "PUT": put_system},
    "/models": {"GET": get_models},
    "/models/{model_type}": {"PUT": put_model},
    "/load_delay": {"GET": get_load_delay, "PUT": put_load_delay},
    "/stats": {"GET": get_stats, "DELETE": delete_stats},
}


def add_routes(app: web.Application) -> None:
    for path, handlers in ROUTES.items():
        for method, handler in handlers.items():
            add = getattr(app.router, f"add_{method.lower()}")  # add_get, add_put, add_delete
            add("/-/sim" + path, handler)
