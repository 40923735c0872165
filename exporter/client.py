"""The one way the exporter talks HTTP and WebSocket to a whoAsr target.

Every failure of the transport becomes a `Failure` with a reason from the closed set, so that nothing
raised by aiohttp escapes into the scheduler. Bodies are size-capped; every call has a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp

from exporter import __version__
from exporter.config import TargetConfig
from exporter.credentials import Credentials
from exporter.kinds import KINDS
from exporter.labels import version_label
from exporter.results import Failure, Trace, redact
from exporter.tls import client_context, tls_problem

MAX_BODY_BYTES = 1 << 20  # whoAsr answers are small JSON; 1 MiB leaves room for long transcripts
USER_AGENT = f"whoasr-exporter/{__version__}"

@dataclass
class Reply:
    status: int
    body: bytes
    elapsed: float
    content_type: str

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON; anything else is a bad_response."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise Failure("bad_response", f"not JSON: {redact(self.text(), 80)!r}", http_status=self.status) from None

    def expect_ok(self) -> "Reply":
        """Fails with http_4xx/http_5xx (and a redacted excerpt of the body) unless the status is 2xx."""
        if 200 <= self.status < 300:
            return self
        reason = "http_5xx" if self.status >= 500 else "http_4xx"
        body = redact(self.text())
        raise Failure(reason, f"HTTP {self.status}: {body}", http_status=self.status, error_body=body)


def classify(exc: BaseException) -> str:
    """Maps a transport exception to a failure reason."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, aiohttp.ServerTimeoutError)):
        return "timeout"
    if isinstance(exc, (aiohttp.ClientSSLError, ssl.SSLError)):
        return "tls_error"
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return "handshake_rejected"
    if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ContentTypeError)):
        return "bad_response"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "closed_early"
    return "connect_error"


def describe(exc: BaseException) -> str:
    """What went wrong, for a result's detail: a TLS failure in words, anything else by its exception."""
    problem = tls_problem(exc)
    if problem:
        return problem
    text = str(exc) or type(exc).__name__
    return redact(f"{type(exc).__name__}: {text}", 160)


def failure_reason(exc: BaseException) -> str:
    """classify(), except that a TLS failure hidden in a connection error is a tls_error (a server that
    refuses our client certificate closes the connection during or just after the handshake)."""
    return "tls_error" if tls_problem(exc) else classify(exc)


def new_session(limit: int = 1000) -> aiohttp.ClientSession:
    """The daemon's one shared session: pooled connections, no cookies, no global timeout.

    No per-host limit: the scheduler already allows one run per (target, kind), and a streaming probe holds
    its connection for the whole session, so a per-host cap would make probes queue and measure the queue.
    """
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=0, enable_cleanup_closed=True),
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": USER_AGENT},
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,  # HTTP(S)_PROXY and .netrc apply only through targets[].proxy_url, never silently
    )


def public_url(url: str) -> str:
    """A target URL fit to show: no user:password part."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    return url


class TargetClient:
    """A whoAsr target as the probes see it: base URL, credentials, TLS, proxy, and its detected API
    generation. `ssl_context` is the one built for the target's tls_config (the daemon shares one per
    distinct tls_config); without it one is built here."""

    def __init__(self, session: aiohttp.ClientSession, target: TargetConfig,
                 ssl_context: Optional[ssl.SSLContext] = None):
        self.session = session
        self.target = target
        self.name = target.name
        self.base_url = target.url
        self._api: Optional[str] = None if target.api == "auto" else target.api
        # the server's version: /health's api_info.version, else /openapi.json's info.version (bounded)
        self.version: Optional[str] = None
        self._detect_lock = asyncio.Lock()
        self._credentials = Credentials(target)
        # Per-request transport options: TLS context and name, proxy. True: aiohttp's default verification.
        self._transport: dict[str, Any] = {}
        tls = target.tls_config
        if tls is not None:
            self._transport["ssl"] = ssl_context or client_context(tls)
            if tls.server_name:
                self._transport["server_hostname"] = tls.server_name
        self._proxy_headers: dict[str, str] = {}
        if target.proxy_url:
            proxy, proxy_headers = _proxy(target.proxy_url)
            self._transport["proxy"] = proxy
            if target.url.startswith("https://"):
                self._transport["proxy_headers"] = proxy_headers  # on the CONNECT request
            else:
                self._proxy_headers = proxy_headers  # on each request, which goes to the proxy itself

    async def _headers(self) -> dict[str, str]:
        header = await self._credentials.header()
        return {**self._proxy_headers, "Authorization": header} if header else dict(self._proxy_headers)

    # --- API generation -------------------------------------------------------------------------
    @property
    def api(self) -> Optional[str]:
        """The detected (or configured) generation; None until detected."""
        return self._api

    def forget_api(self) -> None:
        """After a failure, detect again next time: the target may have been upgraded or replaced."""
        if self.target.api == "auto":
            self._api = None

    async def detect_api(self, timeout: float, trace: Optional[Trace] = None) -> str:
        """v1 or v2, from the paths in /openapi.json (GET probing lies: v2 answers 200 for any path)."""
        if self._api:
            return self._api
        async with self._detect_lock:
            if self._api:
                return self._api
            reply = (await self.request("GET", "/openapi.json", timeout=timeout, trace=trace)).expect_ok()
            document = reply.json()
            paths = document.get("paths") if isinstance(document, dict) else None
            if not isinstance(paths, dict):
                raise Failure("bad_response", "/openapi.json has no paths", http_status=reply.status)
            info = document.get("info")
            if self.version is None and isinstance(info, dict):
                self.version = version_label(info.get("version"))
            if "/offline/recognize" in paths:
                self._api = "v2"
            elif "/recognize" in paths:
                self._api = "v1"
            else:
                raise Failure("bad_response", "/openapi.json lists neither /recognize nor /offline/recognize")
            if trace:
                trace(f"detected API generation {self._api}")
            return self._api

    async def path(self, kind: str, timeout: float, trace: Optional[Trace] = None) -> str:
        """The path of a run kind on this target; detects the generation only when the paths differ."""
        spec = KINDS[kind]
        if spec.same_path:
            return spec.v1_path
        return spec.path(await self.detect_api(timeout, trace))

    # --- HTTP -----------------------------------------------------------------------------------
    async def request(
        self,
        method: str,
        path: str,
        *,
        timeout: float,
        json_body: Any = None,
        form: Optional[aiohttp.FormData] = None,
        max_bytes: int = MAX_BODY_BYTES,
        trace: Optional[Trace] = None,
    ) -> Reply:
        """One request with a deadline covering connect, headers and body; transport errors -> Failure."""
        url = self.base_url + path
        started = time.monotonic()
        if trace:
            trace(f"{method} {path}")
        try:
            async with asyncio.timeout(timeout):
                headers = await self._headers()
                async with self.session.request(
                    method, url, json=json_body, data=form, headers=headers,
                    allow_redirects=False, **self._transport,
                ) as response:
                    body = await _read_capped(response, max_bytes)
                    reply = Reply(response.status, body, time.monotonic() - started,
                                  response.headers.get("Content-Type", ""))
        except Failure:
            raise
        except (asyncio.TimeoutError, TimeoutError):
            if trace:
                trace(f"{method} {path}: no complete answer within {timeout:g}s")
            raise Failure("timeout", f"{method} {path}: no complete answer within {timeout:g}s") from None
        except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
            if trace:
                trace(f"{method} {path}: {describe(exc)}")
            raise Failure(failure_reason(exc), f"{method} {path}: {describe(exc)}") from None
        if trace:
            trace(f"{method} {path} -> HTTP {reply.status} ({len(reply.body)} bytes, {reply.elapsed * 1000:.1f} ms)")
        return reply

    async def get_json(self, path: str, timeout: float, trace: Optional[Trace] = None) -> tuple[Reply, Any]:
        reply = (await self.request("GET", path, timeout=timeout, trace=trace)).expect_ok()
        return reply, reply.json()

    # --- WebSocket ------------------------------------------------------------------------------
    def ws_url(self, path: str) -> str:
        if self.base_url.startswith("https://"):
            return "wss://" + self.base_url[len("https://"):] + path
        return "ws://" + self.base_url[len("http://"):] + path

    async def ws_connect(self, path: str, timeout: float) -> aiohttp.ClientWebSocketResponse:
        """Opens a WebSocket; a refused upgrade is handshake_rejected with the HTTP status."""
        try:
            async with asyncio.timeout(timeout):
                headers = await self._headers()
                return await self.session.ws_connect(
                    self.ws_url(path), headers=headers, autoping=True,
                    heartbeat=None, max_msg_size=MAX_BODY_BYTES, autoclose=True, **self._transport,
                )
        except (asyncio.TimeoutError, TimeoutError):
            raise Failure("timeout", f"WebSocket {path}: no handshake within {timeout:g}s", step="connect") from None
        except aiohttp.WSServerHandshakeError as exc:
            raise Failure("handshake_rejected", f"WebSocket {path}: HTTP {exc.status} on upgrade",
                          http_status=exc.status, step="connect") from None
        except Failure as failure:
            failure.step = failure.step or "connect"
            raise
        except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
            raise Failure(failure_reason(exc), f"WebSocket {path}: {describe(exc)}", step="connect") from None


def _proxy(proxy_url: str) -> tuple[str, dict[str, str]]:
    """The proxy URL without credentials, and the Proxy-Authorization header its credentials make."""
    parts = urlsplit(proxy_url)
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
    headers = {}
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
    return urlunsplit(("http", netloc, "", "", "")), headers


async def _read_capped(response: aiohttp.ClientResponse, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(65536):
        size += len(chunk)
        if size > max_bytes:
            raise Failure("bad_response", f"answer larger than {max_bytes} bytes", http_status=response.status)
        chunks.append(chunk)
    return b"".join(chunks)

