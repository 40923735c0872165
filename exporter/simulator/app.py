"""Assembles the simulator application and runs it as a process (`whoasr-exporter simulate`)."""

from __future__ import annotations

import argparse
import asyncio
import signal

import structlog
from aiohttp import web

from exporter import logs
from exporter.simulator import admin, http_routes as routes
from exporter.simulator.faults import detail, ok
from exporter.simulator.state import MODEL_TYPES, SIM_KEY, SimState, SimulatorOptions, sim_of
from exporter.simulator.websockets import stream_socket, vad_socket

log = structlog.get_logger("exporter.simulator")

# (method, path, handler, summary, tag) per generation, in the order FastAPI would list them.
_COMMON = [
    ("GET", "/health", routes.health, "Health Check", None),
    ("POST", "/model/load", routes.model_load, "Load Model", "model"),
    ("POST", "/model/unload/{model_type}", routes.model_unload, "Unload Model", "model"),
    ("GET", "/model/info", routes.model_info, "Get Model Info", "model"),
    ("GET", "/model/config/{model_type}", routes.model_config, "Get Model Type Config", "model"),
]
ROUTES = {
    "v1": [("GET", "/", routes.index, "Read Root", None), *_COMMON,
           ("POST", "/recognize", routes.recognize, "Recognize Speech", None),
           ("POST", "/punctuate", routes.punctuation, "Punctuate Text", None),
           ("POST", "/vad", routes.vad, "Detect Voice Activity Simple", None),
           ("POST", "/timestamp", routes.timestamp, "Predict Timestamps Simple", None)],
    "v2": [*_COMMON,
           ("POST", "/offline/recognize", routes.recognize, "Recognize Audio File", "offline"),
           ("POST", "/timestamp/predict", routes.timestamp, "Predict Timestamps", "Timestamp"),
           ("POST", "/punctuation/add", routes.punctuation, "Add Punctuation Endpoint", "punctuation"),
           ("POST", "/vad/detect", routes.vad, "Detect Voice Activity", "VAD"),
           ("GET", "/", routes.index, "Read Root", None)],
}
V2_CATCH_ALL = "/{full_path}"


def openapi_document(api: str) -> dict:
    """A FastAPI-shaped schema listing the generation's HTTP paths (WebSockets are never listed)."""
    paths: dict[str, dict] = {}
    listed = [(m, p, s, t) for m, p, _, s, t in ROUTES[api]]
    if api == "v2":
        listed.append(("GET", V2_CATCH_ALL, "Catch All Frontend Routes", None))
    for method, path, summary, tag in listed:
        operation_id = summary.lower().replace(" ", "_") + "_" + path.strip("/").replace("/", "_").replace(
            "{", "").replace("}", "") + "_" + method.lower()
        operation: dict = {"summary": summary, "operationId": operation_id,
                           "responses": {"200": {"description": "Successful Response",
                                                 "content": {"application/json": {"schema": {}}}}}}
        if tag:
            operation["tags"] = [tag]
        if "{" in path or method == "POST":
            operation["responses"]["422"] = {"description": "Validation Error", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}}
        paths.setdefault(path, {})[method.lower()] = operation
    return {"openapi": "3.1.0", "info": {"title": routes.API_TITLE, "version": "1.0.0"}, "paths": paths}


async def openapi(request: web.Request) -> web.Response:
    sim = sim_of(request)
    sim.count("openapi")
    return ok(openapi_document(sim.options.api))


@web.middleware
async def fastapi_errors(request: web.Request, handler) -> web.StreamResponse:
    """aiohttp's own 404/405 turned into FastAPI's JSON; an unmatched WebSocket upgrade gets 403."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        if routes.is_upgrade(request):
            return web.Response(status=403)
        if isinstance(exc, web.HTTPNotFound):
            return detail(404, "Not Found")
        return detail(405, "Method Not Allowed")


async def _on_shutdown(app: web.Application) -> None:
    sim = app[SIM_KEY]
    sim.shutting_down = True  # ends hanging requests
    for ws in list(sim.open_websockets):
        await ws.close(code=1001, message=b"server shutdown")


def build_app(options: SimulatorOptions) -> web.Application:
    """A fresh simulator application; all its state lives in app[SIM_KEY]."""
    app = web.Application(middlewares=[fastapi_errors], client_max_size=64 * 1024 * 1024)
    app[SIM_KEY] = SimState.from_options(options)
    admin.add_routes(app)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/docs", routes.docs)
    app.router.add_get("/redoc", routes.docs)
    for method, path, handler, _, _ in ROUTES[options.api]:
        app.router.add_route(method, path, handler)
    app.router.add_get("/ws/{client_id}", stream_socket)
    app.router.add_get("/vad/ws/{client_id}", vad_socket)
    if options.api == "v2":  # must stay last: it answers every GET nothing else matched
        app.router.add_get("/{full_path:.*}", routes.fallback)
    app.on_shutdown.append(_on_shutdown)
    return app


def _model_types(value: str) -> tuple[str, ...]:
    types = tuple(t.strip() for t in value.split(",") if t.strip())
    unknown = [t for t in types if t not in MODEL_TYPES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown model type(s) {', '.join(unknown)}; "
                                         f"expected any of {', '.join(MODEL_TYPES)}")
    return types


def _non_negative(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api", choices=("v1", "v2"), required=True, help="whoAsr API generation to imitate")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("--health-delay", type=_non_negative, default=1.0, metavar="SECONDS",
                        help="how long each /health call blocks the whole server (default 1.0, as whoAsr)")
    parser.add_argument("--unloaded", type=_model_types, default=(), metavar="TYPE,TYPE",
                        help=f"model types that start unloaded ({', '.join(MODEL_TYPES)})")
    parser.add_argument("--transcript", default=None, metavar="TEXT",
                        help="what the fake models hear (default: the built-in clip's transcript)")
    parser.add_argument("--health-schema", choices=("current", "documented"), default="current",
                        help="/health body: whoAsr's current schema or the older documented one")
    parser.add_argument("--ms-per-char", type=_positive_int, default=450, metavar="N",
                        help="streaming: one transcript character per N ms of audio (default 450)")
    parser.add_argument("--stream-capacity", type=_positive_int, default=None, metavar="N",
                        help="streaming: keep up with N concurrent real-time streams; beyond N the model calls "
                             "share the budget, so every stride takes longer and the lag grows (default: no limit)")


def options_from_args(args: argparse.Namespace) -> SimulatorOptions:
    return SimulatorOptions(api=args.api, health_delay=args.health_delay, unloaded=tuple(args.unloaded),
                            transcript=args.transcript, health_schema=args.health_schema,
                            ms_per_char=args.ms_per_char, stream_capacity=args.stream_capacity)


async def serve(options: SimulatorOptions, host: str, port: int, stop: asyncio.Event) -> None:
    runner = web.AppRunner(build_app(options), shutdown_timeout=2.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("simulator listening", api=options.api, host=host, port=port)
        await stop.wait()
    finally:
        await runner.cleanup()


def run(args: argparse.Namespace) -> int:
    """Serves until SIGINT or SIGTERM, then exits 0."""
    options = options_from_args(args)
    logs.setup("auto")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(options, args.host, args.port, stop)

    asyncio.run(main())
    log.info("simulator stopped")
    return 0
