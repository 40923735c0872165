"""The whoAsr client: generation detection, size caps, and every transport failure as a reason."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from exporter.client import MAX_BODY_BYTES, TargetClient, new_session
from exporter.config import TargetConfig
from exporter.results import Failure
from tests.support import LOOPBACK, free_port


@pytest.fixture
async def server():
    """A small HTTP server whose answers each test sets; counts /openapi.json calls."""
    state = {"paths": {"/offline/recognize": {}}, "openapi_calls": 0, "auth": []}

    async def openapi(request):
        state["openapi_calls"] += 1
        return web.json_response({"openapi": "3.1.0", "paths": state["paths"]})

    async def big(request):
        return web.Response(body=b"x" * (MAX_BODY_BYTES + 1), content_type="application/json")

    async def slow(request):
        await asyncio.sleep(5)
        return web.json_response({})

    async def echo_auth(request):
        state["auth"].append(request.headers.get("Authorization"))
        return web.json_response({"ok": True})

    async def status(request):
        return web.Response(status=int(request.match_info["code"]), text="detail in /tmp/tmpab12cd.wav")

    app = web.Application()
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/big", big)
    app.router.add_get("/slow", slow)
    app.router.add_get("/auth", echo_auth)
    app.router.add_get("/status/{code}", status)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, LOOPBACK, port).start()
    yield f"http://{LOOPBACK}:{port}", state
    await runner.cleanup()


def client_for(session, url, **target):
    return TargetClient(session, TargetConfig(name="t", url=url, **target))


async def test_generation_is_detected_from_openapi_and_cached(server):
    url, state = server
    async with new_session() as session:
        client = client_for(session, url)
        assert await client.detect_api(2) == "v2"
        assert await client.path("batch", 2) == "/offline/recognize"
        assert state["openapi_calls"] == 1  # cached
        state["paths"] = {"/recognize": {}}
        client.forget_api()  # after a failure: detect again
        assert await client.detect_api(2) == "v1" and await client.path("punctuation", 2) == "/punctuate"
        assert state["openapi_calls"] == 2
        state["paths"] = {"/somewhere": {}}
        client.forget_api()
        with pytest.raises(Failure) as info:
            await client.detect_api(2)
        assert info.value.reason == "bad_response"


async def test_a_configured_generation_is_never_probed(server):
    url, state = server
    async with new_session() as session:
        client = client_for(session, url, api="v1")
        client.forget_api()
        assert await client.detect_api(2) == "v1" and state["openapi_calls"] == 0


async def test_bodies_are_capped(server):
    url, _ = server
    async with new_session() as session:
        with pytest.raises(Failure) as info:
            await client_for(session, url).request("GET", "/big", timeout=5)
    assert info.value.reason == "bad_response" and "larger than" in info.value.detail


async def test_deadline_covers_the_whole_request(server):
    url, _ = server
    async with new_session() as session:
        started = asyncio.get_running_loop().time()
        with pytest.raises(Failure) as info:
            await client_for(session, url).request("GET", "/slow", timeout=0.3)
        assert asyncio.get_running_loop().time() - started < 1.0
    assert info.value.reason == "timeout"


@pytest.mark.parametrize("code,reason", [(404, "http_4xx"), (422, "http_4xx"), (500, "http_5xx"), (503, "http_5xx")])
async def test_status_codes_become_reasons_with_a_redacted_body(server, code, reason):
    url, _ = server
    async with new_session() as session:
        reply = await client_for(session, url).request("GET", f"/status/{code}", timeout=2)
    with pytest.raises(Failure) as info:
        reply.expect_ok()
    assert info.value.reason == reason and info.value.http_status == code
    assert "/tmp/" not in info.value.error_body and "<path>" in info.value.error_body


async def test_refused_connection_and_not_json():
    async with new_session() as session:
        client = client_for(session, f"http://{LOOPBACK}:{free_port()}")
        with pytest.raises(Failure) as info:
            await client.request("GET", "/health", timeout=2)
        assert info.value.reason == "connect_error"
        with pytest.raises(Failure) as info:
            await client.ws_connect("/ws/x", timeout=2)
        assert info.value.reason == "connect_error" and info.value.step == "connect"


async def test_credentials_are_sent(server):
    url, state = server
    async with new_session() as session:
        await client_for(session, url, bearer_token="tok").request("GET", "/auth", timeout=2)
        await client_for(session, url, basic_auth={"username": "u", "password": "p"}).request("GET", "/auth", timeout=2)
    assert state["auth"] == ["Bearer tok", "Basic dTpw"]
