"""TLS towards whoAsr targets: the client context a target's `tls_config` describes, and what a failed
handshake means in words an operator can act on (unknown CA, name mismatch, expired, client certificate
refused) rather than an OpenSSL error code.
"""

from __future__ import annotations

import ssl
from typing import Hashable, Iterable, Optional, Protocol


class TLSConfig(Hashable, Protocol):
    """What a context is made from: config.TLSConfig (not imported: the config imports this module)."""

    ca_file: Optional[str]
    cert_file: Optional[str]
    key_file: Optional[str]
    insecure_skip_verify: bool


class TLSFileError(ValueError):
    """A tls_config file that cannot be used; `field` is the key under tls_config that names it."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def client_context(tls: TLSConfig) -> ssl.SSLContext:
    """A fresh context from the files as they are now (so a reload picks up rotated certificates)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.ca_file:
        try:
            context.load_verify_locations(cafile=tls.ca_file)
        except FileNotFoundError:
            raise TLSFileError("ca_file", f"no such file {tls.ca_file!r}") from None
        except PermissionError:
            raise TLSFileError("ca_file", f"cannot read {tls.ca_file!r}: permission denied") from None
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise TLSFileError("ca_file", f"{tls.ca_file!r} holds no PEM CA certificate ({_short(exc)})") from None
    if tls.cert_file:
        for field, path in (("cert_file", tls.cert_file), ("key_file", tls.key_file)):
            try:
                with open(path, "rb"):
                    pass
            except FileNotFoundError:
                raise TLSFileError(field, f"no such file {path!r}") from None
            except OSError as exc:
                raise TLSFileError(field, f"cannot read {path!r}: {exc.strerror}") from None
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise TLSFileError("cert_file", f"{tls.cert_file!r} and {tls.key_file!r} are not a PEM certificate "
                               f"and its private key ({_short(exc)})") from None
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def contexts_for(configs: Iterable[Optional[TLSConfig]]) -> dict[TLSConfig, ssl.SSLContext]:
    """One context per distinct tls_config (a fleet behind one CA shares one), built from the files now."""
    return {tls: client_context(tls) for tls in set(configs) if tls is not None}


def _short(exc: BaseException) -> str:
    return (getattr(exc, "reason", None) or str(exc) or type(exc).__name__)[:120]


# --- a failed handshake, in words -------------------------------------------------------------------------
_VERIFY_CODES = {
    # X509_V_ERR_* codes (OpenSSL x509_vfy.h)
    9: "the server certificate is not yet valid",
    10: "the server certificate has expired",
    18: "unknown CA: the server certificate is self-signed (set tls_config.ca_file)",
    19: "unknown CA: a self-signed certificate in the server's chain (set tls_config.ca_file)",
    20: "unknown CA: the server certificate's issuer is not trusted (set tls_config.ca_file)",
    21: "unknown CA: cannot verify the first certificate (set tls_config.ca_file)",
    62: "name mismatch: the server certificate is not valid for this host (see tls_config.server_name)",
    64: "name mismatch: the server certificate is not valid for this IP address (see tls_config.server_name)",
}
_ALERTS = (
    # (text in an OpenSSL error, what it means); the server's alerts about our client certificate
    ("certificate required", "client certificate refused: the server requires one (set tls_config.cert_file "
                             "and key_file)"),
    ("alert bad certificate", "client certificate refused by the server"),
    ("alert unknown ca", "client certificate refused: the server does not trust its CA"),
    ("alert certificate expired", "client certificate refused: it has expired"),
    ("alert certificate unknown", "client certificate refused by the server"),
    ("alert handshake failure", "the server refused the handshake (no common protocol or cipher)"),
    ("wrong version number", "not a TLS server (plain HTTP on an https:// URL?)"),
    ("unsupported protocol", "no common TLS version with the server (TLS 1.2 or later required)"),
)


def tls_problem(exc: BaseException) -> Optional[str]:
    """What failed, if `exc` (or what it wraps) is a TLS failure; None if it is not one."""
    seen: set[int] = set()
    pending: list[Optional[BaseException]] = [exc]
    fallback: Optional[str] = None
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        code = getattr(current, "verify_code", None)
        if isinstance(current, ssl.SSLCertVerificationError) and code is not None:
            message = getattr(current, "verify_message", "") or str(current)
            return _VERIFY_CODES.get(code) or f"certificate verification failed: {message}"[:200]
        text = str(current).lower()
        for needle, meaning in _ALERTS:
            if needle in text:
                return meaning
        wrapped = [getattr(current, "certificate_error", None), getattr(current, "os_error", None),
                   current.__cause__, current.__context__]
        if isinstance(current, ssl.SSLError) and not any(wrapped):
            return f"TLS handshake failed: {_short(current)}"
        pending.extend(reversed(wrapped))  # pop() takes the certificate error first
        if isinstance(current, ssl.SSLError):
            fallback = fallback or f"TLS handshake failed: {_short(current)}"
    return fallback
