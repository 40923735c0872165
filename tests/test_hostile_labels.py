"""A hostile or broken whoAsr cannot flood Prometheus: against a server announcing 1,000 model types with
150-character names and a 10,000-character version, the exporter (a real process) exposes whoAsr's model
types plus at most 16 sanitised other names of at most 64 characters, counts the rest as dropped, cuts
the version to 64 printable characters, and /probe's health and model_info give the same whoasr_info."""

from __future__ import annotations

import re
import sys

import pytest

from exporter.labels import MAX_EXTRA_MODELS, MAX_LABEL_CHARS, MODEL_TYPES
from tests.hostile_server import MODELS
from tests.metrics_text import label_sets, value
from tests.support import LOOPBACK, ManagedProcess, Stack, free_port, http_get, wait_until

pytestmark = pytest.mark.timeout(90)

LABEL_VALUE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    stack = Stack(tmp)
    try:
        port = free_port()
        hostile = ManagedProcess([sys.executable, "-m", "tests.hostile_server", "--port", str(port)],
                                 tmp / "hostile.log")
        stack.procs.append(hostile)
        url = f"http://{LOOPBACK}:{port}"
        wait_until(lambda: http_get(url + "/health", timeout=2)[0] == 200, timeout=15, what="hostile server")
        stack.urls["hostile"] = url
        v2 = stack.simulator("v2", "v2")
        listen = free_port()
        stack.serve(f"""
exporter: {{listen: "{LOOPBACK}:{listen}", log_format: json}}
targets:
  - {{name: hostile, url: "{url}", probes: []}}
  - {{name: asr-v2, url: "{v2}", probes: []}}
schedules:
  health: {{interval: 1s, timeout: 900ms}}
  model_info: {{interval: 1s, timeout: 900ms}}
""", listen)
        yield stack
    finally:
        stack.stop()


def series_of(text: str, target: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("#") and f'target="{target}"' in line]


def test_model_labels_are_bounded_and_the_rest_counted(stack):
    wait_until(lambda: value(stack.metrics(), "whoasr_scrape_dropped_models_total", target="hostile",
                             endpoint="model_info") is not None, timeout=20, what="a model_info scrape")
    stack.wait_metric("whoasr_up", 1.0, target="hostile", timeout=20)
    text = stack.metrics()
    models = {labels["model"] for labels in label_sets(text, "whoasr_model_loaded") if labels["target"] == "hostile"}
    assert set(MODEL_TYPES) <= models
    extras = models - set(MODEL_TYPES)
    assert len(extras) == MAX_EXTRA_MODELS
    assert all(LABEL_VALUE.match(name) for name in models), sorted(models)[:3]
    # every scrape drops the same names: both endpoints count them
    dropped = MODELS - len(MODEL_TYPES) - MAX_EXTRA_MODELS
    for endpoint in ("health", "model_info"):
        total = value(text, "whoasr_scrape_dropped_models_total", target="hostile", endpoint=endpoint)
        assert total is not None and total >= dropped and total % dropped == 0
    # a few dozen series for the target, not a thousand; no label value longer than the bound
    series = series_of(text, "hostile")
    assert len(series) < 60, len(series)
    for line in series:
        for label_value in re.findall(r'="((?:[^"\\]|\\.)*)"', line):
            assert len(label_value) <= MAX_LABEL_CHARS, line[:120]
    # a well-behaved target next to it is unaffected
    assert value(text, "whoasr_scrape_dropped_models_total", target="asr-v2", endpoint="health") is None


def test_the_version_is_cut_to_64_printable_characters(stack):
    stack.wait_metric("whoasr_up", 1.0, target="hostile", timeout=20)
    (info,) = [labels for labels in label_sets(stack.metrics(), "whoasr_info") if labels["target"] == "hostile"]
    assert info["version"] == ("9." + "x" * 9997)[:MAX_LABEL_CHARS]


@pytest.mark.parametrize("target", ["hostile", "asr-v2"])
def test_probe_health_and_model_info_give_the_same_info_series(stack, target):
    infos = {}
    for module in ("model_info", "health"):
        status, body, _ = http_get(f"{stack.base}/probe?target={target}&module={module}", timeout=10)
        assert status == 200
        infos[module] = label_sets(body.decode(), "whoasr_info")
    assert infos["health"] == infos["model_info"] and len(infos["health"]) == 1
    assert infos["health"][0]["version"] != ""
