"""TLS and basic auth on the exporter's own endpoints, and secrets kept out of pages, debug output and logs.

The process tests run a real exporter with a self-signed certificate made here (cryptography) and do
real TLS handshakes that verify it; the checker tests run bcrypt itself.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from exporter.config import BasicAuth, TargetConfig
from exporter import websecurity
from exporter.websecurity import BasicAuthChecker
from tests.support import (LOOPBACK, exporter_cmd, free_port, serve_exporter, sim_delete, sim_fault, start_simulator,
                           wait_until)

pytestmark = pytest.mark.timeout(60)

USER, PASSWORD = "prometheus", "correct horse battery staple"
TOKEN = "tok-3f9c2a71-bearer-secret"
TARGET_PASSWORD = "pw-8d1e5b-target-secret"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def make_cert(directory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (IP SAN), so hostname checks pass on loopback."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "whoasr-exporter test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def https_get(url: str, context: ssl.SSLContext, headers: dict | None = None, method: str = "GET",
              timeout: float = 30) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, headers=headers or {}, method=method,
                                     data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("websecurity")
    procs = []
    try:
        simulator, sim_url = start_simulator(tmp, "v2")
        procs.append(simulator)
        cert, key = make_cert(tmp)
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
        port = free_port()
        config = tmp / "config.yaml"
        config.write_text(f"""
exporter:
  listen: "{LOOPBACK}:{port}"
  log_format: json
  log_level: debug
  web:
    tls_cert_file: "{cert}"
    tls_key_file: "{key}"
    basic_auth_users: {{{USER}: "{hashed}"}}
targets:
  - name: guarded
    url: "{sim_url}"
    probes: [punctuation]
    bearer_token: "{TOKEN}"
  - name: behind-proxy
    url: "{sim_url}/"
    probes: []
    basic_auth: {{username: asr, password: "{TARGET_PASSWORD}"}}
schedules:
  health: {{interval: 1s, timeout: 900ms}}
  model_info: {{interval: 1s, timeout: 900ms}}
  punctuation: {{interval: 1s, timeout: 900ms}}
""")
        exporter = serve_exporter(config, tmp / "exporter.log")
        procs.append(exporter)
        base = f"https://{LOOPBACK}:{port}"
        trusted = ssl.create_default_context(cafile=cert)
        wait_until(lambda: https_get(base + "/-/healthy", trusted, timeout=1)[0] == 200, timeout=20,
                   what="exporter serving TLS")
        yield type("Secured", (), {"base": base, "port": port, "trusted": trusted, "hashed": hashed,
                                   "exporter": exporter, "sim_url": sim_url})
    finally:
        for proc in reversed(procs):
            proc.stop()


def test_tls_handshake_verifies_against_the_test_certificate(secured):
    with socket.create_connection((LOOPBACK, secured.port), timeout=5) as raw:
        with secured.trusted.wrap_socket(raw, server_hostname=LOOPBACK) as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            peer = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
            assert peer.subject.rfc4514_string() == "CN=whoasr-exporter test"


def test_a_client_that_does_not_trust_the_certificate_fails_verification(secured):
    with pytest.raises(urllib.error.URLError) as caught:
        https_get(secured.base + "/-/healthy", ssl.create_default_context())
    assert isinstance(caught.value.reason, ssl.SSLCertVerificationError)


def test_plain_http_to_the_tls_port_gets_no_page(secured):
    with socket.create_connection((LOOPBACK, secured.port), timeout=5) as raw:
        raw.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = raw.recv(4096)
    assert b"whoasr_" not in answer and not answer.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("path", ["/metrics", "/", "/api/history", "/-/ready", "/probe?target=guarded&module=health"])
def test_every_endpoint_but_healthy_needs_credentials(secured, path):
    status, _, headers = https_get(secured.base + path, secured.trusted)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic ")
    status, _, _ = https_get(secured.base + path, secured.trusted, {"Authorization": basic(USER, "wrong")})
    assert status == 401
    status, _, _ = https_get(secured.base + path, secured.trusted, {"Authorization": basic("mallory", PASSWORD)})
    assert status == 401
    status, body, _ = https_get(secured.base + path, secured.trusted, {"Authorization": basic(USER, PASSWORD)})
    assert status == 200, body


def test_healthy_is_open(secured):
    status, body, _ = https_get(secured.base + "/-/healthy", secured.trusted)
    assert (status, body) == (200, b"Healthy\n")


@pytest.mark.parametrize("header", ["Bearer abc", "Basic !!!notbase64", "Basic " + base64.b64encode(b"nocolon").decode(),
                                    "Basic " + base64.b64encode(b"prometheus:\xff\xfe").decode()])
def test_malformed_authorization_is_401_not_500(secured, header):
    assert https_get(secured.base + "/metrics", secured.trusted, {"Authorization": header})[0] == 401


def test_reload_is_post_only_and_guarded(secured):
    auth = {"Authorization": basic(USER, PASSWORD)}
    assert https_get(secured.base + "/-/reload", secured.trusted, auth)[0] == 405
    assert https_get(secured.base + "/-/reload", secured.trusted, method="POST")[0] == 401
    status, body, _ = https_get(secured.base + "/-/reload", secured.trusted, auth, method="POST")
    assert status == 200, body


def test_secrets_never_appear_in_pages_debug_output_or_logs(secured):
    auth = {"Authorization": basic(USER, PASSWORD)}
    wait_until(lambda: b'probe="punctuation"' in https_get(secured.base + "/metrics", secured.trusted, auth)[1],
               timeout=15, what="a scheduled punctuation run")
    # A failing run too, so the failure paths (error bodies, history, page) are exercised.
    sim_fault(secured.sim_url, "punctuation", status=500)
    try:
        wait_until(lambda: b"http_5xx" in https_get(secured.base + "/", secured.trusted, auth)[1], timeout=15,
                   what="the failure on the status page")
        shown = b"".join(
            https_get(secured.base + path, secured.trusted, auth)[1]
            for path in ("/", "/metrics", "/api/history", "/probe?target=guarded&module=punctuation&debug=true",
                         "/probe?target=guarded&module=health&debug=true",
                         "/probe?target=behind-proxy&module=punctuation&debug=true")
        )
    finally:
        sim_delete(secured.sim_url, "faults")
    assert b"FAILED http_5xx" in shown  # the debug output was really produced
    logs = secured.exporter.output().encode()
    assert b"punctuation" in logs  # debug-level logging of runs was on
    for secret in (TOKEN, TARGET_PASSWORD, PASSWORD, secured.hashed):
        assert secret.encode() not in shown, secret
        assert secret.encode() not in logs, secret


def test_target_secrets_are_not_in_reprs():
    with_token = TargetConfig(name="t", url="http://h:1", bearer_token=TOKEN)
    with_password = TargetConfig(name="u", url="http://h:1", basic_auth=BasicAuth(username="u", password=TARGET_PASSWORD))
    assert TOKEN not in repr(with_token) and TARGET_PASSWORD not in repr(with_password)


def test_unusable_tls_files_refuse_to_start_with_exit_2(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"""
exporter:
  listen: "{LOOPBACK}:{free_port()}"
  web: {{tls_cert_file: "{tmp_path}/missing.pem", tls_key_file: "{tmp_path}/missing.key"}}
""")
    run = subprocess.run(exporter_cmd("serve", "--config", str(config)), capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert "tls_cert_file" in run.stderr and "missing.pem" in run.stderr


# --- the checker in-process -------------------------------------------------------------------------------
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


async def test_successful_checks_are_cached_failures_are_not():
    checker = BasicAuthChecker()
    users = {USER: HASH}
    assert await checker.check(users, basic(USER, PASSWORD)) == USER
    assert await checker.check(users, basic(USER, PASSWORD)) == USER
    assert checker.bcrypt_runs == 1
    for _ in range(2):
        assert await checker.check(users, basic(USER, "wrong")) is None
    assert checker.bcrypt_runs == 3


async def test_cache_expires_and_follows_a_changed_hash():
    now = [1000.0]
    checker = BasicAuthChecker(cache_seconds=60, clock=lambda: now[0])
    assert await checker.check({USER: HASH}, basic(USER, PASSWORD)) == USER
    other = bcrypt.hashpw(b"new password", bcrypt.gensalt(rounds=4)).decode()
    assert await checker.check({USER: other}, basic(USER, PASSWORD)) is None  # the old success is not reused
    assert await checker.check({}, basic(USER, PASSWORD)) is None  # a removed user neither
    runs = checker.bcrypt_runs
    now[0] += 61
    assert await checker.check({USER: HASH}, basic(USER, PASSWORD)) == USER
    assert checker.bcrypt_runs == runs + 1


async def test_unknown_user_costs_a_bcrypt_run_too():
    checker = BasicAuthChecker()
    started = time.monotonic()
    assert await checker.check({USER: HASH}, basic("nobody", PASSWORD)) is None
    assert checker.bcrypt_runs == 1 and time.monotonic() - started > 0.01  # a cost-10 dummy check ran


async def test_checks_run_off_the_event_loop():
    import asyncio

    slow_hash = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=12)).decode()
    checker = BasicAuthChecker()
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    assert await checker.check({USER: slow_hash}, basic(USER, PASSWORD)) == USER
    elapsed = time.monotonic() - started
    task.cancel()
    assert elapsed > 0.05
    assert ticks >= elapsed / 0.01 * 0.5  # the loop kept ticking while bcrypt ran


def test_users_file_is_read_again_on_reload(tmp_path):
    from tests.support import http_get, http_post, wait_ready

    users = tmp_path / "users"
    first = bcrypt.hashpw(b"first-password", bcrypt.gensalt(rounds=4)).decode()
    second = bcrypt.hashpw(b"second-password", bcrypt.gensalt(rounds=4)).decode()
    users.write_text(f"alice:{first}\n")
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(f'exporter: {{listen: "{LOOPBACK}:{port}", web: {{basic_auth_users_file: users}}}}\n')
    exporter = serve_exporter(config, tmp_path / "exporter.log")
    base = f"http://{LOOPBACK}:{port}"
    try:
        wait_until(lambda: http_get(base + "/-/healthy", timeout=1)[0] == 200, timeout=20, what="exporter up")
        alice = {"Authorization": basic("alice", "first-password")}
        bob = {"Authorization": basic("bob", "second-password")}
        assert http_get(base + "/metrics")[0] == 401
        assert http_get(base + "/metrics", headers=alice)[0] == 200
        assert http_get(base + "/metrics", headers=bob)[0] == 401
        users.write_text(f"bob:{second}\n")  # the Secret changed: applies with a reload
        assert http_post(base + "/-/reload", headers=alice)[0] == 200
        assert http_get(base + "/metrics", headers=bob)[0] == 200
        assert http_get(base + "/metrics", headers=alice)[0] == 401
    finally:
        exporter.stop()
    assert "second-password" not in exporter.output() and second not in exporter.output()


async def test_a_check_waits_for_a_free_bcrypt_slot_only_so_long(monkeypatch):
    """A flood of password guesses holds every slot: a further request is refused after the bounded
    wait, not queued for ever; once a slot frees, checks run again."""
    monkeypatch.setattr(websecurity, "BCRYPT_WAIT_SECONDS", 0.2)
    checker = BasicAuthChecker()
    for _ in range(websecurity.BCRYPT_CONCURRENCY):
        await checker._slots.acquire()  # every slot busy, as with hostile guesses in flight
    assert await checker.check({USER: HASH}, basic(USER, PASSWORD)) is None
    assert checker.refused_busy == 1 and checker.bcrypt_runs == 0
    checker._slots.release()
    assert await checker.check({USER: HASH}, basic(USER, PASSWORD)) == USER
