"""`whoasr-exporter probe` as a real process against simulator processes: exit codes 0/1/2, the table,
the --json document (stdout stays pure JSON), --config names, --clip/--transcript, --timeout."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from exporter.clips import builtin_clip
from tests.support import ROOT, exporter_cmd, free_port, sim_delete, sim_fault, sim_put, sim_stats, start_simulator

pytestmark = pytest.mark.timeout(90)

DEFAULT_WAV = str(ROOT / "exporter" / "data" / "default.wav")


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("probe-cli")
    procs = []
    try:
        v1, v1_url = start_simulator(tmp, "v1", health_delay=0.05, name="v1")
        procs.append(v1)
        v2, v2_url = start_simulator(tmp, "v2", health_delay=0.05, name="v2")
        procs.append(v2)
        yield {"v1": v1_url, "v2": v2_url}
    finally:
        for proc in procs:
            proc.stop()


@pytest.fixture(autouse=True)
def no_faults(sims):
    for url in sims.values():
        sim_delete(url, "faults")
    yield


def probe(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(exporter_cmd("probe", *args), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def rows(table: str) -> dict[str, list[str]]:
    """PROBE -> the row's cells split on runs of 2+ spaces."""
    import re

    out = {}
    for line in table.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) >= 4 and cells[1] in ("PASS", "FAIL", "N/A"):
            out[cells[0]] = cells
    return out


def test_all_modules_pass_on_v2_table_and_exit_0(sims):
    run = probe("--target", sims["v2"])
    assert run.returncode == 0, run.stdout + run.stderr
    table = rows(run.stdout)
    assert list(table) == ["health", "batch", "stream", "punctuation", "vad"]  # timestamp is opt-in
    assert all(cells[1] == "PASS" for cells in table.values())
    assert "api v2, 5/5 models loaded" in table["health"]
    assert table["batch"][4] == "0.000"  # CER
    assert "first result" in run.stdout and "partials" in run.stdout
    assert builtin_clip().transcript.rstrip("。") in table["stream"][-1]
    assert run.stdout.rstrip().endswith("5 passed, 0 failed, 0 not applicable")
    assert run.stderr == ""  # not a terminal: no progress, no logs


def test_not_applicable_counts_as_passed(sims):
    run = probe("--target", sims["v1"], "--module", "timestamp")
    assert run.returncode == 0, run.stdout + run.stderr
    assert rows(run.stdout)["timestamp"][1] == "N/A"
    assert "timestamp: not applicable: v1 has no usable timestamp endpoint" in run.stdout


def test_a_failure_exits_1_and_says_why(sims):
    sim_fault(sims["v2"], "recognize", status=500)
    run = probe("--target", sims["v2"], "--module", "batch")
    assert run.returncode == 1
    cells = rows(run.stdout)["batch"]
    assert cells[1:3] == ["FAIL", "http_5xx"]
    assert "batch: http_5xx at status: HTTP 500" in run.stdout
    assert run.stdout.rstrip().endswith("0 passed, 1 failed, 0 not applicable")


def test_json_document_with_verbose_trace_on_stderr(sims):
    sim_fault(sims["v2"], "punctuation", garbage=True)
    run = probe("--target", sims["v2"], "--module", "all", "--json", "--verbose")
    assert run.returncode == 1
    document = json.loads(run.stdout)  # stdout is the document and nothing else
    assert document["target"] == sims["v2"] and document["success"] is False
    results = {result["probe"]: result for result in document["results"]}
    assert list(results) == ["health", "batch", "stream", "punctuation", "vad"]
    assert results["punctuation"]["success"] is False and results["punctuation"]["reason"] == "bad_response"
    assert results["batch"]["success"] is True and results["batch"]["cer"] == 0.0
    assert results["stream"]["stream"]["first_result_seconds"] > 0
    assert results["health"]["api"] == "v2" and results["health"]["models_loaded"]["offline_asr"] is True
    assert "[punctuation]" in run.stderr and "POST /punctuation/add -> HTTP 200" in run.stderr
    assert "[stream]" in run.stderr and "partial result 1" in run.stderr


def test_json_success_true_on_a_healthy_target(sims):
    run = probe("--target", sims["v1"], "--module", "health", "--json")
    assert run.returncode == 0
    document = json.loads(run.stdout)
    assert document["success"] is True and [r["probe"] for r in document["results"]] == ["health"]
    assert document["results"][0]["api"] == "v1"


def test_timeout_bounds_each_probe(sims):
    sim_fault(sims["v2"], "recognize", hang=True)
    started = time.monotonic()
    run = probe("--target", sims["v2"], "--module", "batch", "--timeout", "1", "--json")
    assert run.returncode == 1
    assert time.monotonic() - started < 6  # interpreter start + 1 s, not the 30 s schedule timeout
    assert json.loads(run.stdout)["results"][0]["reason"] == "timeout"


def test_refused_connection_exits_1(sims):
    run = probe("--target", f"http://127.0.0.1:{free_port()}", "--module", "health")
    assert run.returncode == 1
    assert rows(run.stdout)["health"][1:3] == ["FAIL", "connect_error"]


def test_named_target_from_config_runs_its_probes(sims, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"""
targets:
  - {{name: asr, url: "{sims['v2']}", probes: [punctuation, vad]}}
schedules:
  punctuation: {{interval: 60s, timeout: 7s}}
""")
    run = probe("--target", "asr", "--config", str(config))
    assert run.returncode == 0, run.stdout + run.stderr
    assert list(rows(run.stdout)) == ["health", "punctuation", "vad"]
    assert run.stdout.startswith("whoAsr probe of asr\n")


def test_clip_and_transcript_replace_the_configured_clip(sims):
    # The simulator hears its own transcript whatever the audio: a wrong reference is an accuracy failure.
    run = probe("--target", sims["v2"], "--module", "batch", "--clip", DEFAULT_WAV, "--transcript", "完全不同的一句话",
                "--json")
    assert run.returncode == 1
    result = json.loads(run.stdout)["results"][0]
    assert result["reason"] == "accuracy" and result["expected_transcript"] == "完全不同的一句话"
    run = probe("--target", sims["v2"], "--module", "batch", "--clip", DEFAULT_WAV,
                "--transcript", builtin_clip().transcript)
    assert run.returncode == 0, run.stdout


@pytest.mark.parametrize("args,message", [
    (["--target", "asr"], "unknown target 'asr' without --config"),
    (["--target", "http://127.0.0.1:9", "--clip", DEFAULT_WAV], "--clip and --transcript go together"),
    (["--target", "http://127.0.0.1:9", "--clip", "/nonexistent.wav", "--transcript", "x"], "--clip: cannot read"),
    (["--target", "ftp://example"], "--target: not a URL"),
    (["--target", "asr", "--config", "/nonexistent.yaml"], "cannot read"),
    (["--target", "http://127.0.0.1:9", "--module", "everything"], "invalid choice"),
    (["--target", "http://127.0.0.1:9", "--timeout", "-1"], "expected seconds"),
    (["--module", "health"], "required: --target"),
])
def test_usage_and_config_errors_exit_2(args, message):
    run = probe(*args)
    assert run.returncode == 2, run.stdout + run.stderr
    assert message in run.stderr
    assert run.stdout == ""


def test_named_target_missing_from_the_config_exits_2(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text('targets: [{name: other, url: "http://127.0.0.1:9"}]\n')
    run = probe("--target", "asr", "--config", str(config))
    assert run.returncode == 2 and f"unknown target 'asr' in {config}" in run.stderr


def test_unloaded_on_demand_model_is_not_loaded_by_the_cli(sims):
    url = sims["v2"]
    sim_put(url, "models/offline_asr", {"loaded": False})
    try:
        run = probe("--target", url, "--module", "batch", "-v")
        assert run.returncode == 1, run.stdout + run.stderr
        assert "model_not_loaded" in run.stdout and "model check: offline_asr not loaded" in run.stderr
        assert sim_stats(url)["on_demand_loads"]["offline_asr"] == 0
    finally:
        sim_put(url, "models/offline_asr", {"loaded": True})
