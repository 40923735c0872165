"""What the end-to-end tests share: the stack's layout and test config, and the handle on a running stack.

The fixtures that start and stop it are in conftest.py; tests import names from here (never from a
conftest, which pytest imports under its own module name).
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

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


# Short intervals and `for:` durations so every alert can fire within seconds; the stream probe streams
# a 0.8 s clip paced like a microphone (the built-in 5.2 s one would outlast its 2 s interval), so that
# first-result and result-lag series are the real-time ones.
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


SHORT_CLIP_SECONDS = 0.8  # one 600 ms stride and a final rest: one partial and one final result


def write_short_clip(directory: Path) -> Path:
    """The first SHORT_CLIP_SECONDS of the built-in clip. The simulator's model says the rest of the
    transcript in its final result, so the built-in transcript still applies."""
    import soundfile

    from exporter.clips import SAMPLE_RATE, builtin_clip

    path = directory / "short.wav"
    soundfile.write(path, builtin_clip().samples[:int(SHORT_CLIP_SECONDS * SAMPLE_RATE)], SAMPLE_RATE)
    return path


def exporter_config(simulators: dict[str, Simulator], port: int, short_clip: Path) -> dict:
    """The exporter config the stack runs, and the one the rules and dashboards are rendered from."""
    from exporter.clips import builtin_clip

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
        "clips": {"voice": {"path": str(short_clip), "transcript": builtin_clip().transcript}},
        "probes": {"stream": {"clip": "voice"}},
    }


def prometheus_config(rules: Path, exporter_port: int, alertmanager_port: int) -> dict:
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"{LOOPBACK}:{alertmanager_port}"]}]}]},
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [f"{LOOPBACK}:{exporter_port}"]}]}],
    }


def alertmanager_config(webhook_url: str) -> dict:
    """One webhook receiver, one notification per alert (group_by '...'), fast flushes, resolved sent."""
    return {
        "route": {"receiver": "webhook", "group_by": ["..."], "group_wait": "1s", "group_interval": "1s",
                  "repeat_interval": "4h"},
        "receivers": [{"name": "webhook", "webhook_configs": [{"url": webhook_url, "send_resolved": True}]}],
    }


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
