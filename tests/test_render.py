"""The rendered alert rules and dashboards, tested the way monitoring mixins are.

- drift: the committed alerts/ and dashboards/ are exactly what `render` writes for config.example.yaml;
- thresholds: one config value moves both the alert expression and the panel threshold;
- promtool: the rules pass `check rules` (with lint) and the unit tests in alerts/tests, and every alert
  has a firing and a silent case there; every dashboard query parses as PromQL;
- a dashboard linter after grafana/dashboard-linter's rules; amtool for deploy/alertmanager.yml;
- every runbook_url points at a section of the runbook the exporter serves at /runbook (docs/runbook.md is
  its rendered copy), every dashboard_url at an existing panel;
- no rendered file depends on the names of the configured targets.

promtool and amtool tests skip when the tool is missing, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from exporter.config import ConfigError, load_config, parse_config
from exporter.render import DASHBOARDS_DIR, RULES_FILE, add_arguments, render, run, write_all
from exporter.render import dashboards as dash
from exporter.render import rules as rules_mod
from exporter.render import slo as slo_mod

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.yaml"
ALERT_TESTS = sorted((ROOT / "alerts" / "tests").glob("*.yml"))
RUNBOOK = ROOT / "docs" / "runbook.md"
ALERTMANAGER = ROOT / "deploy" / "alertmanager.yml"
EXPECTED_DASHBOARDS = {
    "whoasr-overview.json": "whoasr-overview",
    "whoasr-probes.json": "whoasr-probes",
    "whoasr-voice-path.json": "whoasr-voice-path",
    "whoasr-slo.json": "whoasr-slo",
}
ALLOWED_PANELS = {"timeseries", "stat", "gauge", "bargauge", "table", "heatmap"}
# The Grafana units these dashboards may use (a subset of grafana's valueFormats, as dashboard-linter lists).
VALID_UNITS = {"none", "short", "percent", "percentunit", "s", "ms", "bytes", "opm", "ops", "reqps",
               "bool_yes_no", "bool", "dtdurations"}
EXPORTER_ALERTS = {"WhoasrExporterDown", "WhoasrExporterConfigReloadFailed", "WhoasrExporterTargetsFileInvalid",
                   "WhoasrExporterInternalErrors"}  # no target label


def tool(name: str) -> str:
    """The tool's path; skip (or fail under CI=true) when it is not installed."""
    path = shutil.which(name)
    if path:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} is required under CI=true but is not installed")
    pytest.skip(f"{name} not installed (Debian: prometheus / prometheus-alertmanager)")


def example_config():
    return load_config(EXAMPLE)


def rule_file() -> dict:
    return yaml.safe_load((ROOT / RULES_FILE).read_text(encoding="utf-8"))


def all_alerts(groups: dict) -> list[dict]:
    return [rule for group in groups["groups"] for rule in group["rules"] if "alert" in rule]


def committed_dashboards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text(encoding="utf-8"))
            for path in sorted((ROOT / DASHBOARDS_DIR).glob("*.json"))}


def panel_exprs(dashboard: dict) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


# --------------------------------------------------------------------------------------------- drift, API

def test_committed_files_are_exactly_the_rendered_ones(tmp_path):
    written = write_all(example_config(), tmp_path)
    assert set(render(example_config())) <= {p.relative_to(tmp_path) for p in written}
    for path in written:
        relative = path.relative_to(tmp_path)
        committed = ROOT / relative
        assert committed.is_file(), f"{relative} is not committed: run `whoasr-exporter render`"
        assert committed.read_bytes() == path.read_bytes(), (
            f"{relative} differs from what render writes for config.example.yaml: run "
            "`whoasr-exporter render --config config.example.yaml --out .` and commit the result")
    extra = {p.name for p in (ROOT / DASHBOARDS_DIR).glob("*.json")} - set(EXPECTED_DASHBOARDS)
    assert not extra, f"dashboards/ holds files render does not write: {sorted(extra)}"


def test_render_is_deterministic():
    assert render(example_config()) == render(example_config())


def test_cli_arguments_and_run(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    defaults = parser.parse_args([])
    assert (defaults.config, defaults.out) == ("config.example.yaml", ".")
    args = parser.parse_args(["--config", str(EXAMPLE), "--out", str(tmp_path)])
    assert run(args) == 0
    printed = capsys.readouterr().out.split()
    assert str(tmp_path / RULES_FILE) in printed
    assert {Path(p).name for p in printed} >= {"whoasr-rules.yml", *EXPECTED_DASHBOARDS}
    assert all(Path(p).is_file() for p in printed)


def test_run_reports_config_errors_with_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("thresholds: {cpu_usage_percent: 180}\n", encoding="utf-8")
    assert run(argparse.Namespace(config=str(bad), out=str(tmp_path / "out"))) == 2
    assert "thresholds.cpu_usage_percent" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError):
        load_config(bad)


# ------------------------------------------------------------------------------------- thresholds, SLOs

def _config(links=None, **thresholds):
    return parse_config({
        "targets": [{"name": "asr-a", "url": "http://127.0.0.1:1"},
                    {"name": "asr-b", "url": "http://127.0.0.1:2", "probes": ["batch", "stream"]}],
        "thresholds": thresholds,
        **({"links": links} if links else {}),
    })


def _panel(dashboard: dict, title: str) -> dict:
    return next(p for p in dashboard["panels"] if p["title"] == title)


def _steps(panel: dict) -> list:
    return [step["value"] for step in panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]


def test_a_threshold_moves_the_alert_and_the_panel():
    before, after = _config(), _config(cpu_usage_percent=70, response_time_seconds=3,
                                       stream_first_result_seconds=1.5, error_rate_percent=20)
    def expr(config, name, severity="warning", probe=None):
        return next(a["expr"] for a in all_alerts({"groups": rules_mod.rule_groups(config)})
                    if a["alert"] == name and a["labels"]["severity"] == severity
                    and a["labels"].get("probe") == probe)

    assert expr(before, "WhoasrCPUUsageHigh") == "whoasr_system_cpu_usage_ratio > 0.8"
    assert expr(after, "WhoasrCPUUsageHigh") == "whoasr_system_cpu_usage_ratio > 0.7"
    assert expr(before, "WhoasrProbeLatencyHigh", probe="batch").startswith(
        'whoasr:probe_duration_seconds:p95_rate20m{probe="batch"} > 5\n')
    assert expr(after, "WhoasrProbeLatencyHigh", probe="batch").startswith(
        'whoasr:probe_duration_seconds:p95_rate10m{probe="batch"} > 3\n')  # 20%: 10 runs hold it
    assert expr(after, "WhoasrProbeErrorRateHigh", probe="batch").startswith(
        'whoasr:probe_error:ratio_rate10m{probe="batch"} > 0.2\n')
    assert expr(after, "WhoasrStreamFirstResultSlow", probe="stream").startswith(
        "whoasr:stream_first_result_seconds:p95_rate10m > 1.5\n")
    new_rules = rules_mod.render_rules(after)
    assert 'le="3.0"' in new_rules and 'le="5.0"' not in new_rules  # the latency SLI bucket

    overview_old, overview_new = dash.build("whoasr-overview", before), dash.build("whoasr-overview", after)
    assert _steps(_panel(overview_old, "CPU usage")) == [None, 0.8, 0.95]
    assert _steps(_panel(overview_new, "CPU usage")) == [None, 0.7, 0.95]
    assert _steps(_panel(overview_new, "CPU usage now")) == [None, 0.7, 0.95]
    probes_new = dash.build("whoasr-probes", after)
    assert _steps(_panel(probes_new, "Probe duration p50 / p95 / p99")) == [None, 3]
    assert _steps(_panel(probes_new, "Failure ratio by reason")) == [None, 0.2]
    voice_new = dash.build("whoasr-voice-path", after)
    assert _steps(_panel(voice_new, "First result latency")) == [None, 1.5]


def test_rate_windows_hold_enough_runs_that_one_failure_stays_below_the_threshold():
    config = _config()
    for kind in ("batch", "timestamp"):
        window = rules_mod.rate_window(config, kind)
        runs = window / config.schedules.for_kind(kind).interval
        assert 1 / runs <= config.thresholds.error_rate_percent / 100 / 2
        assert rules_mod.failing_for(config, kind) >= 2 * config.schedules.for_kind(kind).interval
        # whoasr_up trails a failing probe by at most one /health interval plus the longest probe timeout
        # (a scrape waits for the probes in flight): the failing alert waits longer, so an outage mutes it.
        assert rules_mod.failing_for(config, kind) >= config.schedules.health.interval + 30
    fast = parse_config({"schedules": {"health": {"interval": "1s", "timeout": "900ms"},
                                       "punctuation": {"interval": "2s", "timeout": "1s"},
                                       "stream": {"interval": "8s", "timeout": "7s"}},
                         "thresholds": {"for_short": "2s"}})
    assert rules_mod.failing_for(fast, "punctuation") == 1 + 30  # batch's default 30 s timeout is the longest
    assert rules_mod.rate_window(config, "batch") == 1200  # 20 runs of 60 s
    assert rules_mod.rate_window(config, "timestamp") == 2400


def test_slo_window_table_and_sloth_names():
    assert slo_mod.SLI_WINDOWS == ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
    assert [(w.severity, w.factor, w.long, w.short) for w in slo_mod.BURN_WINDOWS] == [
        ("critical", "14.4", "1h", "5m"), ("critical", "6", "6h", "30m"),
        ("warning", "3", "1d", "2h"), ("warning", "1", "3d", "6h")]
    config = _config(slo_availability_percent=99.9)
    objectives = slo_mod.slos(config)
    # One SLO per probe kind and objective, whatever the targets: the SLIs carry the target label.
    assert {(o.probe, o.kind) for o in objectives} == {
        *((kind, "availability") for kind in ("batch", "stream", "punctuation", "vad", "timestamp", "stream_vad")),
        *((kind, "latency") for kind in ("batch", "stream", "punctuation", "vad", "timestamp"))}
    groups = {g["name"]: g for g in rules_mod.rule_groups(config)}
    group = groups["sloth-slo-whoasr-stream-availability"]
    records = {r["record"]: r for r in group["rules"] if "record" in r}
    for window in slo_mod.SLI_WINDOWS:
        rule = records[f"slo:sli_error:ratio_rate{window}"]
        assert rule["labels"] == {"sloth_id": "whoasr-stream-availability", "sloth_service": "whoasr",
                                  "sloth_slo": "stream-availability", "probe": "stream", "sloth_window": window}
        assert "by (job, target, probe)" in rule["expr"]
    # The voice path's latency SLI is the first result's, never the session's length (the clip's).
    latency = {r["record"]: r for r in groups["sloth-slo-whoasr-stream-latency"]["rules"] if "record" in r}
    assert 'whoasr_stream_first_result_seconds_bucket{le="2.0"}' in latency["slo:sli_error:ratio_rate1h"]["expr"]
    assert "whoasr_probe_duration_seconds" not in latency["slo:sli_error:ratio_rate1h"]["expr"]
    for name in ("slo:objective:ratio", "slo:error_budget:ratio", "slo:time_period:days",
                 "slo:current_burn_rate:ratio", "slo:period_burn_rate:ratio",
                 "slo:period_error_budget_remaining:ratio", "sloth_slo_info"):
        assert name in records
    # per target the probe runs on (either mode has whoasr_probe_success), so no target is named
    probed = 'group by (job, target, probe) (whoasr_probe_success{probe="stream"})'
    assert records["slo:objective:ratio"]["expr"] == f"0.999 * {probed}"
    assert records["slo:error_budget:ratio"]["expr"] == f"0.001 * {probed}"
    alerts = [r for r in group["rules"] if "alert" in r]
    assert [a["labels"]["severity"] for a in alerts] == ["critical", "warning"]
    assert "(14.4 * 0.001)" in alerts[0]["expr"] and "(1 * 0.001)" in alerts[1]["expr"]


# ------------------------------------------------------------------------------------------ alert rules

def test_every_alert_has_severity_summary_description_and_links():
    config = example_config()
    anchors = runbook_anchors()
    served = served_anchors()
    panels = {(board["uid"], panel["id"]) for board in committed_dashboards().values() for panel in board["panels"]}
    runbook_base = config.links.runbook_base()
    assert runbook_base == "http://localhost:9877/runbook"  # the exporter's own page by default
    for alert in all_alerts(rule_file()):
        name, labels, notes = alert["alert"], alert["labels"], alert["annotations"]
        assert labels["severity"] in ("warning", "critical"), name
        expected = {"summary", "description", "runbook_url", "dashboard_url"}
        if name not in EXPORTER_ALERTS:
            expected.add("history_url")  # the exporter's recent results for that target (and probe)
        assert set(notes) == expected, name
        assert notes["runbook_url"] == f"{runbook_base}#{name.lower()}", name
        assert name.lower() in anchors and name.lower() in served, f"{name}: no runbook section for it"
        board = re.match(rf"{re.escape(config.links.grafana)}/d/([\w-]+)/[\w-]+\?viewPanel=(\d+)",
                         notes["dashboard_url"])
        assert board and (board[1], int(board[2])) in panels, f"{name}: {notes['dashboard_url']}"
        if name not in EXPORTER_ALERTS:
            assert "{{ $labels.target }}" in notes["description"] + notes["summary"], name
            assert "var-target={{ $labels.target | urlquery }}" in notes["dashboard_url"], name
            assert notes["history_url"].startswith(
                f"{config.links.exporter}/api/history?target={{{{ $labels.target | urlquery }}}}"), name


def test_links_come_from_the_config():
    config = _config(links={"exporter": "https://exporter.example.org", "grafana": "https://grafana.example.org/",
                            "runbook": "https://wiki.example.org/whoasr"})
    alerts = all_alerts({"groups": rules_mod.rule_groups(config)})
    down = next(a for a in alerts if a["alert"] == "WhoasrTargetDown")["annotations"]
    assert down["runbook_url"] == "https://wiki.example.org/whoasr#whoasrtargetdown"
    assert down["dashboard_url"].startswith("https://grafana.example.org/d/whoasr-overview/whoasr-overview?viewPanel=")
    assert down["history_url"] == "https://exporter.example.org/api/history?target={{ $labels.target | urlquery }}"
    failing = next(a for a in alerts if a["alert"] == "WhoasrProbeFailing")["annotations"]
    assert failing["history_url"].endswith("&probe={{ $labels.probe | urlquery }}")
    with pytest.raises(ConfigError, match=r"links\.grafana: expected an http\(s\):// base URL"):
        parse_config({"links": {"grafana": "grafana:3000"}})


def test_rendered_files_do_not_depend_on_target_names():
    """Whatever targets an exporter probes, the committed rules and dashboards are right for it: two
    configs with different target names and probe lists render the same files, and none names a target."""
    first = parse_config({"targets": [{"name": "asr-a", "url": "http://127.0.0.1:1"},
                                      {"name": "asr-b", "url": "http://127.0.0.1:2", "probes": ["batch"]}]})
    second = parse_config({"targets": [{"name": "prod-zh-1", "url": "https://asr.example.org", "api": "v1",
                                        "probes": ["stream", "stream_vad"]}]})
    assert render(first) == render(second) == render(parse_config({}))
    example = load_config(EXAMPLE)
    for path, text in render(example).items():
        for target in example.targets:
            assert target.name not in text, f"{path} names the target {target.name}"
    # and the committed Kubernetes copies too
    for path in (ROOT / "deploy" / "kubernetes").glob("{prometheusrule,dashboards-configmap}.yaml"):
        for target in example.targets:
            assert target.name not in path.read_text(encoding="utf-8"), f"{path} names {target.name}"


def test_the_voice_path_is_never_judged_by_its_session_length():
    alerts = all_alerts({"groups": rules_mod.rule_groups(example_config())})
    latency = [a for a in alerts if a["alert"] == "WhoasrProbeLatencyHigh"]
    assert {a["labels"]["probe"] for a in latency} == set(rules_mod.DURATION_PROBES)
    assert not {"stream", "stream_vad"} & set(rules_mod.DURATION_PROBES)
    voice = {a["alert"] for a in alerts if a["labels"].get("probe") == "stream"}
    assert {"WhoasrStreamFirstResultSlow", "WhoasrStreamResultLagHigh"} <= voice


def test_the_runbook_served_at_runbook_is_the_committed_copy():
    from exporter import runbook

    assert RUNBOOK.read_text(encoding="utf-8") == runbook.markdown()
    page = runbook.html_page()
    assert page.startswith("<!doctype html>") and "<table>" in page


def runbook_anchors() -> set[str]:
    """GitHub's anchors of the committed runbook's headings (docs/runbook.md read in a repository)."""
    from exporter.runbook import anchor

    return {anchor(line.lstrip("#")) for line in RUNBOOK.read_text(encoding="utf-8").splitlines()
            if line.startswith("#")}


def served_anchors() -> set[str]:
    from exporter import runbook

    return set(re.findall(r'<h2 id="([^"]+)"', runbook.html_page()))


def test_every_runbook_section_belongs_to_an_alert():
    names = {alert["alert"].lower() for alert in all_alerts(rule_file())}
    sections = {line[3:].strip().lower() for line in RUNBOOK.read_text(encoding="utf-8").splitlines()
                if line.startswith("## ")}
    assert sections == names


def test_runbook_window_table_is_the_rendered_one():
    text = RUNBOOK.read_text(encoding="utf-8")
    for row in slo_mod.BURN_WINDOWS:
        assert f"| {row.severity} ({row.sloth_severity}) | {row.factor}x | {row.long} | {row.short} |" in text


def test_every_alert_has_a_firing_and_a_silent_unit_test():
    """Mechanically: each (alert, severity) of the rules is expected to fire in some test case, and each
    alert name is expected to be silent (exp_alerts: []) in another."""
    assert ALERT_TESTS, "no promtool unit tests in alerts/tests"
    firing, silent = set(), set()
    for path in ALERT_TESTS:
        suite = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert suite["rule_files"] == ["../whoasr-rules.yml"], f"{path.name} must test the committed rules"
        for group in suite["tests"]:
            for case in group.get("alert_rule_test", []):
                expected = case.get("exp_alerts") or []
                if not expected:
                    silent.add(case["alertname"])
                for alert in expected:
                    firing.add((case["alertname"], alert["exp_labels"]["severity"]))
    rules = {(a["alert"], a["labels"]["severity"]) for a in all_alerts(rule_file())}
    assert rules - firing == set(), "alerts never expected to fire in alerts/tests"
    assert {name for name, _ in rules} - silent == set(), "alerts never expected to stay silent"


def test_every_alert_is_tested_in_multi_target_mode_too():
    """alerts/tests/multi_target.yml feeds /probe-shaped series (target = URL, probe = module, one gauge
    per run): every (alert, severity) fires there and every alert stays silent in another case."""
    suite = yaml.safe_load((ROOT / "alerts" / "tests" / "multi_target.yml").read_text(encoding="utf-8"))
    firing, silent = set(), set()
    for group in suite["tests"]:
        for series in group["input_series"]:
            assert 'target="http://' in series["series"] or 'job="whoasr-exporter"' in series["series"], series
            exporter_own = 'job="whoasr-exporter"' in series["series"]  # its /metrics job has counters
            assert exporter_own or ("_total" not in series["series"] and "_bucket" not in series["series"]), series
        for case in group.get("alert_rule_test", []):
            expected = case.get("exp_alerts") or []
            if not expected:
                silent.add(case["alertname"])
            firing |= {(case["alertname"], alert["exp_labels"]["severity"]) for alert in expected}
    rules = {(a["alert"], a["labels"]["severity"]) for a in all_alerts(rule_file())}
    assert rules - firing == set(), "alerts never expected to fire in multi-target mode"
    assert {name for name, _ in rules} - silent == set(), "alerts never expected to stay silent in multi-target mode"


def test_promtool_check_rules():
    promtool = tool("promtool")
    result = subprocess.run([promtool, "check", "rules", str(ROOT / RULES_FILE)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests():
    """Runs the test files side by side: each evaluates every rule at every step, which takes seconds."""
    promtool = tool("promtool")
    processes = [
        (path.name, subprocess.Popen([promtool, "test", "rules", path.name], cwd=path.parent,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        for path in ALERT_TESTS
    ]
    failed = []
    for name, process in processes:
        output, _ = process.communicate(timeout=600)
        if process.returncode != 0:
            failed.append(f"--- {name}\n{output}")
    assert not failed, "\n".join(failed)


# ----------------------------------------------------------------------------------------- dashboards

@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict]:
    found = committed_dashboards()
    assert set(found) == set(EXPECTED_DASHBOARDS)
    return found


def test_dashboards_import_cleanly(dashboards):
    for name, board in dashboards.items():
        assert board["uid"] == EXPECTED_DASHBOARDS[name], f"{name}: the uid must stay stable"
        assert board["schemaVersion"] >= 36, name
        assert board["title"] and board["description"], name
        assert board["id"] is None, name
        inputs = {i["name"]: i for i in board["__inputs"]}
        assert inputs[dash.DS_INPUT]["type"] == "datasource"
        assert inputs[dash.DS_INPUT]["pluginId"] == "prometheus"
        assert {r["id"] for r in board["__requires"]} >= {"grafana", "prometheus"}
        assert '"graph"' not in json.dumps(board), f"{name}: no Angular graph panels"
    assert len({board["uid"] for board in dashboards.values()}) == len(dashboards)


def test_dashboard_variables(dashboards):
    """dashboard-linter: template-datasource-rule, template-job-rule, template-*-rule for target."""
    for name, board in dashboards.items():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        source = variables["datasource"]
        assert (source["type"], source["query"], source["label"]) == ("datasource", "prometheus", "Data source")
        assert source["current"]["value"] == f"${{{dash.DS_INPUT}}}"
        for var in ("job", "target"):
            v = variables[var]
            assert v["type"] == "query", (name, var)
            assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, (name, var)
            assert v["label"] == var.title() and v["multi"] and v["includeAll"], (name, var)
            assert v["allValue"] == ".+", (name, var)
            assert v["refresh"] == 2, (name, var)  # on time range change
        assert 'job=~"$job"' in variables["target"]["definition"]


def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def _rate_ranges(expr: str) -> list[str]:
    """The range of every rate(), irate() and increase() call."""
    ranges = []
    for match in re.finditer(r"\b(?:rate|irate|increase)\(", expr):
        depth, i = 1, match.end()
        while depth and i < len(expr):
            depth += {"(": 1, ")": -1}.get(expr[i], 0)
            i += 1
        ranges += re.findall(r"\[([^\]]+)\]", expr[match.end():i])
    return ranges


def lint(name: str, board: dict) -> list[str]:
    """dashboard-linter's panel and target rules: datasource, title, description, units, job/target
    matchers on every selector, $__rate_interval in every rate; plus the panel types allowed here."""
    problems = []
    ids = [panel["id"] for panel in board["panels"]]
    if len(set(ids)) != len(ids):
        problems.append(f"{name}: duplicate panel ids")
    for panel in board["panels"]:
        where = f"{name} / {panel.get('title')!r}"
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        if panel["type"] not in ALLOWED_PANELS:
            problems.append(f"{where}: panel type {panel['type']}")
        if not panel.get("title") or not panel.get("description"):
            problems.append(f"{where}: needs a title and a description")
        if defaults.get("unit") not in VALID_UNITS:
            problems.append(f"{where}: unit {defaults.get('unit')!r}")
        if panel.get("datasource") != {"type": "prometheus", "uid": "${datasource}"}:
            problems.append(f"{where}: datasource must be the $datasource variable")
        steps = defaults.get("thresholds", {}).get("steps") or [{"value": "missing"}]
        values = [step["value"] for step in steps[1:]]
        if steps[0]["value"] is not None or values != sorted(values):
            problems.append(f"{where}: thresholds must start at null and increase")
        grid = panel["gridPos"]
        if grid["x"] + grid["w"] > 24:
            problems.append(f"{where}: wider than the grid")
        if not panel.get("targets"):
            problems.append(f"{where}: no queries")
        for target in panel.get("targets", []):
            expr = target["expr"]
            if target.get("datasource") != panel.get("datasource"):
                problems.append(f"{where}: query datasource differs from the panel's")
            for selector in re.findall(r"\{([^{}]*)\}", expr):
                for matcher in ('job=~"$job"', 'target=~"$target"'):
                    if matcher not in selector:
                        problems.append(f"{where}: selector {{{selector}}} lacks {matcher}")
            bare = re.findall(r"\b((?:whoasr_|slo:)[\w:]*)(?![\w:{])", _strip_strings(expr))
            if bare:
                problems.append(f"{where}: metrics without selector: {bare}")
            for window in _rate_ranges(expr):
                if window != "$__rate_interval":
                    problems.append(f"{where}: rate over [{window}] instead of [$__rate_interval]")
    return problems


def test_dashboard_lint(dashboards):
    problems = [problem for name, board in dashboards.items() for problem in lint(name, board)]
    assert not problems, "\n".join(problems)


def test_dashboard_lint_finds_problems(dashboards):
    """The linter itself: each rule catches what it is for."""
    board = json.loads(json.dumps(dashboards["whoasr-probes.json"]))
    panel = board["panels"][0]
    panel["type"] = "graph"
    panel["description"] = ""
    panel["fieldConfig"]["defaults"]["unit"] = ""
    panel["datasource"] = {"type": "prometheus", "uid": "prom-1"}
    panel["targets"][0]["expr"] = 'sum(rate(whoasr_probe_runs_total{job=~"$job"}[5m])) + whoasr_up'
    found = "\n".join(lint("broken", board))
    for expected in ("panel type graph", "needs a title and a description", "unit ''",
                     "datasource must be", "lacks target=~", "metrics without selector: ['whoasr_up']",
                     "rate over [5m]"):
        assert expected in found, expected


GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h",
                     "$job": ".+", "$target": ".+", "$probe": ".+"}


def _substitute(expr: str) -> str:
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"unknown variable in {expr!r}"
    return expr


def test_every_dashboard_query_parses(dashboards, tmp_path):
    """Every panel query and variable query, with Grafana's variables filled in, as recording rules
    that `promtool check rules` parses with Prometheus's own PromQL parser."""
    promtool = tool("promtool")
    exprs = []
    for board in dashboards.values():
        exprs += [_substitute(expr) for _, expr in panel_exprs(board)]
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                match = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["definition"], re.S)
                assert match, variable["definition"]
                exprs.append(_substitute(match.group(1)))
    rules = {"groups": [{"name": "dashboard-queries",
                         "rules": [{"record": f"dashboard_query_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(exprs)} rules found" in result.stdout


def test_panel_thresholds_come_from_the_config(dashboards):
    t = example_config().thresholds
    overview = dashboards["whoasr-overview.json"]
    assert _steps(_panel(overview, "Memory usage")) == [None, t.memory_usage_percent / 100,
                                                         t.memory_usage_critical_percent / 100]
    assert _steps(_panel(overview, "Disk usage")) == [None, t.disk_usage_percent / 100,
                                                       t.disk_usage_critical_percent / 100]
    probes = dashboards["whoasr-probes.json"]
    assert _steps(_panel(probes, "Character error rate")) == [None, t.character_error_rate]
    assert _steps(_panel(probes, "Time since last run")) == [None, t.stale_after]
    slo = dashboards["whoasr-slo.json"]
    assert _steps(_panel(slo, "Availability SLI (1h)")) == [None, t.slo_availability_percent / 100]
    assert _steps(_panel(slo, "Current burn rate")) == [None, 1, 3, 6, 14.4]


# --------------------------------------------------------------------------------------- alertmanager

def test_alertmanager_config_checks():
    amtool = tool("amtool")
    result = subprocess.run([amtool, "check-config", str(ALERTMANAGER)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load(ALERTMANAGER.read_text(encoding="utf-8"))
    routes = {tuple(r["matchers"]): r["receiver"] for r in config["route"]["routes"]}
    assert set(routes) == {('severity="critical"',), ('severity="warning"',)}
    assert {"alertname", "target"} <= set(config["route"]["group_by"])
    outage, severity = config["inhibit_rules"]
    # One outage pages once: a target that is down mutes every other alert about that target.
    assert (outage["source_matchers"], outage["target_matchers"], outage["equal"]) == (
        ['alertname="WhoasrTargetDown"'], ['alertname!="WhoasrTargetDown"'], ["target"])
    assert (severity["source_matchers"], severity["target_matchers"]) == (['severity="critical"'],
                                                                          ['severity="warning"'])
    assert {"alertname", "target"} <= set(severity["equal"])
    for receiver in config["receivers"]:
        assert all(hook["send_resolved"] for hook in receiver["webhook_configs"]), receiver["name"]


def test_alertmanager_commented_examples_are_valid(tmp_path):
    """The email, Slack and PagerDuty examples, uncommented, still pass amtool."""
    amtool = tool("amtool")
    text = ALERTMANAGER.read_text(encoding="utf-8")
    for kind in ("email_configs", "slack_configs", "pagerduty_configs"):
        assert f"# {kind}:" in text, f"no commented {kind} example"
    uncommented = re.sub(r"(?m)^(\s+)# ", r"\1", text)
    path = tmp_path / "alertmanager.yml"
    path.write_text(uncommented, encoding="utf-8")
    result = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 receivers" in result.stdout
