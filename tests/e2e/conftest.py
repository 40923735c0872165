"""One real monitoring stack for the end-to-end tests, shared by the tests of this package.

simulators (one process per whoAsr target) -> the exporter -> Prometheus (scraping every second,
evaluating the rules that `exporter.render.write_all` renders from the test config in stack.py) ->
Alertmanager -> a webhook receiver that records what was delivered. Every process gets a free loopback
port and its own temporary directory, and is stopped by pid. The fixtures are package-scoped, so the
stack stops as soon as the e2e tests are done (not at the end of a whole-suite run, where it would load
the machine under the other tests), and the teardown checks that no process is left.
Without the Debian binaries the tests skip with one line; with CI=true that is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.e2e.stack import (INVENTORY_DIR, MULTI_TARGETS, TARGETS, Simulator, Stack, alertmanager_config,
                             exporter_config, missing_key_series, multi_target_files, multi_target_prometheus_config,
                             prometheus_config)
from tests.e2e.webhook import WebhookReceiver
from tests.support import LOOPBACK, ManagedProcess, exporter_cmd, free_port, http_get, start_simulator, wait_until

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


def _start_simulators(tmp: Path, launched: list) -> dict[str, Simulator]:
    """All simulators at once (each takes about a second to import and bind)."""
    apis = {name: (api, extra) for name, (api, extra, _) in TARGETS.items()}
    apis.update(MULTI_TARGETS)

    def start(name):
        api, extra = apis[name]
        proc, url = start_simulator(tmp, api, *extra, name=name)
        return Simulator(name, api, extra, int(url.rsplit(":", 1)[1]), url, proc)

    simulators, errors = {}, []
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {name: pool.submit(start, name) for name in apis}
        for name, future in futures.items():
            try:
                simulators[name] = future.result()
                launched.append(simulators[name].proc)
            except Exception as exc:  # noqa: BLE001 - report after the others are registered for cleanup
                errors.append(f"{name}: {exc}")
    assert not errors, "\n".join(errors)
    return simulators


@pytest.fixture(scope="package")
def stack(binaries, launched, tmp_path_factory) -> Stack:
    """Starts the chain from its end (webhook, Alertmanager) to its head (Prometheus), each part ready
    before the next needs it; stops every process on the way out, whatever happened."""
    from exporter.config import load_config
    from exporter.render import write_all

    tmp = tmp_path_factory.mktemp("e2e")
    webhook = WebhookReceiver().start()
    try:
        am_port = free_port()
        am_config = tmp / "alertmanager.yml"
        am_config.write_text(yaml.safe_dump(alertmanager_config(webhook.url)))
        (tmp / "alertmanager-data").mkdir()
        alertmanager = f"http://{LOOPBACK}:{am_port}"
        _start(launched, [binaries["prometheus-alertmanager"], f"--config.file={am_config}",
                          f"--storage.path={tmp / 'alertmanager-data'}",
                          f"--web.listen-address={LOOPBACK}:{am_port}", "--cluster.listen-address="],
               tmp / "alertmanager.log", alertmanager + "/-/ready", "alertmanager")

        simulators = _start_simulators(tmp, launched)

        exporter_port = free_port()
        (tmp / INVENTORY_DIR).mkdir()
        (tmp / INVENTORY_DIR / "fleet.yml").write_text("[]\n")
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
        prom_config.write_text(yaml.safe_dump(prometheus_config(rules, exporter_port, am_port)))
        (tmp / "prometheus-data").mkdir()
        prometheus = f"http://{LOOPBACK}:{prom_port}"
        _start(launched, [binaries["prometheus"], f"--config.file={prom_config}",
                          f"--storage.tsdb.path={tmp / 'prometheus-data'}",
                          f"--web.listen-address={LOOPBACK}:{prom_port}"],
               tmp / "prometheus.log", prometheus + "/-/ready", "prometheus")

        # Multi-target mode: a second Prometheus scraping /probe with the shipped relabelling, the same
        # rules and the same Alertmanager.
        targets_file = tmp / "multi-target-targets.yml"
        targets_file.write_text(yaml.safe_dump(multi_target_files(simulators)))
        multi_port = free_port()
        multi_config = tmp / "prometheus-multi.yml"
        multi_config.write_text(yaml.safe_dump(multi_target_prometheus_config(rules, targets_file, exporter_port,
                                                                              am_port)))
        (tmp / "prometheus-multi-data").mkdir()
        multi = f"http://{LOOPBACK}:{multi_port}"
        _start(launched, [binaries["prometheus"], f"--config.file={multi_config}",
                          f"--storage.tsdb.path={tmp / 'prometheus-multi-data'}",
                          f"--web.listen-address={LOOPBACK}:{multi_port}"],
               tmp / "prometheus-multi.log", multi + "/-/ready", "prometheus (multi-target)")

        yield Stack(tmp=tmp, launched=launched, prometheus=prometheus, alertmanager=alertmanager,
                    exporter=exporter, webhook=webhook, render_dir=render_dir, simulators=simulators,
                    multi_prometheus=multi)
    finally:
        with ThreadPoolExecutor(max_workers=8) as pool:  # each stop() waits for its process: stop them together
            list(pool.map(lambda proc: proc.stop(), launched))
        webhook.stop()


@pytest.fixture(scope="package")
def healthy_stack(stack: Stack) -> Stack:
    """The stack once Prometheus holds the key series of every healthy target."""
    try:
        wait_until(lambda: not missing_key_series(stack), timeout=45, interval=0.5,
                   what="key series of the healthy targets in Prometheus")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\nmissing: {missing_key_series(stack)}\n"
                             f"exporter log tail:\n{(stack.tmp / 'exporter.log').read_text()[-3000:]}") from None
    return stack
