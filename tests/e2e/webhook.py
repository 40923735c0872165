"""A webhook receiver for Alertmanager: records every notification so tests can assert what was delivered.

It runs an aiohttp server on its own event loop in a daemon thread, on a loopback socket bound to port 0
before the server starts (no race for a "free" port). Notifications are Alertmanager's webhook JSON
(version 4): a group with `status` and `alerts`, each alert with its own `status`, `labels`, `annotations`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

from aiohttp import web

from tests.support import LOOPBACK


class WebhookReceiver:
    """POST /alerts[/<receiver>] stores the JSON body; anything that is not JSON is kept as an error for the
    test to see."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._notifications: list[dict] = []
        self._errors: list[str] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((LOOPBACK, 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{LOOPBACK}:{self.port}/alerts"
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="webhook-receiver", daemon=True)

    def start(self) -> "WebhookReceiver":
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("webhook receiver did not start")
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._sock.close()

    def notifications(self) -> list[dict]:
        with self._lock:
            return list(self._notifications)

    def errors(self) -> list[str]:
        with self._lock:
            return list(self._errors)

    def alerts(self) -> list[dict]:
        """Every alert of every notification, in arrival order; `received` is the local arrival time,
        `receiver` and `groupKey` those of the notification that carried it."""
        return [dict(alert, received=n["received"], receiver=n.get("receiver"), groupKey=n.get("groupKey"))
                for n in self.notifications() for alert in n["alerts"]]

    def delivered(self, alertname: str, status: str, **labels: str) -> list[dict]:
        """Delivered alerts with this name and status whose labels include `labels`."""
        return [a for a in self.alerts()
                if a["labels"].get("alertname") == alertname and a["status"] == status
                and all(a["labels"].get(k) == v for k, v in labels.items())]

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/alerts", self._receive)
        app.router.add_post("/alerts/{receiver}", self._receive)  # one path per Alertmanager receiver
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.SockSite(self._runner, self._sock).start())
        self._started.set()
        self._loop.run_forever()
        self._loop.close()

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw)
            assert isinstance(body, dict) and isinstance(body.get("alerts"), list)
        except (ValueError, AssertionError):
            with self._lock:
                self._errors.append(raw.decode(errors="replace")[:500])
            return web.Response(status=400, text="expected Alertmanager webhook JSON")
        body["received"] = time.time()
        with self._lock:
            self._notifications.append(body)
        return web.Response(text="ok")
