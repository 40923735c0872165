"""What stands between the exporter and a whoAsr in real deployments, made in the tests: a private CA and
its certificates, a TLS front (optionally mTLS) relaying to a simulator, and a small HTTP proxy (CONNECT
tunnels, and absolute-form forwarding that records the request heads it sees).

Each runs its own event loop in a thread, listens on a free 127.0.0.1 port and only ever connects to
127.0.0.1; stop() closes every socket and joins the thread within a bounded time.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import select
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support import LOOPBACK, free_port

HEAD_LIMIT = 64 * 1024
SERVER_NAME = "whoasr.test"


# --- certificates --------------------------------------------------------------------------------------
def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


@dataclass
class Issued:
    cert: Path
    key: Path


class CertificateAuthority:
    """A CA in `directory`; issues server and client certificates signed by it."""

    def __init__(self, directory: Path, name: str = "whoasr test CA"):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path = directory / f"{name.replace(' ', '-')}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str, *, server: bool = True, dns: tuple[str, ...] = (SERVER_NAME,),
              ip: tuple[str, ...] = (LOOPBACK,), expired: bool = False) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=10)
        if expired:
            start, end = now - datetime.timedelta(days=10), now - datetime.timedelta(days=2)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder().subject_name(_name(stem)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(a)) for a in ip]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        issued = Issued(self.directory / f"{stem}.crt", self.directory / f"{stem}.key")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, issued.key)
        return issued


# --- a server in its own thread -----------------------------------------------------------------------
class _ThreadServer:
    """An asyncio server on a free loopback port, run by a private loop in a daemon thread."""

    def __init__(self, ssl_context: Optional[ssl.SSLContext] = None):
        self.port = free_port()
        self.ssl_context = ssl_context
        self.errors: list[str] = []  # what the loop reported (failed handshakes, ...)
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(lambda loop, ctx: self.errors.append(str(ctx.get("exception")
                                                                                   or ctx.get("message"))))
        self._server: Optional[asyncio.base_events.Server] = None
        self._tasks: set[asyncio.Task] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name=type(self).__name__)

    def start(self) -> "_ThreadServer":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        return self

    async def _listen(self) -> None:
        options = {"ssl": self.ssl_context, "ssl_handshake_timeout": 5} if self.ssl_context else {}
        self._server = await asyncio.start_server(self._handle, LOOPBACK, self.port, **options)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            await self.serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.LimitOverrunError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            self._tasks.discard(task)
            writer.close()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.sleep(0.05)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (OSError, ssl.SSLError):
        pass
    finally:
        if writer.can_write_eof():
            try:
                writer.write_eof()
            except (OSError, RuntimeError):
                pass


async def _relay(a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 b: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
    try:
        await asyncio.gather(_pipe(a[0], b[1]), _pipe(b[0], a[1]))
    finally:
        b[1].close()


# --- the TLS front ----------------------------------------------------------------------------------------
class TLSFront:
    """Terminates TLS (requiring a client certificate from `client_ca` when given) and relays the bytes to
    a plain upstream on 127.0.0.1: whoAsr behind an HTTPS ingress.

    Blocking sockets, a thread per connection: OpenSSL then writes its alerts (certificate required, bad
    certificate, ...) to the client as a real ingress does, which asyncio's server-side TLS does not."""

    def __init__(self, upstream_port: int, cert: Issued, client_ca: Optional[Path] = None):
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert.cert, cert.key)
        if client_ca is not None:
            context.load_verify_locations(cafile=client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        self.context = context
        self.upstream_port = upstream_port
        self.connections = 0  # completed TLS handshakes
        self.errors: list[str] = []  # failed handshakes
        self._listener = socket.create_server((LOOPBACK, 0))
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    def start(self) -> "TLSFront":
        self._spawn(self._accept_loop)
        return self

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="tls-front")
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.add(sock)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                raw, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            self._track(raw)
            self._spawn(self._serve, raw)

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(30)
        client = self.context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        self._track(client)
        try:
            client.do_handshake()
        except (ssl.SSLError, OSError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            _lingering_close(client)
            return
        self.connections += 1
        try:
            upstream = socket.create_connection((LOOPBACK, self.upstream_port), timeout=30)
        except OSError:
            client.close()
            return
        self._track(upstream)
        self._relay(client, upstream)

    def _relay(self, client: ssl.SSLSocket, upstream: socket.socket) -> None:
        """Both directions in this one thread: an SSL object must not be read and written by two threads
        at once (TLS 1.3 reads can write)."""
        peers = {client: upstream, upstream: client}
        try:
            while not self._stopping.is_set():
                readable = [client] if client.pending() else select.select(list(peers), [], [], 0.5)[0]
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except (OSError, ssl.SSLError):
            pass
        finally:
            for sock in (client, upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()
        with self._lock:
            sockets, threads = list(self._open), list(self._threads)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv()
            except OSError:
                pass
            sock.close()
        for thread in threads:
            thread.join(timeout=5)


def _lingering_close(sock: socket.socket) -> None:
    """Close as web servers do after an error: stop sending, read what the client had already sent (for
    at most a second), then close, so the alert OpenSSL wrote is read by the client rather than lost to a
    reset."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(1.0)
        for _ in range(64):
            if not sock.recv(65536):
                break
    except OSError:
        pass
    sock.close()


# --- the HTTP proxy ---------------------------------------------------------------------------------------
@dataclass
class ProxiedRequest:
    method: str
    target: str  # host:port for CONNECT, the absolute URL otherwise
    headers: dict[str, str] = field(default_factory=dict)


class HTTPProxy(_ThreadServer):
    """CONNECT tunnels and absolute-form forwarding, to 127.0.0.1 only; records every request head."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[ProxiedRequest] = []

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def serve(self, reader, writer) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > HEAD_LIMIT:
            return
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        self.requests.append(ProxiedRequest(method, target, headers))
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            if host != LOOPBACK:
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            upstream = await asyncio.open_connection(LOOPBACK, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await _relay((reader, writer), upstream)
            return
        scheme, _, rest = target.partition("://")
        if scheme not in ("http", "ws") or not rest.startswith(f"{LOOPBACK}:"):
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        port, _, path = rest[len(LOOPBACK) + 1:].partition("/")
        # Origin form upstream; one request per connection unless it is a WebSocket upgrade, so every
        # request head passes through here and is recorded.
        upgrade = "upgrade" in headers
        out = [f"{method} /{path} {version}"]
        for line in lines[1:]:
            name = line.split(":", 1)[0].strip().lower()
            if not line or name.startswith("proxy-") or (not upgrade and name in ("connection", "keep-alive")):
                continue
            out.append(line)
        if not upgrade:
            out.append("Connection: close")
        upstream = await asyncio.open_connection(LOOPBACK, int(port))
        upstream[1].write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
        await upstream[1].drain()
        await _relay((reader, writer), upstream)
