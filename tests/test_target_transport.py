"""Real deployments: the simulator behind a TLS front with a private CA (and mTLS), secrets from files,
an HTTP proxy. Runs go through the daemon's own probe path (what the probe CLI, /probe and the scheduler
use) against the simulator as a real process; the fronts and the proxy run in this process on 127.0.0.1.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

import pytest

from exporter.config import parse_config
from exporter.probe_cli import Reporter, run_modules
from tests.netfronts import SERVER_NAME, CertificateAuthority, HTTPProxy, TLSFront
from tests.support import LOOPBACK, ROOT, start_simulator

MODULES = ("health", "batch", "stream")
FAST = {"probes": {"stream": {"pace": "fast", "frame_ms": 600}}}


class Net:
    """The module's processes and fronts."""


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("transport")
    net = Net()
    net.tmp = tmp
    net.ca = CertificateAuthority(tmp / "ca")
    net.other_ca = CertificateAuthority(tmp / "other-ca", name="some other CA")
    net.server = net.ca.issue("server")
    net.expired = net.ca.issue("expired", expired=True)
    net.client = net.ca.issue("client", server=False)
    net.rogue_client = net.other_ca.issue("rogue-client", server=False)
    sim, net.sim_url = start_simulator(tmp, "v2", health_delay=0.05, name="sim")
    sim_port = int(net.sim_url.rsplit(":", 1)[1])
    started = []
    try:
        net.front = TLSFront(sim_port, net.server).start()
        started.append(net.front)
        net.mtls = TLSFront(sim_port, net.server, client_ca=net.ca.path).start()
        started.append(net.mtls)
        net.expired_front = TLSFront(sim_port, net.expired).start()
        started.append(net.expired_front)
        net.proxy = HTTPProxy().start()
        started.append(net.proxy)
        yield net
    finally:
        for server in reversed(started):
            server.stop()
        sim.stop()


async def run(url: str, modules=MODULES, timeout: float = 15.0, **target) -> dict:
    """Runs `modules` against one target configured with `target` keys; {module: result}."""
    config = parse_config({"targets": [{"name": "t", "url": url, **target}], **FAST})
    rows = await run_modules(config, config.targets[0], list(modules), timeout, Reporter(io.StringIO()))
    return {row.result.probe: row.result for row in rows}


def assert_passed(results: dict) -> None:
    for module, result in results.items():
        assert result.success, f"{module}: {result.reason} {result.detail}"


# --- TLS -------------------------------------------------------------------------------------------------
async def test_private_ca_passes_health_batch_and_stream(net):
    before = net.front.connections
    results = await run(net.front.url, tls_config={"ca_file": str(net.ca.path)})
    assert_passed(results)
    assert results["stream"].transcript and results["batch"].cer == 0.0
    assert net.front.connections > before  # really through the TLS front


@pytest.mark.parametrize("tls_config,expected", [
    ({}, "unknown CA"),
    ({"ca_file": "OTHER"}, "unknown CA"),
    ({"ca_file": "CA", "server_name": "wrong.test"}, "name mismatch"),
], ids=["no-ca", "other-ca", "wrong-name"])
async def test_unverifiable_server_is_a_tls_error_saying_what_failed(net, tls_config, expected):
    paths = {"CA": str(net.ca.path), "OTHER": str(net.other_ca.path)}
    tls_config = {key: paths.get(value, value) for key, value in tls_config.items()}
    results = await run(net.front.url, tls_config=tls_config)
    for module in MODULES:
        result = results[module]
        assert not result.success and result.reason == "tls_error", (module, result.reason, result.detail)
        assert expected in result.detail, (module, result.detail)


async def test_server_name_is_sent_and_verified(net):
    # The certificate names whoasr.test and 127.0.0.1: the configured name is what gets verified.
    results = await run(net.front.url, ("health",), tls_config={"ca_file": str(net.ca.path),
                                                                "server_name": SERVER_NAME})
    assert_passed(results)


async def test_expired_server_certificate(net):
    results = await run(net.expired_front.url, ("health", "stream"), tls_config={"ca_file": str(net.ca.path)})
    for result in results.values():
        assert result.reason == "tls_error" and "expired" in result.detail, result.detail


async def test_insecure_skip_verify_accepts_any_certificate(net):
    assert_passed(await run(net.expired_front.url, ("health",), tls_config={"insecure_skip_verify": True}))


async def test_mtls_with_the_client_certificate(net):
    before = net.mtls.connections
    results = await run(net.mtls.url, tls_config={"ca_file": str(net.ca.path), "cert_file": str(net.client.cert),
                                                  "key_file": str(net.client.key)})
    assert_passed(results)
    assert net.mtls.connections > before


@pytest.mark.parametrize("client", [None, "rogue"], ids=["no-client-cert", "untrusted-client-cert"])
async def test_mtls_refused_client_certificate(net, client):
    tls_config = {"ca_file": str(net.ca.path)}
    if client:
        tls_config.update(cert_file=str(net.rogue_client.cert), key_file=str(net.rogue_client.key))
    results = await run(net.mtls.url, tls_config=tls_config)
    for module in MODULES:
        result = results[module]
        assert result.reason == "tls_error", (module, result.reason, result.detail)
        assert "client certificate refused" in result.detail, (module, result.detail)


# --- the probe CLI's TLS flags -----------------------------------------------------------------------------
def probe_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", "probe", "--module", "health", "--json", *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_probe_cli_tls_flags(net):
    ok = probe_cli("--target", net.mtls.url, "--ca-file", str(net.ca.path), "--cert-file", str(net.client.cert),
                   "--key-file", str(net.client.key))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["results"][0]["success"] is True

    unknown = probe_cli("--target", net.front.url)
    assert unknown.returncode == 1
    result = json.loads(unknown.stdout)["results"][0]
    assert result["reason"] == "tls_error" and "unknown CA" in result["detail"]

    insecure = probe_cli("--target", net.front.url, "--insecure-skip-verify")
    assert insecure.returncode == 0, insecure.stdout

    missing = probe_cli("--target", net.front.url, "--ca-file", str(net.tmp / "nope.pem"))
    assert missing.returncode == 2 and "--ca-file: no such file" in missing.stderr, missing.stderr
    alone = probe_cli("--target", net.front.url, "--cert-file", str(net.client.cert))
    assert alone.returncode == 2 and "--key-file" in alone.stderr, alone.stderr
    plain = probe_cli("--target", net.sim_url, "--ca-file", str(net.ca.path))
    assert plain.returncode == 2 and "not an https:// URL" in plain.stderr, plain.stderr


# --- proxies ---------------------------------------------------------------------------------------------
async def test_https_and_wss_through_the_proxy_use_connect(net):
    net.proxy.requests.clear()
    results = await run(net.front.url, tls_config={"ca_file": str(net.ca.path)}, proxy_url=net.proxy.url)
    assert_passed(results)
    assert net.proxy.requests, "nothing went through the proxy"
    assert {(r.method, r.target) for r in net.proxy.requests} == {("CONNECT", f"{LOOPBACK}:{net.front.port}")}


async def test_plain_http_through_the_proxy_is_forwarded(net):
    net.proxy.requests.clear()
    results = await run(net.sim_url, proxy_url=net.proxy.url.replace("://", "://probe:s3cret@"))
    assert_passed(results)
    seen = {(r.method, r.target.split("?")[0]) for r in net.proxy.requests}
    assert ("GET", net.sim_url + "/health") in seen and ("POST", net.sim_url + "/offline/recognize") in seen
    ws_url = net.sim_url.replace("http://", "ws://") + "/ws/"
    assert any(target.startswith(ws_url) for _, target in seen), seen  # the WebSocket upgrade
    assert all(r.headers.get("proxy-authorization") == "Basic cHJvYmU6czNjcmV0" for r in net.proxy.requests), \
        [(r.method, r.target, r.headers.get("proxy-authorization")) for r in net.proxy.requests]


async def test_environment_proxy_variables_are_not_applied(net, monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, net.proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    net.proxy.requests.clear()
    results = await run(net.sim_url, ("health", "batch"))
    assert_passed(results)
    assert net.proxy.requests == []


# --- secrets from files -------------------------------------------------------------------------------------
async def test_rotated_token_file_is_used_on_the_next_run(net, tmp_path):
    token = tmp_path / "token"
    token.write_text("first-token\n")
    proxied = {"proxy_url": net.proxy.url}  # the forwarding proxy records each request's headers
    net.proxy.requests.clear()
    config = parse_config({"targets": [{"name": "t", "url": net.sim_url, "bearer_token_file": str(token),
                                        **proxied}], **FAST})
    target = config.targets[0]
    reporter = Reporter(io.StringIO())
    first = await run_modules(config, target, ["health"], 10, reporter)
    token.write_text("second-token")
    second = await run_modules(config, target, ["health"], 10, reporter)
    assert first[0].result.success and second[0].result.success
    seen = [r.headers.get("authorization") for r in net.proxy.requests if r.target.endswith("/health")]
    assert seen == ["Bearer first-token", "Bearer second-token"]
    for row in (*first, *second):
        assert "token" not in json.dumps(row.to_dict()).replace("bearer_token_file", "")


async def test_password_file_and_an_unreadable_secret(net, tmp_path):
    password = tmp_path / "password"
    password.write_text("pa55word\n")
    net.proxy.requests.clear()
    results = await run(net.sim_url, ("health",), basic_auth={"username": "probe", "password_file": str(password)},
                        proxy_url=net.proxy.url)
    assert_passed(results)
    assert net.proxy.requests[-1].headers["authorization"] == "Basic cHJvYmU6cGE1NXdvcmQ="

    password.unlink()
    results = await run(net.sim_url, ("health", "batch", "stream"),
                        basic_auth={"username": "probe", "password_file": str(password)})
    for module, result in results.items():
        assert not result.success and result.reason == "check_failed", (module, result.reason)
        assert f"basic_auth.password_file: no such file {str(password)!r}" in result.detail, result.detail

    empty = tmp_path / "empty"
    empty.write_text("\n")
    results = await run(net.sim_url, ("health",), bearer_token_file=str(empty))
    assert results["health"].reason == "check_failed" and "is empty" in results["health"].detail


def test_secret_files_resolve_relative_to_the_config(tmp_path):
    (tmp_path / "secrets").mkdir()
    shutil.copy(__file__, tmp_path / "secrets" / "x")
    config = parse_config({"targets": [{"name": "t", "url": "http://h", "bearer_token_file": "secrets/x"}]},
                          str(tmp_path / "config.yaml"))
    assert config.targets[0].bearer_token_file == str(tmp_path / "secrets" / "x")


# --- the daemon ----------------------------------------------------------------------------------------------
def test_daemon_probes_an_mtls_target_rereads_its_ca_on_reload_and_never_shows_the_token(net, tmp_path):
    from tests.metrics_text import value
    from tests.support import Stack, free_port, http_get, http_post, wait_until

    (tmp_path / "tls").mkdir()
    ca = tmp_path / "tls" / "ca.pem"
    ca.write_bytes(net.other_ca.path.read_bytes())  # the wrong CA first
    token = tmp_path / "token"
    token.write_text("daemon-secret-token-4711\n")
    port = free_port()
    config = f"""
exporter: {{listen: "{LOOPBACK}:{port}", log_level: debug}}
targets:
  - name: secure
    url: "{net.mtls.url}"
    probes: [batch]
    bearer_token_file: token
    tls_config: {{ca_file: tls/ca.pem, cert_file: "{net.client.cert}", key_file: "{net.client.key}",
                  server_name: {SERVER_NAME}}}
schedules:
  health: {{interval: 1s, timeout: 1s}}
  model_info: {{interval: 1s, timeout: 1s}}
  batch: {{interval: 1s, timeout: 1s}}
"""
    stack = Stack(tmp_path)
    try:
        base = stack.serve(config, port)
        labels = {"target": "secure", "endpoint": "health", "reason": "tls_error"}
        wait_until(lambda: (value(stack.metrics(), "whoasr_scrape_errors_total", **labels) or 0) >= 1, timeout=20,
                   what="a tls_error scrape with the wrong CA")
        ca.write_bytes(net.ca.path.read_bytes())  # the file changes, its name does not: a reload re-reads it
        assert http_post(base + "/-/reload")[0] == 200
        stack.wait_metric("whoasr_up", 1.0, timeout=20, target="secure")
        stack.wait_metric("whoasr_probe_success", 1.0, timeout=20, target="secure", probe="batch")
        status, body, _ = http_get(base + "/probe?target=secure&module=health", timeout=10)
        assert status == 200 and value(body.decode(), "whoasr_up") == 1.0, body.decode()
        shown = [stack.metrics(), http_get(base + "/")[1].decode(), http_get(base + "/api/history")[1].decode(),
                 http_get(base + "/probe?target=secure&module=batch&debug=true", timeout=10)[1].decode()]
    finally:
        stack.stop()
    shown.append(stack.exporter.output())
    assert "tls_error" in shown[-1] and "unknown CA" in shown[-1]  # the failure was logged, with its meaning
    for text in shown:
        assert "daemon-secret-token-4711" not in text
