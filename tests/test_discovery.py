"""targets_files (Prometheus file_sd) and --shard: parsing, bad files keeping their last good content,
merging with `targets:`, and real exporter processes re-reading changed files and keeping their shard."""

from __future__ import annotations

import json
import os

import pytest

from exporter.config import ConfigError, TargetConfig, parse_config
from exporter.discovery import TargetsFiles, TargetsFileError, merge_targets, parse_targets_file, target_name
from exporter.kinds import DEFAULT_PROBES
from exporter.shard import shard_of
from tests.metrics_text import label_sets, value
from tests.support import (LOOPBACK, ManagedProcess, exporter_cmd, free_port, http_get, http_post, serve_exporter,
                           start_simulator, wait_ready, wait_until)

# --- parsing ------------------------------------------------------------------------------------------


def test_yaml_and_json_groups_with_api_and_probes_labels():
    yml = parse_targets_file("t.yml", """
- targets: ["http://asr-1.example:8000", "asr-2.example:8000/asr"]
  labels: {api: v2, probes: "batch, stream", team: speech}
- targets: ["asr-3.example:8443"]
  labels: {__scheme__: https, probes: ""}
""")
    assert [(t.name, t.url, t.api, t.enabled_probes()) for t in yml] == [
        ("asr-1.example:8000", "http://asr-1.example:8000", "v2", ("batch", "stream")),
        ("asr-2.example:8000/asr", "http://asr-2.example:8000/asr", "v2", ("batch", "stream")),
        ("asr-3.example:8443", "https://asr-3.example:8443", "auto",
         DEFAULT_PROBES),  # empty probes: the default set
    ]
    (js,) = parse_targets_file("t.json", json.dumps([{"targets": ["http://10.0.0.7:8000/"]}]))
    assert (js.name, js.url) == ("10.0.0.7:8000", "http://10.0.0.7:8000")


def test_the_name_never_carries_credentials():
    assert target_name("http://user:secret@asr-1:8000/p") == "asr-1:8000/p"
    assert target_name("http://[::1]:8000") == "[::1]:8000"


@pytest.mark.parametrize("path, text, message", [
    ("t.yml", "- targets: [http://a:1]\n  labels: {probes: 'batch,bogus'}\n",
     "t.yml: [0].labels.probes: unknown probe 'bogus'"),
    ("t.yml", "- targets: [http://a:1]\n  labels: {api: v3}\n", "t.yml: [0].targets[0]: api: expected one of"),
    ("t.yml", "- targets: ['ftp://a:1']\n", "t.yml: [0].targets[0]: url: not a URL"),
    ("t.yml", "- targets: [http://a:1]\n  label: {}\n", "t.yml: [0].label: unknown key"),
    ("t.yml", "targets: [http://a:1]\n", "t.yml: expected a list of groups"),
    ("t.yml", "- targets: [http://a:1\n", "t.yml: line 2: not valid YAML"),
    ("t.json", '[{"targets": ["http://a:1"]', "t.json: line 1: not valid JSON"),
    ("t.yml", "- targets: [42]\n", "t.yml: [0].targets[0]: expected a URL"),
])
def test_a_bad_file_names_the_place_and_the_fix(path, text, message):
    with pytest.raises(TargetsFileError) as exc:
        parse_targets_file(path, text)
    assert message in str(exc.value)


def test_config_resolves_globs_against_the_config_file_and_checks_their_suffix(tmp_path):
    config = parse_config({"targets_files": ["targets/*.yml", "/abs/*.json"]}, str(tmp_path / "config.yaml"))
    assert config.targets_files == (str(tmp_path / "targets/*.yml"), "/abs/*.json")
    with pytest.raises(ConfigError, match=r"x\.yaml: targets_files: 'targets/\*': expected a glob of \.json"):
        parse_config({"targets_files": ["targets/*"]}, "x.yaml")


# --- files over time ------------------------------------------------------------------------------------

def write(path, text: str) -> None:
    """Writes and moves the mtime forward, as a second write within one timestamp tick must count."""
    path.write_text(text)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def names(files: TargetsFiles) -> list[str]:
    return [t.name for t in files.targets()]


def test_changed_files_are_reread_and_a_bad_one_keeps_its_last_good_content(tmp_path):
    a, b = tmp_path / "a.yml", tmp_path / "b.json"
    write(a, "- targets: [http://asr-1:8000, http://asr-2:8000]\n")
    files = TargetsFiles([str(tmp_path / "*.yml"), str(tmp_path / "*.json")])
    assert files.refresh() is True and names(files) == ["asr-1:8000", "asr-2:8000"]
    assert files.refresh() is False, "nothing changed, nothing re-read"
    assert files.last_read_ok is True and files.errors_total == 0

    write(a, "- targets: [http://asr-1:8000\n")  # broken mid-edit
    assert files.refresh() is False
    assert names(files) == ["asr-1:8000", "asr-2:8000"], "the last good content stays"
    assert files.last_read_ok is False and files.errors_total == 1
    assert files.refresh() is False and files.errors_total == 1, "reported once per change, not every poll"

    write(b, json.dumps([{"targets": ["http://asr-3:8000", "http://asr-1:8000"]}]))  # a new file; one duplicate
    assert files.refresh() is True
    assert names(files) == ["asr-1:8000", "asr-2:8000", "asr-3:8000"], "a URL listed twice is one target"
    assert files.last_read_ok is False, "a.yml is still broken"

    write(a, "- targets: [http://asr-2:8000]\n")
    assert files.refresh() is True and files.last_read_ok is True
    assert names(files) == ["asr-2:8000", "asr-3:8000", "asr-1:8000"]

    a.unlink()
    assert files.refresh() is True and names(files) == ["asr-3:8000", "asr-1:8000"], "a gone file drops its targets"


def test_a_file_that_was_never_good_contributes_nothing(tmp_path):
    write(tmp_path / "a.yml", "- {targets: [http://asr-1:8000], labels: {probes: nope}}\n")
    files = TargetsFiles([str(tmp_path / "*.yml")])
    assert files.refresh() is False and names(files) == [] and files.errors_total == 1


def test_configured_targets_win_over_discovered_ones_by_url_or_name():
    configured = [TargetConfig(name="asr-1", url="http://asr-1:8000"),
                  TargetConfig(name="asr-9:8000", url="http://elsewhere:8000")]
    discovered = [TargetConfig.model_validate({"name": target_name(u), "url": u}, context={"discovered": True})
                  for u in ("http://asr-1:8000", "http://asr-9:8000", "http://asr-2:8000")]
    kept_configured, kept_discovered = merge_targets(configured, discovered)
    assert kept_configured == configured
    assert [t.name for t in kept_discovered] == ["asr-2:8000"]


# --- a real exporter ------------------------------------------------------------------------------------

def exporter_config(port: int, extra: str) -> str:
    return f"""
exporter:
  listen: "{LOOPBACK}:{port}"
  log_format: json
  shutdown_grace: 1s
schedules:
  health: {{interval: 2s, timeout: 1s}}
  model_info: {{interval: 2s, timeout: 1s}}
  batch: {{interval: 1h, timeout: 5s}}
  stream: {{interval: 1h, timeout: 5s}}
  punctuation: {{interval: 1h, timeout: 5s}}
  vad: {{interval: 1h, timeout: 5s}}
  timestamp: {{interval: 1h, timeout: 5s}}
{extra}"""


def probe_infos(text: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for labels in label_sets(text, "whoasr_probe_info"):
        out.setdefault(labels["target"], set()).add(labels["probe"])
    return out


@pytest.mark.timeout(120)
def test_exporter_follows_targets_files_and_keeps_the_last_good_content(tmp_path):
    simulator, url = start_simulator(tmp_path, "v2", health_delay=0.01)
    sim_port = url.rsplit(":", 1)[1]
    port = free_port()
    targets = tmp_path / "targets"
    targets.mkdir()
    # The simulator under two spellings: configured as 127.0.0.1, discovered as localhost.
    write(targets / "a.yml", f"- targets: ['{url}', 'localhost:{sim_port}']\n  labels: {{probes: punctuation}}\n")
    config = tmp_path / "config.yaml"
    config.write_text(exporter_config(port, f"""
targets:
  - {{name: configured, url: "{url}", probes: [punctuation]}}
targets_files: ["targets/*.yml", "targets/*.json"]
"""))
    discovered = f"localhost:{sim_port}"
    exporter = serve_exporter(config, tmp_path / "exporter.log")
    base = f"http://{LOOPBACK}:{port}"
    try:
        wait_ready(base)

        def metrics() -> str:
            return http_get(base + "/metrics", timeout=3)[1].decode()

        text = metrics()
        assert probe_infos(text) == {"configured": {"punctuation"}, discovered: {"punctuation"}}, (
            "the configured URL is not probed twice; the other spelling is a discovered target")
        assert value(text, "whoasr_exporter_targets", source="config") == 1
        assert value(text, "whoasr_exporter_targets", source="files") == 1
        assert value(text, "whoasr_exporter_targets_files_last_read_successful") == 1
        wait_until(lambda: value(metrics(), "whoasr_up", target=discovered) == 1, timeout=20,
                   what="the discovered target scraped")

        # A broken edit: reported, and the target stays with its last good settings.
        write(targets / "a.yml", "- targets: [oops\n")
        wait_until(lambda: value(metrics(), "whoasr_exporter_targets_file_errors_total") == 1, timeout=20,
                   what="the bad file counted")
        text = metrics()
        assert value(text, "whoasr_exporter_targets_files_last_read_successful") == 0
        assert probe_infos(text)[discovered] == {"punctuation"}
        assert value(text, "whoasr_up", target=discovered) == 1

        # A new JSON file, and the YAML file fixed with other probes: both applied without a reload.
        write(targets / "b.json", json.dumps([{"targets": [f"{url}/prefix"], "labels": {"probes": "vad"}}]))
        write(targets / "a.yml", f"- targets: ['localhost:{sim_port}']\n  labels: {{probes: 'vad,batch'}}\n")
        wanted = {"configured": {"punctuation"}, discovered: {"vad", "batch"}, f"{LOOPBACK}:{sim_port}/prefix": {"vad"}}
        wait_until(lambda: probe_infos(metrics()) == wanted, timeout=20, what=f"targets {wanted}")
        assert value(metrics(), "whoasr_exporter_targets_files_last_read_successful") == 1

        # A removed file takes its targets and all their series with it.
        (targets / "a.yml").unlink()
        wait_until(lambda: discovered not in probe_infos(metrics()), timeout=20, what="the removed file's target gone")
        text = metrics()
        assert value(text, "whoasr_up", target=discovered) is None
        assert value(text, "whoasr_exporter_targets", source="files") == 1

        # A reload that points targets_files elsewhere reads the new files at once.
        other = tmp_path / "other"
        other.mkdir()
        write(other / "c.yml", f"- targets: ['localhost:{sim_port}/c']\n  labels: {{probes: punctuation}}\n")
        config.write_text(config.read_text().replace('targets_files: ["targets/*.yml", "targets/*.json"]',
                                                     'targets_files: ["other/*.yml"]'))
        status, body = http_post(base + "/-/reload", timeout=10)
        assert (status, body.decode().strip()) == (200, "reloaded 2 targets")
        assert probe_infos(metrics()) == {"configured": {"punctuation"}, f"localhost:{sim_port}/c": {"punctuation"}}
        events = [json.loads(line) for line in exporter.output().splitlines() if line.startswith("{")]
        bad = [e for e in events if e.get("event") == "targets file invalid"]
        assert len(bad) == 1 and bad[0]["reason"] == "invalid_targets_file" and bad[0]["path"].endswith("a.yml")
    finally:
        exporter.stop()
        simulator.stop()


@pytest.mark.timeout(120)
def test_shards_split_the_discovered_targets_between_exporters(tmp_path):
    # Targets nobody listens on (connection refused at once): only which exporter schedules them matters.
    urls = [f"http://{LOOPBACK}:1/asr-{i}" for i in range(12)]
    (tmp_path / "targets.yml").write_text(
        json.dumps([{"targets": urls, "labels": {"probes": "punctuation"}}]).replace('"', "'"))
    processes, bases = [], []
    try:
        for index, (flag, configured) in enumerate((("0/2", None), (None, "1/2"))):
            port = free_port()
            config = tmp_path / f"config-{index}.yaml"
            shard_line = f'\n  shard: "{configured}"' if configured else ""
            config.write_text(exporter_config(port, 'targets_files: ["targets.yml"]').replace(
                "shutdown_grace: 1s", "shutdown_grace: 1s" + shard_line))
            args = ["serve", "--config", str(config)] + (["--shard", flag] if flag else [])
            processes.append(ManagedProcess(exporter_cmd(*args), tmp_path / f"exporter-{index}.log"))
            bases.append(f"http://{LOOPBACK}:{port}")
        owned = []
        for index, base in enumerate(bases):
            wait_ready(base)
            text = http_get(base + "/metrics", timeout=3)[1].decode()
            assert value(text, "whoasr_exporter_shard_info", shard=index, shards=2) == 1
            owned.append(set(probe_infos(text)))
            expected = {f"{LOOPBACK}:1/asr-{i}" for i, u in enumerate(urls) if shard_of(u, 2) == index}
            assert owned[index] == expected
            assert value(text, "whoasr_exporter_targets", source="files") == len(expected)
        assert owned[0].isdisjoint(owned[1]) and len(owned[0] | owned[1]) == len(urls)
        assert owned[0] and owned[1], "12 targets over 2 shards: both get some"
    finally:
        for process in processes:
            process.stop()
