"""A target's Authorization header, from the config or from secret files read at each use.

Files are read when a request is about to be sent (off the event loop), so a rotated Kubernetes Secret
applies at the next run without a restart. A file that cannot be read fails that run with a detail that
names the field and the file, never its content.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Optional

from exporter.config import TargetConfig
from exporter.results import Failure

MAX_SECRET_BYTES = 16 * 1024  # a token or password; anything larger is a wrong file


def read_secret(field: str, path: str) -> str:
    """The file's text without surrounding white space (a trailing newline is not part of the secret)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SECRET_BYTES + 1)
    except FileNotFoundError:
        raise Failure("check_failed", f"{field}: no such file {path!r}", step="credentials") from None
    except IsADirectoryError:
        raise Failure("check_failed", f"{field}: {path!r} is a directory, not a file", step="credentials") from None
    except OSError as exc:
        raise Failure("check_failed", f"{field}: cannot read {path!r}: {exc.strerror}", step="credentials") from None
    if len(data) > MAX_SECRET_BYTES:
        raise Failure("check_failed", f"{field}: {path!r} is larger than {MAX_SECRET_BYTES} bytes; "
                      "expected a token or password", step="credentials")
    try:
        secret = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise Failure("check_failed", f"{field}: {path!r} is not UTF-8 text", step="credentials") from None
    if not secret:
        raise Failure("check_failed", f"{field}: {path!r} is empty", step="credentials")
    if any(ch in secret for ch in "\r\n\0"):
        raise Failure("check_failed", f"{field}: {path!r} holds more than one line", step="credentials")
    return secret


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


class Credentials:
    """What goes into a target's Authorization header, if anything."""

    def __init__(self, target: TargetConfig):
        self._static: Optional[str] = None
        self._token_file = target.bearer_token_file
        self._basic = target.basic_auth
        if target.bearer_token:
            self._static = f"Bearer {target.bearer_token}"
        elif target.basic_auth and target.basic_auth.password is not None:
            self._static = _basic(target.basic_auth.username, target.basic_auth.password)

    @property
    def from_files(self) -> bool:
        return self._static is None and bool(self._token_file or (self._basic and self._basic.password_file))

    async def header(self) -> Optional[str]:
        """The Authorization value for the next request; raises Failure if a secret file cannot be read."""
        if not self.from_files:
            return self._static
        if self._token_file:
            token = await asyncio.to_thread(read_secret, "bearer_token_file", self._token_file)
            return f"Bearer {token}"
        if self._basic is None or self._basic.password_file is None:
            raise RuntimeError("no credential source: neither a token nor a password file")
        password = await asyncio.to_thread(read_secret, "basic_auth.password_file", self._basic.password_file)
        return _basic(self._basic.username, password)
