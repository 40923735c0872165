"""What the end-to-end tests share: the stack's layout and test config, and the handle on a running stack.

The fixtures that start and stop it are in conftest.py; tests import names from here (never from a
conftest, which pytest imports under its own module name).
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from exporter.config import Thresholds
from exporter.kinds import DEFAULT_PROBES
from tests.e2e.webhook import WebhookReceiver
from tests.support import LOOPBACK, ManagedProcess, http_get, start_simulator, wait_until

JOB = "whoasr"  # Prometheus job name of the exporter; the dashboards' $job
# What the healthy targets list: the default set plus timestamp (opt-in, since whoAsr v2 keeps its uploads),
# so that its rules and panels are exercised too.
PROBE_KINDS = (*DEFAULT_PROBES, "timestamp")
MODEL_TYPES = ("streaming_asr", "offline_asr", "punctuation", "vad", "timestamp")

# Target name -> (simulator API, extra `simulate` arguments, probes listed).
# Healthy targets stay untouched; each fault scenario has a target of its own so they cannot interfere.
# asr-doc speaks the older documented /health schema: the only one with disk, connections, model memory.
TARGETS = {
    "asr-v1": ("v1", (), list(PROBE_KINDS)),
    "asr-v2": ("v2", (), list(PROBE_KINDS)),
    "asr-doc": ("v2", ("--health-schema", "documented"), list(PROBE_KINDS)),
    "asr-down": ("v2", (), []),
    "asr-outage": ("v1", (), None),  # every default probe, timestamp not applicable: the outage scenario
    "asr-model": ("v2", (), ["stream"]),
    "asr-slow": ("v2", (), ["batch"]),
    "asr-cpu": ("v2", (), []),
}
HEALTHY = ("asr-v1", "asr-v2", "asr-doc")
# v1's /timestamp always fails upstream, so the exporter reports that probe as not applicable: no series.
NOT_APPLICABLE = {"asr-v1": ("timestamp",), "asr-outage": ("timestamp",)}


def expected_probes(target: str) -> tuple[str, ...]:
    """The probe kinds that have series (and pass) on a healthy target."""
    return tuple(k for k in PROBE_KINDS if k not in NOT_APPLICABLE.get(target, ()))


# A quiet day: the default thresholds, the built-in clip, the stream probe paced in real time (each session
# lasts the 5.19 s clip), so every latency alert must stay silent on the healthy targets. Intervals are
# short (and the stream's and batch's long enough for a real-time session and a slow batch run) and
# `for:` durations too, so every alert can fire within seconds; nothing else departs from the defaults.
RESPONSE_TIME_SECONDS = Thresholds().response_time_seconds
FOR_SHORT, FOR_LONG = 2, 10
INVENTORY_DIR = "inventory"  # targets_files, next to the exporter config
SCHEDULES = {
    "health": {"interval": "1s", "timeout": "900ms"},
    "model_info": {"interval": "1s", "timeout": "900ms"},
    "batch": {"interval": "9s", "timeout": "8s"},
    "stream": {"interval": "8s", "timeout": "7s"},
    "punctuation": {"interval": "2s", "timeout": "1500ms"},
    "vad": {"interval": "2s", "timeout": "1500ms"},
    "timestamp": {"interval": "3s", "timeout": "2500ms"},
    "stream_vad": {"interval": "8s", "timeout": "7s"},  # not scheduled here; its rules' `for:` follow it
}
ALERTMANAGER_SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "alertmanager.yml"


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
    multi_prometheus: str = ""  # the Prometheus that scrapes /probe (multi-target mode)

    def multi_target(self) -> "Stack":
        """The same stack seen through the multi-target Prometheus."""
        return replace(self, prometheus=self.multi_prometheus)

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




SHORT_CLIP_SECONDS = 0.8  # one 600 ms stride and a final rest: one partial and one final result


def write_short_clip(directory: Path) -> Path:
    """The first SHORT_CLIP_SECONDS of the built-in clip, for the report's stack (the alerting stack streams
    the built-in clip in real time). The simulator's model says the rest of the transcript in its final
    result, so the built-in transcript still applies."""
    import soundfile

    from exporter.clips import SAMPLE_RATE, builtin_clip

    path = directory / "short.wav"
    soundfile.write(path, builtin_clip().samples[:int(SHORT_CLIP_SECONDS * SAMPLE_RATE)], SAMPLE_RATE)
    return path


def exporter_config(simulators: dict[str, Simulator], port: int) -> dict:
    """The exporter config the stack runs, and the one the rules and dashboards are rendered from."""
    targets = []
    for name, (_, _, probes) in TARGETS.items():
        target = {"name": name, "url": simulators[name].url}
        if probes is not None:
            target["probes"] = probes
        targets.append(target)
    exporter = f"http://{LOOPBACK}:{port}"
    return {
        # Multi-target mode probes the simulators by URL, as Prometheus's file_sd hands them over.
        "exporter": {"listen": f"{LOOPBACK}:{port}", "log_format": "json", "log_level": "info",
                     "allowed_targets": [r"http://127\.0\.0\.1:\d+"], "max_concurrent_probes": 64},
        "targets": targets,
        # An inventory with no targets yet (conftest writes it): the exporter's own alert on a file it
        # cannot read has something to watch.
        "targets_files": [f"{INVENTORY_DIR}/*.yml"],
        "schedules": SCHEDULES,
        "thresholds": {"for_short": f"{FOR_SHORT}s", "for_long": f"{FOR_LONG}s"},
        # The alerts' runbook and history links lead to this exporter (Grafana is not part of the stack).
        "links": {"exporter": exporter, "grafana": "http://grafana.invalid:3000"},
    }


def prometheus_config(rules: Path, exporter_port: int, alertmanager_port: int) -> dict:
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"{LOOPBACK}:{alertmanager_port}"]}]}]},
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [f"{LOOPBACK}:{exporter_port}"]}]}],
    }


# Multi-target mode: a second Prometheus scrapes /probe?target=URL&module=KIND with the job of
# deploy/prometheus/multi-target.yml (its relabelling as shipped); module -> (targets, interval, timeout).
MULTI_JOB = "whoasr-probe"
# Simulators of their own, not in the exporter's config (a target probed in both modes would have its
# /health scrapes and sessions queue behind each other's, exporter/gate.py): name -> simulator API.
# /health waits for the target's probes in flight, so no target gets both the health module and the
# 5 s real-time stream here (the e2e timeouts are short); mt-stream carries the healthy voice path.
MULTI_TARGETS = {"mt-v1": ("v1", ()), "mt-v2": ("v2", ()), "mt-stream": ("v2", ()),
                 "mt-doc": ("v2", ("--health-schema", "documented")),  # disk, connections, model memory
                 "mt-down": ("v2", ()), "mt-model": ("v2", ()), "mt-slow": ("v2", ()), "mt-cpu": ("v2", ())}
MULTI_HEALTHY = ("mt-v1", "mt-v2", "mt-stream", "mt-doc")
MULTI_MODULES = {
    "health": (("mt-v1", "mt-v2", "mt-doc", "mt-down", "mt-cpu"), "2s", "1s"),
    "model_info": (("mt-v1", "mt-v2", "mt-stream", "mt-doc", "mt-model"), "2s", "1s"),
    "batch": (("mt-v1", "mt-v2", "mt-slow"), "10s", "9s"),
    "stream": (("mt-stream", "mt-model"), "9s", "8s"),
    "punctuation": (("mt-v1", "mt-v2"), "3s", "2s"),
    "vad": (("mt-v1", "mt-v2"), "3s", "2s"),
    "timestamp": (("mt-v1", "mt-v2"), "3s", "2500ms"),
}
MULTI_TARGET_SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "multi-target.yml"


def multi_target_files(simulators: dict[str, Simulator]) -> list[dict]:
    """file_sd groups like deploy/prometheus/targets/whoasr.yml: one per module, with its own pace."""
    return [{"labels": {"__param_module": module, "__scrape_interval__": interval, "__scrape_timeout__": timeout},
             "targets": [simulators[name].url for name in names]}
            for module, (names, interval, timeout) in MULTI_MODULES.items()]


def multi_target_prometheus_config(rules: Path, targets_file: Path, exporter_port: int,
                                   alertmanager_port: int) -> dict:
    """The shipped multi-target job, with only its file_sd path and the exporter's address changed."""
    shipped = yaml.safe_load(MULTI_TARGET_SHIPPED.read_text(encoding="utf-8"))
    job = next(j for j in shipped["scrape_configs"] if j["job_name"] == MULTI_JOB)
    job["file_sd_configs"] = [{"files": [str(targets_file)], "refresh_interval": "5s"}]
    for rule in job["relabel_configs"]:
        if rule.get("target_label") == "__address__":
            rule["replacement"] = f"{LOOPBACK}:{exporter_port}"
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"{LOOPBACK}:{alertmanager_port}"]}]}]},
        "scrape_configs": [job],
    }


def alertmanager_config(webhook_url: str) -> dict:
    """deploy/alertmanager.yml as shipped (routes, grouping, inhibitions, receivers), with only its timing
    shortened and each receiver's webhook pointed at the test's receiver (/alerts/<receiver name>)."""
    config = yaml.safe_load(ALERTMANAGER_SHIPPED.read_text(encoding="utf-8"))
    config["route"].update({"group_wait": "1s", "group_interval": "1s"})
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = f"{webhook_url}/{receiver['name']}"
    return config


def missing_key_series(stack: Stack) -> list[str]:
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
