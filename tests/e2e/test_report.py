"""`whoasr-exporter report` against a real Prometheus that scraped the exporter in both modes.

A stack of its own (smaller than the alerting stack, and with faults present from the start so the
numbers are known): three simulators, one exporter, and Prometheus (behind basic auth, evaluating the
rules `render` writes) scraping the exporter's /metrics (scheduled mode) and its /probe (multi-target
mode) every second or two.

- asr-sched, scheduled, the documented /health schema (disk, model memory, model requests), CPU 12.5 %,
  its punctuation model failing (answers with the text unchanged: `check_failed`);
- asr-ok, scheduled, v1, CPU 50 %, healthy;
- asr-multi, multi-target only (Prometheus scrapes /probe?target=asr-multi&module=...), CPU 12.5 %,
  its punctuation model failing too.

The report runs as the real command line, in a subprocess; the figures it prints are checked against what
was injected and against the simulators' own request counts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import time
import urllib.parse
from pathlib import Path

import bcrypt
import pytest
import yaml

from exporter.clips import builtin_clip
from exporter.prometheus_api import PrometheusAPI, PrometheusError
from tests.support import (LOOPBACK, ManagedProcess, exporter_cmd, free_port, http_get, sim_fault, sim_put,
                           sim_stats, start_simulator, wait_until)

USER, PASSWORD = "report", "s3cret-report"
SCHEDULED = {"asr-sched": ["batch", "stream", "punctuation"], "asr-ok": ["batch", "punctuation"]}
MULTI = "asr-multi"
MULTI_MODULES = {"health": "2s", "punctuation": "2s", "stream": "3s"}  # module -> scrape interval
MIN_RUNS = 10  # punctuation runs each target has in the report at least
WAIT_RUNS = MIN_RUNS + 2  # ... and in Prometheus before the report is asked
REPORT_RANGE = "10m"  # longer than the stack lives: every sample Prometheus holds is in the range


def _auth() -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}


class ReportStack:
    def __init__(self, tmp: Path, prometheus: str, exporter: str, sims: dict[str, str],
                 sim_procs: dict[str, ManagedProcess]):
        self.tmp, self.prometheus, self.exporter, self.sims = tmp, prometheus, exporter, sims
        self.sim_procs = sim_procs
        (tmp / "password").write_text(PASSWORD + "\n")
        self.password_file = tmp / "password"

    def query(self, expr: str) -> list[dict]:
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        status, body, _ = http_get(url, headers=_auth())
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", f"{expr}: {answer}"
        return answer["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        assert len(result) <= 1, f"{expr}: {result}"
        return float(result[0]["value"][1]) if result else None

    def report(self, *args: str, auth: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        extra = ["--basic-auth", f"{USER}:{self.password_file}"] if auth else []
        return subprocess.run(exporter_cmd("report", *args, *extra), capture_output=True, text=True,
                              timeout=timeout)

    def json_report(self, *args: str) -> tuple[int, dict]:
        done = self.report("--prometheus", self.prometheus, "--range", REPORT_RANGE, "--format", "json", *args)
        assert done.returncode in (0, 1), f"exit {done.returncode}: {done.stderr}"
        return done.returncode, json.loads(done.stdout)


def write_short_clip(directory: Path) -> Path:
    """The first 0.8 s of the built-in clip: one 600 ms stride and a final rest, short enough to stream in
    real time within a 2 s interval (the simulator's model says the rest of the transcript at the end)."""
    import soundfile

    from exporter.clips import SAMPLE_RATE

    path = directory / "short.wav"
    soundfile.write(path, builtin_clip().samples[:int(0.8 * SAMPLE_RATE)], SAMPLE_RATE)
    return path


def _exporter_config(sims: dict[str, str], port: int, short_clip: Path) -> dict:
    targets = [{"name": name, "url": sims[name], "probes": probes} for name, probes in SCHEDULED.items()]
    targets.append({"name": MULTI, "url": sims[MULTI], "probes": []})
    return {
        "exporter": {"listen": f"{LOOPBACK}:{port}", "log_format": "json", "log_level": "info"},
        "targets": targets,
        "schedules": {
            "health": {"interval": "1s", "timeout": "900ms"},
            "model_info": {"interval": "1s", "timeout": "900ms"},
            "batch": {"interval": "2s", "timeout": "1800ms"},
            "stream": {"interval": "2s", "timeout": "1800ms"},
            "punctuation": {"interval": "1500ms", "timeout": "1400ms"},
            # Not scheduled here, but the rendered failing alerts wait out the longest probe timeout
            # (a /health scrape waits for the probes in flight): keep every kind's short.
            "vad": {"interval": "2s", "timeout": "1800ms"},
            "timestamp": {"interval": "2s", "timeout": "1800ms"},
            "stream_vad": {"interval": "2s", "timeout": "1800ms"},
        },
        "thresholds": {"response_time_seconds": 1.0, "for_short": "2s", "for_long": "10s"},
        # A 0.8 s clip streamed in real time: result lags are measured then.
        "clips": {"voice": {"path": str(short_clip), "transcript": builtin_clip().transcript}},
        "probes": {"stream": {"clip": "voice"}},
    }


def _prometheus_config(rules: Path, exporter_port: int) -> dict:
    exporter = f"{LOOPBACK}:{exporter_port}"
    jobs = [{"job_name": "whoasr", "static_configs": [{"targets": [exporter]}]}]
    for module, interval in MULTI_MODULES.items():
        jobs.append({
            "job_name": f"whoasr-probe-{module}", "metrics_path": "/probe", "params": {"module": [module]},
            "scrape_interval": interval, "scrape_timeout": interval,
            "static_configs": [{"targets": [MULTI]}],
            "relabel_configs": [  # as deploy/prometheus/multi-target.yml does
                {"source_labels": ["__address__"], "target_label": "__param_target"},
                {"source_labels": ["__param_target"], "target_label": "instance"},
                {"source_labels": ["__param_target"], "target_label": "target"},
                {"source_labels": ["__param_module"], "target_label": "probe"},
                {"target_label": "__address__", "replacement": exporter},
            ],
        })
    return {"global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)], "scrape_configs": jobs}


def _start(launched: list, args: list[str], log: Path, ready_url: str, what: str, headers=None) -> ManagedProcess:
    proc = ManagedProcess(args, log)
    launched.append(proc)
    try:
        wait_until(lambda: not proc.alive() or http_get(ready_url, timeout=1, headers=headers)[0] == 200,
                   timeout=30, interval=0.1, what=f"{what} on {ready_url}")
        assert proc.alive(), f"{what} exited with {proc.proc.returncode}"
    except (TimeoutError, AssertionError) as exc:
        proc.stop()
        raise AssertionError(f"{exc}\n--- {what} log ---\n{proc.output()[-3000:]}") from None
    return proc


@pytest.fixture(scope="module")
def report_stack(binaries, launched, tmp_path_factory):
    from exporter.config import load_config
    from exporter.render import write_all

    tmp = tmp_path_factory.mktemp("report")
    mine: list[ManagedProcess] = []
    try:
        sims, sim_procs = {}, {}
        for name, api, extra in (("asr-sched", "v2", ("--health-schema", "documented")), ("asr-ok", "v1", ()),
                                 (MULTI, "v2", ())):
            proc, sims[name] = start_simulator(tmp, api, *extra, name=name)
            launched.append(proc)
            mine.append(proc)
            sim_procs[name] = proc
        # The faults are there from the first run on, so every punctuation run of these two fails.
        for name in ("asr-sched", MULTI):
            sim_fault(sims[name], "punctuation", model_exception=True)
        sim_put(sims["asr-ok"], "system", {"cpu_percent": 50})

        exporter_port = free_port()
        config_path = tmp / "exporter.yaml"
        config = _exporter_config(sims, exporter_port, write_short_clip(tmp))
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        exporter = f"http://{LOOPBACK}:{exporter_port}"
        mine.append(_start(launched, exporter_cmd("serve", "--config", str(config_path)), tmp / "exporter.log",
                           exporter + "/-/ready", "exporter"))

        write_all(load_config(config_path), tmp / "render")
        prom_config = tmp / "prometheus.yml"
        prom_config.write_text(yaml.safe_dump(_prometheus_config(tmp / "render/alerts/whoasr-rules.yml",
                                                                 exporter_port)))
        web_config = tmp / "web.yml"
        hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
        web_config.write_text(yaml.safe_dump({"basic_auth_users": {USER: hashed}}))
        prom_port = free_port()
        prometheus = f"http://{LOOPBACK}:{prom_port}"
        (tmp / "prometheus-data").mkdir()
        mine.append(_start(launched, [binaries["prometheus"], f"--config.file={prom_config}",
                                      f"--web.config.file={web_config}",
                                      f"--storage.tsdb.path={tmp / 'prometheus-data'}",
                                      f"--web.listen-address={LOOPBACK}:{prom_port}"],
                           tmp / "prometheus.log", prometheus + "/-/ready", "prometheus", headers=_auth()))
        stack = ReportStack(tmp, prometheus, exporter, sims, sim_procs)
        _wait_for_data(stack)
        yield stack
    finally:
        for proc in reversed(mine):
            proc.stop()


def _wait_for_data(stack: ReportStack) -> None:
    """Until Prometheus holds MIN_RUNS punctuation runs per target, in both modes, and the failing probe's
    alert fired (tens of seconds)."""
    def missing() -> list[str]:
        out = []
        for target in SCHEDULED:
            runs = stack.value(
                f'last_over_time(whoasr_probe_runs_total{{target="{target}", probe="punctuation"}}[10m])')
            if (runs or 0) < WAIT_RUNS:
                out.append(f"{target}: {runs} punctuation runs")
        samples = stack.value(f'count_over_time(whoasr_probe_success{{target="{MULTI}", probe="punctuation"}}[10m])')
        if (samples or 0) < WAIT_RUNS:
            out.append(f"{MULTI}: {samples} /probe punctuation scrapes")
        if not stack.query(f'count_over_time(whoasr_probe_success{{target="{MULTI}", probe="stream"}}[10m])'):
            out.append(f"{MULTI}: no /probe stream scrape")
        firing = 'ALERTS{alertname="WhoasrProbeFailing", alertstate="firing", target="asr-sched"}'
        if (stack.value(f"max(count_over_time({firing}[10m]))") or 0) < 3:
            out.append("WhoasrProbeFailing not firing for asr-sched for 3 evaluations")
        return out

    try:
        wait_until(lambda: not missing(), timeout=90, interval=1, what="report data in Prometheus")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\nmissing: {missing()}\nexporter log tail:\n"
                             f"{(stack.tmp / 'exporter.log').read_text()[-2000:]}") from None


def _target(document: dict, name: str) -> dict:
    found = [t for t in document["targets"] if t["target"] == name]
    assert len(found) == 1, f"{name} in {[t['target'] for t in document['targets']]}"
    return found[0]


def rendered_slos(rules: Path, target: str) -> dict[tuple[str, str], tuple[str, float]]:
    """(probe, kind) -> (SLO name, objective) of the SLOs the rendered rule file gives `target`: one
    per target, or one per probe kind for the fleet, whichever the rules define."""
    groups = yaml.safe_load(rules.read_text())["groups"]
    found = {}
    for rule in (r for g in groups for r in g["rules"] if r.get("record") == "slo:objective:ratio"):
        labels = rule["labels"]
        if labels.get("target", target) == target and labels["probe"] in SCHEDULED[target]:
            objective = float(re.match(r"(?:vector\()?([0-9.]+)", rule["expr"]).group(1))  # vector(0.99), 0.99 * ...
            found[(labels["probe"], labels["sloth_slo"].rsplit("-", 1)[1])] = (labels["sloth_slo"], objective)
    return found


def assert_all_failed(probe: dict) -> None:
    """Every run failed, each failure counted (also the first, on a series born at 1), by the injected
    fault's reason; one run may have timed out instead on a loaded machine."""
    failures = probe["failures"]
    assert sum(failures.values()) == probe["runs"] and probe["success_ratio"] == 0.0, probe
    assert set(failures) <= {"check_failed", "timeout"} and failures["check_failed"] >= probe["runs"] - 1, probe


def assert_passed(probe: dict) -> None:
    """Every run passed, but for at most one timeout on a loaded machine; the ratio follows the counts."""
    failures = probe["failures"]
    assert probe["runs"] > 0 and set(failures) <= {"timeout"} and sum(failures.values()) <= 1, probe
    assert probe["success_ratio"] == 1 - sum(failures.values()) / probe["runs"], probe


# --- JSON: the figures --------------------------------------------------------------------------------
def test_json_scheduled_mode_numbers_match_what_was_injected(report_stack):
    code, document = report_stack.json_report()
    assert set(document) == {"range_seconds", "generated_at", "prometheus", "targets", "alerts"}
    assert document["range_seconds"] == 600
    assert document["prometheus"] == report_stack.prometheus
    sched = _target(document, "asr-sched")
    assert set(sched) == {"target", "up_ratio", "resources", "models", "probes", "slos"}
    assert sched["up_ratio"] == 1.0
    assert sched["resources"]["cpu"] == {"avg": 0.125, "min": 0.125, "max": 0.125}
    assert sched["resources"]["memory"] == {"avg": 0.375, "min": 0.375, "max": 0.375}
    assert sched["resources"]["disk"] == {"avg": 0.25, "min": 0.25, "max": 0.25}

    # Documented schema: memory and requests per model; the punctuation model served every probe run.
    models = sched["models"]
    assert set(models) == {"streaming_asr", "offline_asr", "punctuation", "vad", "timestamp"}
    assert all(m["loaded"] is True for m in models.values()), models
    assert all(m["memory_bytes"] and m["memory_bytes"] > 0 for m in models.values()), models
    used = sim_stats(report_stack.sims["asr-sched"])
    punctuation = sched["probes"]["punctuation"]
    assert 0 < models["offline_asr"]["requests"] <= used["model_requests"]["offline_asr"]

    # Every punctuation run failed, and each failure is counted (also the first, on a series born at 1).
    assert punctuation["runs"] >= MIN_RUNS
    assert punctuation["runs"] <= used["requests"]["punctuation"]
    assert_all_failed(punctuation)
    assert punctuation["cer"] is None and punctuation["rtf"] is None  # a text probe: no audio, no CER

    batch = sched["probes"]["batch"]
    assert_passed(batch)
    p = batch["latency_seconds"]
    assert 0 < p["p50"] <= p["p95"] <= p["p99"], p
    if not batch["failures"]:
        assert p["p99"] <= 1.0, p  # all below the 1 s bucket: the simulator answers in ~75 ms
    assert batch["cer"] == 0.0
    assert 0 < batch["rtf"] < 1
    assert "first_result_p95_seconds" not in batch

    stream = sched["probes"]["stream"]
    assert_passed(stream)
    assert stream["first_result_p95_seconds"] is not None and stream["first_result_p95_seconds"] > 0
    assert stream["result_lag_p95_seconds"] is not None and stream["result_lag_p95_seconds"] >= 0

    # SLOs as the rendered rules define them: punctuation's budget is spent, batch's untouched.
    rendered = rendered_slos(report_stack.tmp / "render/alerts/whoasr-rules.yml", "asr-sched")
    slos = {(s["probe"], s["kind"]): s for s in sched["slos"]}
    assert {(s["probe"], s["kind"]): (s["slo"], s["objective"]) for s in sched["slos"]} == rendered
    spent = slos[("punctuation", "availability")]
    assert spent["objective"] == 0.99  # config.thresholds.slo_availability_percent's default
    assert spent["error_ratio"] > 0.5 and spent["budget_remaining"] < 0
    assert spent["budget_consumed"] == pytest.approx(spent["error_ratio"] / 0.01)
    fine = slos[("batch", "availability")]
    if not batch["failures"]:
        assert (fine["error_ratio"], fine["budget_consumed"], fine["budget_remaining"]) == (0.0, 0.0, 1.0), fine

    # The failing probe's alert, from ALERTS.
    failing = [a for a in document["alerts"] if a["alertname"] == "WhoasrProbeFailing"
               and a["target"] == "asr-sched" and a["labels"].get("probe") == "punctuation"]
    assert failing, document["alerts"]
    assert all(a["firing_seconds"] > 0 and a["times_fired"] >= 1 for a in failing), failing
    assert any(a["firing_at_end"] for a in failing), failing

    assert code == 1  # a spent budget fails the gate


def test_json_multi_target_mode_numbers_match_what_was_injected(report_stack):
    _, document = report_stack.json_report("--target", MULTI)
    assert [t["target"] for t in document["targets"]] == [MULTI]
    multi = document["targets"][0]
    assert multi["up_ratio"] == 1.0
    assert multi["resources"]["cpu"] == {"avg": 0.125, "min": 0.125, "max": 0.125}
    assert multi["resources"]["disk"] == {"avg": None, "min": None, "max": None}  # not reported: null, not 0
    assert multi["models"]["punctuation"] == {"loaded": True, "memory_bytes": None, "requests": None}
    assert set(multi["probes"]) == {"punctuation", "stream"}  # module=health is up_ratio, not a probe

    samples = report_stack.value(f'count_over_time(whoasr_probe_success{{target="{MULTI}", probe="punctuation"}}[10m])')
    punctuation = multi["probes"]["punctuation"]
    assert punctuation["runs"] >= MIN_RUNS
    assert punctuation["runs"] <= samples  # scrapes are runs; Prometheus may have scraped again since
    assert_all_failed(punctuation)
    assert punctuation["latency_seconds"]["p50"] is not None

    stream = multi["probes"]["stream"]
    assert_passed(stream)
    assert stream["first_result_p95_seconds"] is not None
    assert stream["result_lag_p95_seconds"] is not None  # from each run's largest lag (/probe's gauge)

    # SLOs from the SLI rules that read /probe's per-run gauges (no counters in this mode).
    slos = {(s["probe"], s["kind"]): s for s in multi["slos"]}
    spent = slos[("punctuation", "availability")]
    assert spent["objective"] == 0.99 and spent["error_ratio"] > 0.5 and spent["budget_remaining"] < 0, spent
    fine = slos[("stream", "availability")]
    assert fine["error_ratio"] is not None and fine["error_ratio"] <= 0.2, fine
    # Alerts about other targets are left out.
    assert all(a["target"] in (MULTI, None) for a in document["alerts"]), document["alerts"]


def test_healthy_target_exits_0_and_absent_figures_are_null(report_stack):
    code, document = report_stack.json_report("--target", "asr-ok")
    ok = _target(document, "asr-ok")
    assert ok["resources"]["cpu"] == {"avg": 0.5, "min": 0.5, "max": 0.5}
    assert ok["resources"]["disk"] == {"avg": None, "min": None, "max": None}
    assert ok["probes"]["punctuation"]["success_ratio"] == 1.0
    assert ok["probes"]["punctuation"]["failures"] == {}
    assert {s["budget_remaining"] for s in ok["slos"] if s["kind"] == "availability"} == {1.0}
    assert document["alerts"] == [] or all(a["target"] in ("asr-ok", None) for a in document["alerts"])
    assert code == 0


# --- table and markdown -------------------------------------------------------------------------------
def test_table_worst_first_with_sparklines(report_stack):
    done = report_stack.report("--prometheus", report_stack.prometheus, "--range", REPORT_RANGE)
    assert done.returncode == 1, done.stderr
    out = done.stdout
    blocks = [line.split()[1] for line in out.splitlines() if line.startswith("== ")]
    assert set(blocks) == {"asr-sched", "asr-ok", MULTI}
    assert blocks[-1] == "asr-ok"  # the only one whose probes all pass comes last
    assert "check_failed" in out and "EXHAUSTED" in out and "WhoasrProbeFailing" in out
    assert any(ch in out for ch in "▁▂▃▄▅▆▇█")
    assert "cpu avg 12.5% (min 12.5%, max 12.5%)" in out
    assert "error budget spent" in done.stderr


def test_markdown(report_stack):
    done = report_stack.report("--prometheus", report_stack.prometheus, "--range", REPORT_RANGE,
                               "--format", "markdown", "--target", "asr-ok", "no-such-target")
    assert done.returncode == 0, done.stderr
    assert done.stderr == "whoasr-exporter report: no data for target 'no-such-target' in this range\n"
    lines = done.stdout.splitlines()
    assert lines[0].startswith("# whoAsr report: last 10m")
    assert "## asr-ok" in lines and "## asr-sched" not in lines
    assert "## no-such-target" in lines and "- up: -" in lines
    rows = [line for line in lines if line.startswith("| punctuation |")]
    assert len(rows) == 1 and "| 100.0% |" in rows[0], rows
    assert "**Result:** every SLO within budget" in lines


# --- exit 2: one line, no traceback -------------------------------------------------------------------
def _one_line_exit_2(done: subprocess.CompletedProcess, *expected: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for text in expected:
        assert text in lines[0], lines[0]


def test_exit_2_unreachable_wrong_credentials_not_prometheus_bad_arguments(report_stack):
    stack = report_stack
    _one_line_exit_2(stack.report("--prometheus", f"http://{LOOPBACK}:{free_port()}"), "cannot reach Prometheus")
    _one_line_exit_2(stack.report("--prometheus", stack.prometheus, auth=False), "HTTP 401", "credentials")
    wrong = stack.tmp / "wrong-password"
    wrong.write_text("nope")
    _one_line_exit_2(stack.report("--prometheus", stack.prometheus, "--basic-auth", f"{USER}:{wrong}", auth=False),
                     "HTTP 401")
    _one_line_exit_2(stack.report("--prometheus", stack.exporter), "HTTP 404", "not Prometheus")
    _one_line_exit_2(stack.report("--prometheus", stack.prometheus, "--range", "1y"), "--range")
    _one_line_exit_2(stack.report("--prometheus", stack.prometheus, "--format", "xml"), "--format")
    _one_line_exit_2(stack.report("--range", "1h"), "--prometheus")
    _one_line_exit_2(stack.report("--prometheus", stack.prometheus, "--basic-auth", "report", auth=False),
                     "USER:PASSWORD_FILE")
    _one_line_exit_2(stack.report("--prometheus", stack.prometheus, "--basic-auth", f"{USER}:{stack.tmp}/none",
                                  auth=False), "cannot read")


def test_rejected_query_is_one_line_error(report_stack):
    async def ask():
        async with PrometheusAPI(report_stack.prometheus, timeout=10, headers=_auth()) as api:
            await api.query("sum(whoasr_up", time.time())

    with pytest.raises(PrometheusError) as caught:
        asyncio.run(ask())
    message = str(caught.value)
    assert "rejected a query (bad_data" in message and "\n" not in message


# --- exit 1 for downtime: last, since it stops a simulator -----------------------------------------------
def test_target_down_longer_than_its_objective_allows_exits_1(report_stack):
    report_stack.sim_procs["asr-ok"].stop()
    up = 'whoasr_up{target="asr-ok"}[10m]'
    zeros = f"count_over_time({up}) - sum_over_time({up})"
    wait_until(lambda: (report_stack.value(zeros) or 0) >= 3, timeout=30, interval=0.5,
               what="three samples of asr-ok's whoasr_up at 0 in Prometheus")
    code, document = report_stack.json_report("--target", "asr-ok")
    ok = _target(document, "asr-ok")
    assert ok["up_ratio"] < 0.99
    assert code == 1
    done = report_stack.report("--prometheus", report_stack.prometheus, "--range", REPORT_RANGE, "--target", "asr-ok")
    assert done.returncode == 1
    assert "asr-ok was up" in done.stderr and "below its availability objective 99.00%" in done.stderr, done.stderr
    assert "(down longer than its availability objective allows)" in done.stdout
