"""The batch-path probes (batch, punctuation, vad, timestamp) against the real simulator, both generations.

One simulator process per generation serves the whole module; every test starts from a clean state
(no faults, all models loaded, zero counters), injects what it needs through the admin API and checks
the reason and the measured values of one `run_probe`.
"""

from __future__ import annotations

import io
import json
import time
import wave

import pytest

from exporter.client import Reply, TargetClient, new_session
from exporter.clips import Clip, builtin_clip, decode
from exporter.config import TargetConfig
from exporter.kinds import KINDS
from exporter.probes import ProbeContext, run_probe
from exporter.probes.batch import _transcript
from exporter.probes.common import audio_form
from exporter.probes.timestamp import V1_DETAIL
from exporter.probes.vad import _segments
from exporter.results import Failure
from tests.support import (free_port, http_post, sim_admin, sim_delete, sim_fault, sim_model, sim_put, sim_reset,
                           sim_stats, start_simulator)

pytestmark = pytest.mark.timeout(20)

KINDS_V1 = ("batch", "punctuation", "vad")  # timestamp does not apply to v1
CLIP = builtin_clip()
# How far above an injected latency a run may end: room for a shared, loaded machine, yet below the
# 1 s that a timeout not enforced would take.
SLACK = 0.3
ON_DEMAND_MODEL = {"batch": "offline_asr", "punctuation": "punctuation"}  # what whoAsr loads on a request
ENDPOINT = {"batch": "recognize", "punctuation": "punctuation", "vad": "vad", "timestamp": "timestamp"}


def kinds_of(api: str) -> tuple[str, ...]:
    return KINDS_V1 if api == "v1" else (*KINDS_V1, "timestamp")


# (generation, probe kind) pairs where the probe applies: timestamps have no v1 endpoint that works,
# which test_timestamp_is_not_applicable_on_v1 covers.
APPLICABLE = pytest.mark.parametrize("sim,kind", [(api, kind) for api in ("v1", "v2") for kind in kinds_of(api)],
                                     indirect=["sim"])


def sim_admin_models(url: str) -> dict:
    return sim_admin(url, "GET", "models")


def requests_seen(url: str, endpoint: str) -> int:
    return sim_stats(url)["requests"][endpoint]


def reset(url: str) -> str:
    """No faults, every model loaded (loads quick and successful), zero counters."""
    sim_reset(url)
    sim_put(url, "load_delay", {"seconds": 0.05})
    sim_delete(url, "stats")
    return url


@pytest.fixture(scope="module")
def simulators(tmp_path_factory):
    started = {}
    try:
        for api in ("v1", "v2"):
            started[api] = start_simulator(tmp_path_factory.mktemp(api), api)
        yield {api: url for api, (_, url) in started.items()}
    finally:
        for proc, _ in started.values():
            proc.stop()


@pytest.fixture(params=["v1", "v2"])
def sim(request, simulators):
    """The simulator of one generation, reset to a clean state."""
    return request.param, reset(simulators[request.param])


@pytest.fixture
def v2(simulators):
    """The v2 simulator alone (timestamps exist only there), reset."""
    return reset(simulators["v2"])


async def probe(url: str, kind: str, timeout: float = 5.0, clip: Clip = CLIP, **settings):
    """Runs one probe of `kind` the way the scheduler does, with a fresh session and client."""
    async with new_session() as session:
        client = TargetClient(session, TargetConfig(name="sim", url=url, api="auto"))
        ctx = ProbeContext(client=client, settings=KINDS[kind].settings(**settings), timeout=timeout, clip=clip)
        return await run_probe(kind, ctx)


def assert_failed(result, reason: str) -> None:
    assert (result.success, result.reason) == (False, reason), (result.detail, result.trace)


# ---------------------------------------------------------------- no fault: every probe passes

@APPLICABLE
async def test_probe_passes_without_faults(sim, kind):
    api, url = sim
    result = await probe(url, kind)
    assert result.success, (result.reason, result.detail, result.trace)
    assert result.reason is None and result.http_status == 200
    assert all(c.ok for c in result.checks) and result.checks
    assert requests_seen(url, ENDPOINT[kind]) == 1


async def test_batch_exact_transcript_has_zero_cer(sim):
    # Both generations accept the upload only as sent (v1: Content-Type audio/wav, v2: a .wav name).
    _, url = sim
    result = await probe(url, "batch")
    assert result.success
    assert result.transcript.rstrip("。") == CLIP.transcript == result.expected_transcript
    assert (result.cer, result.character_errors, result.reference_characters) == (0.0, 0, len(CLIP.transcript))
    assert result.audio_seconds == pytest.approx(CLIP.duration_seconds)
    assert 0 < result.processing_seconds < result.duration_seconds
    assert result.real_time_factor == pytest.approx(result.processing_seconds / CLIP.duration_seconds)


@pytest.mark.parametrize("substituted, passes", [(1, True), (2, True), (3, False)])
async def test_batch_cer_counts_substituted_characters(sim, substituted, passes):
    _, url = sim
    sim_fault(url, "recognize", substitute_chars=substituted)
    result = await probe(url, "batch", max_cer=0.2)
    assert len(CLIP.transcript) == 11
    assert result.cer == substituted / 11
    assert (result.character_errors, result.reference_characters) == (substituted, 11)
    if passes:
        assert result.success
    else:
        assert_failed(result, "accuracy")
        assert "3/11" in result.detail


@APPLICABLE
async def test_injected_latency_is_measured(sim, kind):
    _, url = sim
    sim_fault(url, ENDPOINT[kind], latency=0.3)
    result = await probe(url, kind)
    assert result.success
    assert 0.3 <= result.duration_seconds <= 0.3 + SLACK
    if kind in ("batch", "vad", "timestamp"):  # audio went up: the server's time on it is measured
        assert 0.3 <= result.processing_seconds <= result.duration_seconds


async def test_batch_hotwords(sim):
    _, url = sim
    result = await probe(url, "batch", hotwords=("今天", "公园"), expect_hotwords=True)
    assert result.success and result.checks[-1].name == "hotwords"
    result = await probe(url, "batch", hotwords=("达摩院", "公园"), expect_hotwords=True)
    assert_failed(result, "check_failed")
    assert "达摩院" in result.detail and result.cer == 0.0  # what was measured before the check survives
    result = await probe(url, "batch", hotwords=("达摩院",))  # not expected: sent, but not checked
    assert result.success


async def test_punctuation_adds_marks(sim):
    _, url = sim
    result = await probe(url, "punctuation")
    assert result.success
    assert result.expected_transcript == KINDS["punctuation"].settings().text
    assert result.transcript != result.expected_transcript and "。" in result.transcript


async def test_vad_reports_speech_in_the_clip(sim):
    _, url = sim
    result = await probe(url, "vad")
    assert result.success
    assert result.audio_seconds == pytest.approx(CLIP.duration_seconds)
    assert result.processing_seconds > 0


async def test_vad_bounds_fail_with_numbers(sim):
    _, url = sim
    result = await probe(url, "vad", min_segments=5, max_segments=9)
    assert_failed(result, "check_failed")
    assert "expected 5 to 9" in result.detail
    result = await probe(url, "vad", min_speech_ratio=0.99, max_speech_ratio=1.0)
    assert_failed(result, "check_failed")
    assert result.step == "speech_ratio" and "ratio" in result.detail


async def test_timestamp_passes_on_v2(v2):
    result = await probe(v2, "timestamp")
    assert result.success and result.applicable
    assert [c.name for c in result.checks] == ["results", "text_aligned", "times"]
    assert requests_seen(v2, "timestamp") == 1


async def test_timestamp_is_not_applicable_on_v1(simulators):
    url = reset(simulators["v1"])
    result = await probe(url, "timestamp")
    assert (result.applicable, result.success, result.reason) == (False, False, None)
    assert result.detail == V1_DETAIL
    assert requests_seen(url, "timestamp") == 0


# ---------------------------------------------------------------- faults -> reasons

HTTP_FAULTS = [
    ({"status": 400}, "http_4xx"),
    ({"status": 404}, "http_4xx"),
    ({"status": 500}, "http_5xx"),
    ({"status": 502}, "http_5xx"),
    ({"garbage": True}, "bad_response"),
    ({"wrong_shape": True}, "bad_response"),
    ({"wrong_shape": "list"}, "bad_response"),
]


@pytest.mark.parametrize("faults, reason", HTTP_FAULTS, ids=[f"{next(iter(f))}-{r}" for f, r in HTTP_FAULTS])
async def test_http_fault_gives_reason(sim, faults, reason):
    api, url = sim
    for kind in kinds_of(api):
        sim_fault(url, ENDPOINT[kind], **faults)
        result = await probe(url, kind)
        assert_failed(result, reason)
        if "status" in faults:
            assert result.http_status == faults["status"] and result.error_body


@APPLICABLE
async def test_latency_beyond_timeout_is_timeout(sim, kind):
    _, url = sim
    sim_fault(url, ENDPOINT[kind], latency=1.0)
    result = await probe(url, kind, timeout=0.4)
    assert_failed(result, "timeout")
    floor = 0.4 - (0.05 if kind in ON_DEMAND_MODEL else 0.0)  # the model_info read is not in the duration
    assert floor <= result.duration_seconds <= 0.4 + SLACK


@APPLICABLE
async def test_hang_is_timeout_within_bound(sim, kind):
    _, url = sim
    sim_fault(url, ENDPOINT[kind], hang=True)
    result = await probe(url, kind, timeout=0.5)
    assert_failed(result, "timeout")
    # batch and punctuation leave their fresh /model/info read (about a millisecond) out of the duration
    floor = 0.5 - (0.05 if kind in ON_DEMAND_MODEL else 0.0)
    assert floor <= result.duration_seconds <= 0.5 + SLACK


async def test_model_exception(sim):
    api, url = sim
    expected = {"batch": "http_5xx", "punctuation": "check_failed", "vad": "http_5xx", "timestamp": "http_5xx"}
    for kind in kinds_of(api):
        sim_fault(url, ENDPOINT[kind], model_exception=True)
        result = await probe(url, kind)
        assert_failed(result, expected[kind])
        if kind == "punctuation":  # whoAsr answers 200 with the text unchanged
            assert result.http_status == 200 and "unchanged" in result.detail


async def test_undecodable_upload_error_body_is_redacted(sim):
    _, url = sim
    # A clip the server cannot decode: its 500 names the server's temp file.
    clip = Clip(name="bad", transcript=CLIP.transcript, file_bytes=b"not audio at all", samples=CLIP.samples,
                source_rate=16000)
    result = await probe(url, "batch", clip=clip)
    assert_failed(result, "http_5xx")
    assert "/tmp/" not in result.error_body and "<path>" in result.error_body


def silent_clip():
    """Two seconds of silence, labelled with the default transcript: whoAsr hears nothing."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1), wav.setsampwidth(2), wav.setframerate(16000)
        wav.writeframes(b"\0\0" * 32000)
    return decode("silence", buffer.getvalue(), CLIP.transcript)


async def test_silence_is_empty_transcript_counted_as_all_wrong(sim):
    _, url = sim
    result = await probe(url, "batch", clip=silent_clip())
    assert_failed(result, "empty_transcript")
    assert (result.transcript, result.cer, result.character_errors, result.reference_characters) == ("", 1.0, 11, 11)
    assert result.audio_seconds == 2.0


ON_DEMAND = pytest.mark.parametrize("kind", ["batch", "punctuation"])


def on_demand_loads(url: str) -> dict[str, int]:
    return sim_stats(url)["on_demand_loads"]


@ON_DEMAND
async def test_unloaded_on_demand_model_is_not_requested(sim, kind):
    _, url = sim
    sim_model(url, ON_DEMAND_MODEL[kind], loaded=False)
    result = await probe(url, kind)
    assert_failed(result, "model_not_loaded")
    assert result.step == "model_check" and result.http_status is None
    assert requests_seen(url, ENDPOINT[kind]) == 0
    assert requests_seen(url, "model_info") == 1  # read afresh by the run itself, nothing cached
    assert set(on_demand_loads(url).values()) == {0}
    assert sim_admin_models(url)[ON_DEMAND_MODEL[kind]]["loaded"] is False
    assert any(f"model check: {ON_DEMAND_MODEL[kind]} not loaded" in line for line in result.trace), result.trace


@ON_DEMAND
async def test_every_on_demand_request_is_preceded_by_a_fresh_read(sim, kind):
    """Loaded, unloaded through whoAsr's own API, reloaded: each run reads the state again and follows it."""
    _, url = sim
    model = ON_DEMAND_MODEL[kind]
    outcomes = []
    for loaded in (True, False, True, False):
        if loaded:
            assert http_post(f"{url}/model/load", json.dumps({"model_type": model}).encode(),
                             headers={"Content-Type": "application/json"})[0] == 200
        else:
            assert http_post(f"{url}/model/unload/{model}")[0] == 200
        result = await probe(url, kind)
        outcomes.append(result.success if loaded else result.reason)
    assert outcomes == [True, "model_not_loaded", True, "model_not_loaded"]
    assert requests_seen(url, "model_info") == 4 and requests_seen(url, ENDPOINT[kind]) == 2
    assert set(on_demand_loads(url).values()) == {0}


@ON_DEMAND
async def test_unreadable_model_state_sends_nothing(sim, kind):
    """If the state cannot be read the request is not sent: the run fails with the read's reason."""
    _, url = sim
    sim_fault(url, "model_info", status=500)
    result = await probe(url, kind)
    assert_failed(result, "http_5xx")
    assert result.step == "model_check" and "cannot read the model state" in result.detail
    assert requests_seen(url, ENDPOINT[kind]) == 0
    sim_fault(url, "model_info", garbage=True)
    result = await probe(url, kind)
    assert_failed(result, "bad_response")
    assert result.step == "model_check" and requests_seen(url, ENDPOINT[kind]) == 0


@ON_DEMAND
async def test_the_read_counts_in_the_deadline_not_in_the_duration(sim, kind):
    _, url = sim
    sim_fault(url, "model_info", latency=0.4)
    began = time.monotonic()
    result = await probe(url, kind)
    wall = time.monotonic() - began
    assert result.success, (result.reason, result.detail, result.trace)
    assert result.duration_seconds <= wall - 0.4  # the read's 0.4 s (at least) is left out
    result = await probe(url, kind, timeout=0.3)  # the read alone outlasts the deadline
    assert_failed(result, "timeout")
    assert result.step == "model_check" and requests_seen(url, ENDPOINT[kind]) == 1


async def test_batch_allow_model_load_sends_the_request(sim):
    _, url = sim
    sim_model(url, "offline_asr", loaded=False)
    result = await probe(url, "batch", allow_model_load=True)
    assert result.success
    assert requests_seen(url, "recognize") == 1
    assert requests_seen(url, "model_info") == 0  # allowed: no need to look
    assert on_demand_loads(url)["offline_asr"] == 1  # the one load the operator allowed
    # A failed on-demand load says "Failed to load": a server error, not a known-unloaded model.
    sim_model(url, "offline_asr", loaded=False, fail_load=True)
    result = await probe(url, "batch", allow_model_load=True)
    assert_failed(result, "http_5xx")


async def test_punctuation_with_failing_model_load_is_check_failed(sim):
    _, url = sim
    sim_model(url, "punctuation", loaded=False, fail_load=True)
    result = await probe(url, "punctuation", allow_model_load=True)
    assert_failed(result, "check_failed")
    assert "unchanged" in result.detail and result.http_status == 200


async def test_vad_not_loaded_is_503_model_not_loaded(sim):
    _, url = sim
    sim_model(url, "vad", loaded=False)
    result = await probe(url, "vad")
    assert_failed(result, "model_not_loaded")
    assert result.http_status == 503 and "VAD model not loaded" in result.detail
    assert requests_seen(url, "vad") == 1


async def test_timestamp_not_loaded_is_503_model_not_loaded(v2):
    sim_model(v2, "timestamp", loaded=False)
    result = await probe(v2, "timestamp")
    assert_failed(result, "model_not_loaded")
    assert result.http_status == 503


@pytest.mark.parametrize("kind", ["batch", "punctuation", "vad", "timestamp"])
async def test_connection_refused_is_connect_error(kind):
    result = await probe(f"http://127.0.0.1:{free_port()}", kind, timeout=2.0)
    assert_failed(result, "connect_error")
    assert result.duration_seconds < 1.0


# ---------------------------------------------------------------- shapes the simulator does not send

def reply(document) -> Reply:
    return Reply(200, json.dumps(document, ensure_ascii=False).encode(), 0.01, "application/json")


def test_documented_shapes_are_read():
    assert _transcript(reply({}), {"success": True, "text": "今天"}) == "今天"
    assert _transcript(reply({}), {"results": [{"text": "今"}, {"text": "天"}]}) == "今天"
    assert _segments(reply({}), {"speech_segments": [[0, 500], [900, 1200]]}) == [(0, 500), (900, 1200)]
    for document in ({"results": [{"txt": 1}]}, {"results": "x"}, {}):
        with pytest.raises(Failure) as caught:
            _transcript(reply(document), document)
        assert caught.value.reason == "bad_response"
    for segments in ([[5, 1]], [[0]], [["a", 1]], "x", [[True, 2]]):
        with pytest.raises(Failure):
            _segments(reply({}), {"segments": segments})


async def test_upload_part_satisfies_both_generations():
    form = audio_form(CLIP, "file", hotword=None, batch_size_s="300")
    payload = form()
    chunks = []

    class Sink:
        async def write(self, data):
            chunks.append(bytes(data))

    await payload.write(Sink())
    body = b"".join(chunks)
    assert b'filename="probe.wav"' in body and b"Content-Type: audio/wav" in body
    assert b'name="batch_size_s"' in body and b"hotword" not in body


async def test_timestamp_sends_the_short_clip_and_v2_keeps_the_upload(v2):
    """whoAsr v2 never deletes a /timestamp/predict upload: the simulator counts what each run leaves,
    and the probe's default clip keeps that to one short file."""
    from exporter.clips import builtin_clip_bytes
    from exporter.kinds import TimestampProbe

    short = builtin_clip(TimestampProbe().clip)
    assert short.duration_seconds <= 1.5
    result = await probe(v2, "timestamp", clip=short)
    assert result.success, (result.reason, result.detail, result.trace)
    assert sim_stats(v2)["leaked_uploads"] == {"files": 1, "bytes": builtin_clip_bytes("short")}
    sim_model(v2, "timestamp", loaded=False)  # a failed request leaves nothing only if refused before the save
    result = await probe(v2, "timestamp", clip=short)
    assert_failed(result, "model_not_loaded")
    assert sim_stats(v2)["leaked_uploads"]["files"] == 1


@APPLICABLE
async def test_other_probes_leave_no_upload_behind(sim, kind):
    _, url = sim
    result = await probe(url, kind)
    assert result.success
    assert sim_stats(url)["leaked_uploads"]["files"] == (1 if kind == "timestamp" else 0)
