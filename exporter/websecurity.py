"""TLS and basic auth for the exporter's own HTTP surface, in the spirit of exporter-toolkit's web config.

Passwords are bcrypt hashes checked with the `bcrypt` library. bcrypt is deliberately slow (~0.1-0.3 s),
so checks run in a worker thread (never on the event loop), at most a few at a time, and a successful
check is remembered briefly by (user, hash, sha256(password)) so that a Prometheus scraping every few
seconds costs one bcrypt run a minute, not one per request.
"""

from __future__ import annotations

import asyncio
import binascii
import functools
import hashlib
import ssl
import time
from typing import Awaitable, Callable, Mapping, Optional

import bcrypt
import structlog
from aiohttp import BasicAuth, hdrs, web

from exporter.config import WebConfig

log = structlog.get_logger("exporter.websecurity")

OPEN_PATHS = frozenset({"/-/healthy"})  # liveness checks from orchestrators carry no credentials
REALM = "whoasr-exporter"
CACHE_SECONDS = 60.0
CACHE_MAX_ENTRIES = 256
BCRYPT_CONCURRENCY = 4  # bound on CPU spent on (possibly hostile) password guesses at once
BCRYPT_WAIT_SECONDS = 5.0  # how long a request waits for a free check; then it is refused (401)


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> bytes:
    """Checked when the user is unknown, so that the answer takes about as long as for a known user."""
    return bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds=10))


class WebConfigError(Exception):
    """TLS files that cannot be used; the message is meant for the operator."""


def ssl_context(web_config: WebConfig) -> Optional[ssl.SSLContext]:
    """A server-side TLS context from tls_cert_file/tls_key_file, or None when TLS is off."""
    if not web_config.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(web_config.tls_cert_file, web_config.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigError(
            f"exporter.web: cannot load tls_cert_file {web_config.tls_cert_file!r} / tls_key_file "
            f"{web_config.tls_key_file!r}: {exc}"
        ) from None
    return context


class BasicAuthChecker:
    """Checks `Authorization: Basic` against bcrypt hashes; remembers recent successes briefly."""

    def __init__(self, cache_seconds: float = CACHE_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[tuple[str, str, bytes], float] = {}  # key -> expiry
        self._slots = asyncio.Semaphore(BCRYPT_CONCURRENCY)
        self.bcrypt_runs = 0  # for tests: how often the slow path ran
        self.refused_busy = 0  # requests refused because no check was free within BCRYPT_WAIT_SECONDS

    async def check(self, users: Mapping[str, str], header: Optional[str]) -> Optional[str]:
        """The authenticated user name, or None. `users` maps user -> bcrypt hash."""
        if not header:
            return None
        try:
            auth = BasicAuth.decode(header, encoding="utf-8")
        except (ValueError, binascii.Error):  # not Basic, bad base64, no colon, not UTF-8
            return None
        hashed = users.get(auth.login)
        password = auth.password.encode("utf-8")
        # The hash is part of the key: a changed or removed user no longer matches a cached success.
        key = (auth.login, hashed or "", hashlib.sha256(password).digest())
        now = self._clock()
        if hashed is not None and self._cache.get(key, 0.0) > now:
            return auth.login
        try:
            async with asyncio.timeout(BCRYPT_WAIT_SECONDS):
                await self._slots.acquire()
        except TimeoutError:
            self.refused_busy += 1
            log.warning("password check refused", reason="too_many_password_checks", user=auth.login[:64],
                        waited_seconds=BCRYPT_WAIT_SECONDS)
            return None
        try:
            self.bcrypt_runs += 1
            ok = await asyncio.to_thread(_checkpw, password, hashed)
        finally:
            self._slots.release()
        if not ok:
            return None
        if len(self._cache) >= CACHE_MAX_ENTRIES:
            self._cache = {k: expiry for k, expiry in self._cache.items() if expiry > now}
            if len(self._cache) >= CACHE_MAX_ENTRIES:
                self._cache.clear()
        self._cache[key] = now + self.cache_seconds
        return auth.login


def _checkpw(password: bytes, hashed: Optional[str]) -> bool:
    """bcrypt's own comparison; an unknown user still pays for one check against a dummy hash."""
    try:
        if hashed is None:
            bcrypt.checkpw(password, _dummy_hash())
            return False
        return bcrypt.checkpw(password, hashed.encode("ascii"))
    except ValueError:  # a malformed hash: config validation only checks the prefix
        return False


def basic_auth_middleware(users: Callable[[], Mapping[str, str]], checker: Optional[BasicAuthChecker] = None):
    """aiohttp middleware: every path but OPEN_PATHS needs valid credentials when users are configured.

    `users` is read on each request, so a config reload that changes the users applies at once.
    """
    checker = checker or BasicAuthChecker()

    @web.middleware
    async def middleware(request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        configured = users()
        if not configured or request.path in OPEN_PATHS:
            return await handler(request)
        user = await checker.check(configured, request.headers.get(hdrs.AUTHORIZATION))
        if user is None:
            log.info("unauthorized request", path=request.path, remote=request.remote, reason="basic_auth")
            return web.Response(status=401, text="Unauthorized\n",
                                headers={hdrs.WWW_AUTHENTICATE: f'Basic realm="{REALM}", charset="UTF-8"'})
        return await handler(request)

    return middleware
