"""The exporter's HTTP surface: /metrics, the status page, history, health and readiness.

Handlers only read state: none of them waits on a whoAsr target (except /probe, which exists to). The
daemon serves itself through this module; this module knows it only as the `Exporter` it needs.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Protocol

from aiohttp import web

from exporter import probe_endpoint, status_page, websecurity
from exporter.config import TargetConfig
from exporter.history import History
from exporter.metrics import OPENMETRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, Exposition, wants_openmetrics
from exporter.state import ExporterState


class Exporter(probe_endpoint.ProbeSource, Protocol):
    """What the web server reads from the daemon."""

    targets: tuple[TargetConfig, ...]  # what this exporter probes (configured, discovered, sharded)
    state: ExporterState
    history: History
    exposition: Exposition
    ready: bool

    async def reload(self) -> tuple[bool, str]: ...


DAEMON = web.AppKey("daemon", object)
HISTORY_LIMIT = 500  # results per /api/history answer unless ?limit= says otherwise (newest first)
MAX_HISTORY_LIMIT = 10000


def build_app(daemon: Exporter) -> web.Application:
    # Basic auth reads the users from the live config, so a reload that changes them applies at once.
    auth = websecurity.basic_auth_middleware(lambda: daemon.config.exporter.web.basic_auth_users)
    app = web.Application(client_max_size=64 * 1024, middlewares=[auth])
    app[DAEMON] = daemon
    app.router.add_get("/", landing_page)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_get("/api/history", history)
    app.router.add_post("/-/reload", reload)
    app.router.add_get("/runbook", runbook_page)
    probe_endpoint.add_routes(app, daemon)
    return app


async def start_server(daemon: Exporter, host: str, port: int) -> web.AppRunner:
    """Serves until runner.cleanup(), which lets requests in flight finish for up to shutdown_grace."""
    grace = daemon.config.exporter.shutdown_grace
    runner = web.AppRunner(build_app(daemon), access_log=None, handle_signals=False, shutdown_timeout=grace)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True,
                       ssl_context=websecurity.ssl_context(daemon.config.exporter.web))
    await site.start()
    return runner


async def metrics(request: web.Request) -> web.Response:
    daemon: Exporter = request.app[DAEMON]
    openmetrics = wants_openmetrics(request.headers.get("Accept", ""))
    body = daemon.exposition.render(openmetrics)
    headers = {"Content-Type": OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE,
               "Vary": "Accept-Encoding"}
    if accepts_gzip(request.headers.get("Accept-Encoding", "")):
        # ~3 MiB at 200 targets takes a few ms to compress: off the loop, so stream pacing never waits on it.
        body = await asyncio.to_thread(gzip_body, body)
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, headers=headers)


GZIP_LEVEL = 3  # bench/metrics_gzip.py: as small as level 6 within 10 %, at less than half its cost


def gzip_body(body: bytes, level: int = GZIP_LEVEL) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: the gzip format
    return compressor.compress(body) + compressor.flush()


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether the client takes gzip (RFC 9110 Accept-Encoding: `gzip`, or `*`, with a q above 0)."""
    weights: dict[str, float] = {}
    for item in accept_encoding.lower().split(","):
        coding, _, params = item.strip().partition(";")
        weight = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        if coding:
            weights[coding.strip()] = weight
    return weights.get("gzip", weights.get("x-gzip", weights.get("*", 0.0))) > 0


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="Healthy\n")


async def ready(request: web.Request) -> web.Response:
    daemon: Exporter = request.app[DAEMON]
    if daemon.ready:
        return web.Response(text="Ready\n")
    return web.Response(status=503, text="Not ready\n")


async def history(request: web.Request) -> web.Response:
    """`?target=&probe=&limit=&failures=true`: kept results newest first (a failure with its trace);
    `?id=N`: the one result with that id, as the status page links it."""
    daemon: Exporter = request.app[DAEMON]
    query = request.query
    if "id" in query:
        seq = query["id"]
        entry = daemon.history.entry_json(int(seq)) if seq.isdigit() and len(seq) < 19 else None
        if entry is None:
            return web.Response(status=404, text="id: no kept result has this id (it may have been dropped)\n")
        return web.json_response(entry, dumps=_dumps)
    target = query.get("target") or None
    probe = query.get("probe") or None
    limit = query.get("limit", str(HISTORY_LIMIT))
    if not limit.isdigit() or not 1 <= int(limit) <= MAX_HISTORY_LIMIT:
        return web.Response(status=400, text=f"limit: expected a whole number from 1 to {MAX_HISTORY_LIMIT}\n")
    failed_only = _flag(query.get("failed", ""))
    with_trace = _flag(query.get("trace", ""))
    return web.json_response(daemon.history.to_json(target, probe, int(limit), failed_only, with_trace),
                             dumps=_dumps)


def _flag(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


async def runbook_page(request: web.Request) -> web.Response:
    """The alerts' runbook_url lands here by default (config `links.runbook`), one anchor per alert."""
    from exporter import runbook

    return web.Response(text=runbook.html_page(), content_type="text/html", charset="utf-8")


async def reload(request: web.Request) -> web.Response:
    daemon: Exporter = request.app[DAEMON]
    ok, message = await daemon.reload()
    return web.Response(status=200 if ok else 400, text=message + "\n")


def _dumps(value) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)


async def landing_page(request: web.Request) -> web.Response:
    daemon: Exporter = request.app[DAEMON]
    snapshot = status_page.snapshot(daemon.targets, daemon.state, daemon.history)  # ~1 ms, on the loop
    page = await asyncio.to_thread(status_page.to_html, snapshot)  # the formatting: tens of ms at 200 targets
    return web.Response(text=page, content_type="text/html")
