"""One real monitoring stack for the end-to-end tests, shared by the tests of this package.

simulators (one process per whoAsr target) -> the exporter -> Prometheus (scraping every second,
evaluating the rules that `exporter.render.write_all` renders from this module's test config) ->
Alertmanager -> a webhook receiver that records what was delivered. Every process gets a free loopback
port and its own temporary directory, and is stopped by pid. The fixtures are package-scoped, so the
stack stops as soon as the e2e tests are done (not at the end of a whole-suite run, where it would load
the machine under the other tests), and the teardown checks that no process is left.
Without the Debian binaries the tests skip with one line; with CI=true that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.e2e.webhook import WebhookReceiver
from tests.support import LOOPBACK, ManagedProcess, exporter_cmd, free_port, http_get, start_simulator, wait_until

JOB = "whoasr"  # Prometheus job name of the exporter; the dashboards' $job
PROBE_KINDS = ("batch", "stream", "punctuation", "vad", "timestamp")  # the default probe set
MODEL_TYPES = ("streaming_asr", "offline_asr", "punctuation", "vad", "timestamp")

# Target name -> (simulator API, extra `simulate` arguments, probes: None for the default set).
# Healthy targets stay untouched; each fault scenario has a target of its own so they cannot interfere.
# asr-doc speaks the older documented /health schema: the only one with disk, connections, model memory.
TARGETS = {
    "asr-v1": ("v1", (), None),
    "asr-v2": ("v2", (), None),
    "asr-doc": ("v2", ("--health-schema", "documented"), None),
    "asr-down": ("v2", (), []),
    "asr-model": ("v2", (), ["stream"]),
    "asr-slow": ("v2", (), ["batch"]),
    "asr-cpu": ("v2", (), []),
}
HEALTHY = ("asr-v1", "asr-v2", "asr-doc")
# v1's /timestamp always fails upstream, so the exporter reports that probe as not applicable: no series.
NOT_APPLICABLE = {"asr-v1": ("timestamp",)}


def expected_probes(target: str) -> tuple[str, ...]:
    """The probe kinds that have series (and pass) on a healthy target."""
    return tuple(k for k in PROBE_KINDS if k not in NOT_APPLICABLE.get(target, ()))

# Short intervals and `for:` durations so every alert can fire within seconds; the stream probe runs
# `pace: fast` because its latency is not under test and a real-time run alone would exceed 1 s.
# FOR_LONG must outlast a Prometheus start: it takes ~5 s (discovery's update throttle) to scrape its
# static targets, and until then WhoasrTargetMissing's absent(whoasr_up{...}) holds for every target.
RESPONSE_TIME_SECONDS = 1.0
FOR_SHORT, FOR_LONG = 2, 10
SCHEDULES = {
    "health": {"interval": "2s", "timeout": "1s"},
    "model_info": {"interval": "1s", "timeout": "900ms"},
    "batch": {"interval": "3s", "timeout": "2500ms"},
    "stream": {"interval": "2s", "timeout": "1800ms"},
    "punctuation": {"interval": "2s", "timeout": "1500ms"},
    "vad": {"interval": "2s", "timeout": "1500ms"},
    "timestamp": {"interval": "3s", "timeout": "2500ms"},
}

# executable -> (other names it goes by, Debian package)
BINARIES = {
    "prometheus": ((), "prometheus"),
    "promtool": ((), "prometheus"),
    "prometheus-alertmanager": (("alertmanager",), "prometheus-alertmanager"),
}


def _require(name: str) -> str:
    """Path of a binary; skips (one line) when it is missing, fails instead under CI=true."""
    aliases, package = BINARIES[name]
    for candidate in (name, *aliases):
        if path := shutil.which(candidate):
            return path
    message = f"{name} not installed (Debian package {package})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + "; CI must run the end-to-end tests", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def binaries() -> dict[str, str]:
    return {name: _require(name) for name in BINARIES}


def _group_exists(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="package")
def launched():
    """Every process the e2e fixtures start. At the end, each one's process group must be gone."""
    processes: list[ManagedProcess] = []
    yield processes
    left = [p for p in processes if p.alive() or _group_exists(p.pid)]
    for proc in processes:  # clean up whatever a fixture left, so one failure does not leak processes
        proc.stop()
    assert not left, f"processes left running after the e2e teardown: {[(p.pid, p.args[:3]) for p in left]}"
    stray = [p.pid for p in processes if _group_exists(p.pid)]
    assert not stray, f"process groups still alive after stop(): {stray}"


def _start(launched: list, args: list[str], log: Path, ready_url: str, what: str,
           timeout: float = 30) -> ManagedProcess:
    """Starts a process, records it for the final check, and waits until ready_url answers 200."""
    proc = ManagedProcess(args, log)
    launched.append(proc)

    try:
        wait_until(lambda: not proc.alive() or http_get(ready_url, timeout=1)[0] == 200, timeout=timeout,
                   interval=0.1, what=f"{what} on {ready_url}")
        assert proc.alive(), f"{what} exited with {proc.proc.returncode}"
    except (TimeoutError, AssertionError) as exc:
        proc.stop()
        raise AssertionError(f"{exc}\n--- {what} log ---\n{proc.output()[-4000:]}") from None
    return proc


@dataclass
class Simulator:
    name: str
    api: str
    extra: tuple[str, ...]
    port: int
    url: str
    proc: ManagedProcess
    restarts: int = 0


@dataclass
class Stack:
    """Addresses of the running parts, and the few operations the scenarios need."""

    tmp: Path
    launched: list
    prometheus: str
    alertmanager: str
    exporter: str
    webhook: WebhookReceiver
    render_dir: Path
    simulators: dict[str, Simulator] = field(default_factory=dict)

    # --- Prometheus -----------------------------------------------------------------------------------
    def query(self, expr: str) -> list[dict]:
        """An instant query; raises AssertionError carrying Prometheus's error when it fails."""
        status, body, _ = http_get(f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        answer = json.loads(body)
        if status != 200 or answer.get("status") != "success":
            raise AssertionError(f"query failed ({status}): {expr}\n{answer.get('errorType')}: {answer.get('error')}")
        return answer["data"]["result"]

    def value(self, expr: str) -> float | None:
        """The value of a query that returns at most one series; None when it returns none."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr} returned {len(result)} series"
        return float(result[0]["value"][1]) if result else None

    def alerts(self) -> list[dict]:
        """Prometheus's pending and firing alerts."""
        status, body, _ = http_get(f"{self.prometheus}/api/v1/alerts")
        assert status == 200, body
        return json.loads(body)["data"]["alerts"]

    def rule_evaluations(self) -> dict[str, float]:
        """Rule group -> evaluations so far, from Prometheus's own metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        text = http_get(f"{self.prometheus}/metrics")[1].decode()
        return {s.labels["rule_group"]: s.value for family in text_string_to_metric_families(text)
                for s in family.samples if s.name == "prometheus_rule_group_iterations_total"}

    # --- Alertmanager delivery ------------------------------------------------------------------------
    def wait_delivered(self, alertname: str, status: str = "firing", timeout: float = 30, **labels: str) -> dict:
        """Waits for Alertmanager to deliver such an alert to the webhook; returns the latest one."""
        try:
            found = wait_until(lambda: self.webhook.delivered(alertname, status, **labels), timeout=timeout,
                               interval=0.2, what=f"{alertname} {status} {labels} at the webhook")
        except TimeoutError as exc:
            mine = [a for a in self.alerts() if a["labels"].get("alertname") == alertname]
            got = [(a["status"], a["labels"]) for a in self.webhook.alerts()
                   if a["labels"].get("alertname") == alertname]
            raise AssertionError(f"{exc}\nPrometheus has: {mine}\nwebhook got: {got}") from None
        return found[-1]

    # --- simulators -----------------------------------------------------------------------------------
    def sim_request(self, target: str, method: str, path: str, body: dict | None = None) -> dict:
        """Calls a simulator's admin API (/-/sim/...)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.simulators[target].url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
            return json.loads(response.read() or b"null")

    def stop_simulator(self, target: str) -> None:
        self.simulators[target].proc.stop()

    def restart_simulator(self, target: str) -> None:
        """Brings a stopped target back on the same port (the exporter's config does not change)."""
        sim = self.simulators[target]
        if sim.proc.alive():
            return
        sim.restarts += 1
        proc, url = start_simulator(self.tmp, sim.api, *sim.extra, name=f"{target}-restart{sim.restarts}",
                                    port=sim.port)
        self.launched.append(proc)
        assert url == sim.url
        sim.proc = proc


def exporter_config(simulators: dict[str, Simulator], port: int) -> dict:
    """The exporter config the stack runs, and the one the rules and dashboards are rendered from."""
    targets = []
    for name, (_, _, probes) in TARGETS.items():
        target = {"name": name, "url": simulators[name].url}
        if probes is not None:
            target["probes"] = probes
        targets.append(target)
    return {
        "exporter": {"listen": f"{LOOPBACK}:{port}", "log_format": "json", "log_level": "info"},
        "targets": targets,
        "schedules": SCHEDULES,
        "thresholds": {"response_time_seconds": RESPONSE_TIME_SECONDS,
                       "for_short": f"{FOR_SHORT}s", "for_long": f"{FOR_LONG}s"},
        "probes": {"stream": {"pace": "fast"}},
    }


def _start_simulators(tmp: Path, launched: list) -> dict[str, Simulator]:
    """All simulators at once (each takes about a second to import and bind)."""
    def start(name):
        api, extra, _ = TARGETS[name]
        proc, url = start_simulator(tmp, api, *extra, name=name)
        return Simulator(name, api, extra, int(url.rsplit(":", 1)[1]), url, proc)

    simulators, errors = {}, []
    with ThreadPoolExecutor(max_workers=len(TARGETS)) as pool:
        futures = {name: pool.submit(start, name) for name in TARGETS}
        for name, future in futures.items():
            try:
                simulators[name] = future.result()
                launched.append(simulators[name].proc)
            except Exception as exc:  # noqa: BLE001 - report after the others are registered for cleanup
                errors.append(f"{name}: {exc}")
    assert not errors, "\n".join(errors)
    return simulators


def _prometheus_config(rules: Path, exporter_port: int, alertmanager_port: int) -> dict:
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"{LOOPBACK}:{alertmanager_port}"]}]}]},
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [f"{LOOPBACK}:{exporter_port}"]}]}],
    }


def _alertmanager_config(webhook_url: str) -> dict:
    """One webhook receiver, one notification per alert (group_by '...'), fast flushes, resolved sent."""
    return {
        "route": {"receiver": "webhook", "group_by": ["..."], "group_wait": "1s", "group_interval": "1s",
                  "repeat_interval": "4h"},
        "receivers": [{"name": "webhook", "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}],
    }


@pytest.fixture(scope="package")
def stack(binaries, launched, tmp_path_factory) -> Stack:
    from exporter.config import load_config
    from exporter.render import write_all

    tmp = tmp_path_factory.mktemp("e2e")
    webhook = WebhookReceiver().start()
    try:
        am_port = free_port()
        am_config = tmp / "alertmanager.yml"
        am_config.write_text(yaml.safe_dump(_alertmanager_config(webhook.url)))
        (tmp / "alertmanager-data").mkdir()
        alertmanager = f"http://{LOOPBACK}:{am_port}"
        _start(launched, [binaries["prometheus-alertmanager"], f"--config.file={am_config}",
                          f"--storage.path={tmp / 'alertmanager-data'}",
                          f"--web.listen-address={LOOPBACK}:{am_port}", "--cluster.listen-address="],
               tmp / "alertmanager.log", alertmanager + "/-/ready", "alertmanager")

        simulators = _start_simulators(tmp, launched)

        exporter_port = free_port()
        config_path = tmp / "exporter.yaml"
        config_path.write_text(yaml.safe_dump(exporter_config(simulators, exporter_port), sort_keys=False))
        exporter = f"http://{LOOPBACK}:{exporter_port}"
        _start(launched, exporter_cmd("serve", "--config", str(config_path)), tmp / "exporter.log",
               exporter + "/-/ready", "exporter")

        # The rules and dashboards under test: rendered from the test config, never edited.
        render_dir = tmp / "render"
        write_all(load_config(config_path), render_dir)
        rules = render_dir / "alerts" / "whoasr-rules.yml"
        assert rules.is_file(), f"write_all did not write {rules}"
        check = subprocess.run([binaries["promtool"], "check", "rules", str(rules)], capture_output=True,
                               text=True, timeout=60)
        assert check.returncode == 0, f"promtool check rules {rules}:\n{check.stdout}{check.stderr}"
        prom_port = free_port()
        prom_config = tmp / "prometheus.yml"
        prom_config.write_text(yaml.safe_dump(_prometheus_config(rules, exporter_port, am_port)))
        (tmp / "prometheus-data").mkdir()
        prometheus = f"http://{LOOPBACK}:{prom_port}"
        _start(launched, [binaries["prometheus"], f"--config.file={prom_config}",
                          f"--storage.tsdb.path={tmp / 'prometheus-data'}",
                          f"--web.listen-address={LOOPBACK}:{prom_port}"],
               tmp / "prometheus.log", prometheus + "/-/ready", "prometheus")

        yield Stack(tmp=tmp, launched=launched, prometheus=prometheus, alertmanager=alertmanager,
                    exporter=exporter, webhook=webhook, render_dir=render_dir, simulators=simulators)
    finally:
        with ThreadPoolExecutor(max_workers=8) as pool:  # each stop() waits for its process: stop them together
            list(pool.map(lambda proc: proc.stop(), launched))
        webhook.stop()


def _missing_key_series(stack: Stack) -> list[str]:
    """What is still missing before the healthy state: the exporter scraped, and for every healthy target
    its state and a passing run of every probe kind."""
    missing = []
    if stack.value(f'up{{job="{JOB}"}}') != 1:
        missing.append(f'up{{job="{JOB}"}} == 1')
    for target in HEALTHY:
        if stack.value(f'whoasr_up{{job="{JOB}", target="{target}"}}') != 1:
            missing.append(f"whoasr_up{{target={target}}} == 1")
        loaded = stack.query(f'whoasr_model_loaded{{job="{JOB}", target="{target}"}} == 1')
        missing += [f"whoasr_model_loaded{{target={target}, model={m}}} == 1"
                    for m in sorted(set(MODEL_TYPES) - {s["metric"]["model"] for s in loaded})]
        passing = stack.query(f'whoasr_probe_success{{job="{JOB}", target="{target}"}} == 1')
        missing += [f"whoasr_probe_success{{target={target}, probe={k}}} == 1"
                    for k in sorted(set(expected_probes(target)) - {s["metric"]["probe"] for s in passing})]
    return missing


@pytest.fixture(scope="package")
def healthy_stack(stack: Stack) -> Stack:
    """The stack once Prometheus holds the key series of every healthy target."""
    try:
        wait_until(lambda: not _missing_key_series(stack), timeout=45, interval=0.5,
                   what="key series of the healthy targets in Prometheus")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\nmissing: {_missing_key_series(stack)}\n"
                             f"exporter log tail:\n{(stack.tmp / 'exporter.log').read_text()[-3000:]}") from None
    return stack
