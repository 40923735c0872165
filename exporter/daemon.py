"""The daemon: config -> scheduler -> runner (scrape or probe) -> result -> sinks (state and metrics,
history, log), served over HTTP.

It owns the shared HTTP session and one client per target, and applies (re)loaded configs: a bad config
is rejected and the running one kept. Nothing it uses imports it back.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import ssl
import sys
import time
from typing import Optional

import aiohttp
import structlog

from exporter import eventloop, logs, tls, websecurity
from exporter.client import TargetClient, new_session
from exporter.config import Config, ConfigError, TargetConfig, TLSConfig, load_config, load_config_or_report
from exporter.discovery import POLL_SECONDS, TargetsFiles, merge_targets
from exporter.history import History
from exporter.kinds import SCRAPE_KINDS
from exporter.metrics import Exposition, process_registry
from exporter.probes import probe_function
from exporter.results import ProbeResult
from exporter.runner import Runner
from exporter.scheduler import Plan, Scheduler
from exporter.server import start_server
from exporter.shard import Shard, ShardError, effective_shard
from exporter.sinks import LogSink, Sink, deliver
from exporter.state import ExporterState

log = structlog.get_logger("exporter.daemon")


class Daemon:
    def __init__(self, config: Config, config_path: Optional[str] = None, shard: Optional[str] = None):
        self.config = config
        self.config_path = config_path
        self.shard_override = shard  # --shard I/N; wins over exporter.shard
        self.shard: Shard = effective_shard(shard, config.exporter.shard)
        self.discovery = TargetsFiles(config.targets_files)
        self.targets: tuple[TargetConfig, ...] = ()  # what this exporter probes: merged, then sharded
        self._watch: Optional[asyncio.Task] = None
        thresholds = config.thresholds
        self.state = ExporterState(thresholds.response_time_seconds, thresholds.stream_first_result_seconds)
        self.history = History(config.exporter.history_size, config.exporter.history_failures_size,
                               config.exporter.history_max_results, config.exporter.history_max_mib << 20)
        self.exposition = Exposition(self.state, process_registry())
        self.session: Optional[aiohttp.ClientSession] = None
        self.clients: dict[str, TargetClient] = {}
        self.tls_contexts: dict[TLSConfig, ssl.SSLContext] = {}  # one per distinct targets[].tls_config
        self.runner = Runner(config, self.state.internal_errors)
        self.sinks: list[Sink] = [self.state, self.history, LogSink()]  # where every scheduled result goes
        self.scheduler = Scheduler(self.run_job, self.state.record_skip, self.state.scheduler_lag.observe,
                                   self.run_crashed)
        self.ready = False
        self._reload_lock = asyncio.Lock()

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        self.session = new_session()
        await asyncio.to_thread(self.discovery.refresh)
        self.apply(self.config)
        self.state.record_reload(True)
        # Import what the configured probes need now rather than mid-run, then move everything built so far
        # out of the collector's reach: full collections then scan only new objects (~100 ms -> a few ms),
        # which keeps /metrics and stream pacing free of GC pauses.
        for kind in sorted({kind for target in self.targets for kind in target.enabled_probes()}):
            probe_function(kind)
        gc.freeze()
        self.scheduler.start()
        self._watch = asyncio.create_task(self._watch_targets_files(), name="targets-files")
        self.ready = True

    async def _watch_targets_files(self) -> None:
        """Re-reads the targets files every POLL_SECONDS; a changed target list is applied at once."""
        while True:
            await asyncio.sleep(POLL_SECONDS)
            discovery = self.discovery
            if not discovery.patterns:
                continue
            try:
                changed = await asyncio.to_thread(discovery.refresh)
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive any one bad read
                log.error("targets files refresh failed", reason="refresh_error", error=repr(exc))
                continue
            self._record_discovery()
            if changed and discovery is self.discovery:
                self._apply_targets()
                log.info("targets files applied", targets=len(self.targets), shard=str(self.shard))

    async def stop(self, grace: Optional[float] = None) -> None:
        self.ready = False
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.wait([self._watch], timeout=5.0)
        await self.scheduler.shutdown(self.config.exporter.shutdown_grace if grace is None else grace)
        if self.session is not None:
            await self.session.close()

    def apply(self, config: Config, discovery: Optional[TargetsFiles] = None,
              tls_contexts: Optional[dict[TLSConfig, ssl.SSLContext]] = None) -> None:
        """Switches to a validated config (and, when its globs changed, to freshly read targets files).

        Targets with a tls_config get new clients with `tls_contexts`, built from their files now (a reload
        re-reads renewed certificates); without them they are built here, as at start-up."""
        self.config = config
        self.runner.config = config
        if discovery is not None:
            self.discovery = discovery
        shard = effective_shard(self.shard_override, config.exporter.shard)
        if shard != self.shard:
            self.shard = shard
        self.state.set_thresholds(config.thresholds.response_time_seconds,
                                  config.thresholds.stream_first_result_seconds)
        if tls_contexts is None:
            tls_contexts = tls.contexts_for(target.tls_config for target in config.targets)
        self.tls_contexts = tls_contexts
        self._record_discovery()
        self._apply_targets(renew_tls=True)

    def _apply_targets(self, renew_tls: bool = False) -> None:
        """Clients, gates, state and jobs follow the target list: configured and discovered targets,
        then only those of this exporter's shard."""
        config = self.config
        configured, discovered = merge_targets(config.targets, self.discovery.targets())
        self.shard.forget_except({t.url for t in (*configured, *discovered)})
        configured = [t for t in configured if self.shard.keeps(t.url)]
        discovered = [t for t in discovered if self.shard.keeps(t.url)]
        self.targets = (*configured, *discovered)
        self.state.record_targets({"config": len(configured), "files": len(discovered)},
                                  (self.shard.index, self.shard.count))
        clients: dict[str, TargetClient] = {}
        for target in self.targets:
            old = self.clients.get(target.name)
            keep = old is not None and old.target == target and not (renew_tls and target.tls_config)
            clients[target.name] = old if keep else self._client(target)
        self.clients = clients
        self.runner.keep_gates(set(clients))
        self.state.set_targets({t.name: t.enabled_probes() for t in self.targets})
        self.history.keep((t.name, kind) for t in self.targets for kind in t.enabled_probes())
        plans = {}
        for target in self.targets:
            for kind in (*SCRAPE_KINDS, *target.enabled_probes()):
                schedule = config.schedules.for_kind(kind)
                plans[(target.name, kind)] = Plan(schedule.interval, schedule.timeout)
        self.scheduler.sync(plans)

    def _record_discovery(self) -> None:
        discovery = self.discovery
        self.state.record_targets_files(discovery.errors_total,
                                        discovery.last_read_ok if discovery.patterns else None)

    def _client(self, target: TargetConfig) -> TargetClient:
        if self.session is None:
            raise RuntimeError("the daemon's HTTP session is made in start(); no client before that")
        return TargetClient(self.session, target, self.tls_contexts.get(target.tls_config))

    async def reload(self) -> tuple[bool, str]:
        """Re-reads the config file; on any error the running config stays and the error is reported."""
        async with self._reload_lock:
            if not self.config_path:
                return False, "no config file to reload"
            try:
                config = await asyncio.to_thread(load_config, self.config_path)
                tls_contexts = await asyncio.to_thread(
                    tls.contexts_for, [target.tls_config for target in config.targets])
            except tls.TLSFileError as exc:  # a file changed between the check and now
                self.state.record_reload(False)
                log.error("config reload failed", reason="invalid_config", error=f"tls_config.{exc.field}: {exc}",
                          path=self.config_path)
                return False, f"{self.config_path}: tls_config.{exc.field}: {exc}"
            except ConfigError as exc:
                self.state.record_reload(False)
                log.error("config reload failed", reason="invalid_config", error=str(exc), path=self.config_path)
                return False, str(exc)
            for setting in settings_needing_restart(self.config, config):
                log.warning("config change needs a restart", setting=setting, reason="restart_required",
                            path=self.config_path)
            discovery = None
            if config.targets_files != self.discovery.patterns:
                discovery = TargetsFiles(config.targets_files)
                await asyncio.to_thread(discovery.refresh)
            self.apply(config, discovery, tls_contexts)
            self.state.record_reload(True)
            log.info("config reloaded", path=self.config_path, targets=len(self.targets), shard=str(self.shard))
            return True, f"reloaded {len(self.targets)} targets"

    # --- runs -----------------------------------------------------------------------------------
    async def run_job(self, target: str, kind: str, timeout: float) -> None:
        """One scheduled run; whatever happens ends as a result delivered to the sinks."""
        client = self.clients.get(target)
        if client is None:
            return
        deliver(await self.runner.run(client, kind, timeout), self.sinks, self.state.internal_errors)

    def run_crashed(self, target: str, kind: str, exc: BaseException) -> None:
        """The scheduler's last resort (run_job itself failed): counted, logged, and a failed result
        recorded so that the run's signals do not freeze."""
        detail = self.state.internal_errors.report("scheduler", exc, target, kind)
        result = ProbeResult(target=target, probe=kind, success=False, started_at=time.time(), duration_seconds=0.0,
                             reason="bad_response", detail=detail, step="internal")
        deliver(result, self.sinks, self.state.internal_errors)



def settings_needing_restart(old: Config, new: Config) -> list[str]:
    """Settings a reload does not apply (the socket, TLS, logging and history are set up at start):
    reported, so that a changed one is not silently ignored. Basic auth users do apply on reload."""
    settings = ["listen", "log_format", "log_level", "history_size", "history_failures_size", "history_max_results",
                "history_max_mib"]
    changed = [f"exporter.{name}" for name in settings
               if getattr(old.exporter, name) != getattr(new.exporter, name)]
    for name in ("tls_cert_file", "tls_key_file"):
        if getattr(old.exporter.web, name) != getattr(new.exporter.web, name):
            changed.append(f"exporter.web.{name}")
    return changed


async def serve(config: Config, config_path: Optional[str], host: str, port: int,
                shard: Optional[str] = None) -> int:
    """Runs the daemon and its web server until SIGTERM/SIGINT; SIGHUP reloads the config."""
    daemon = Daemon(config, config_path, shard)
    await daemon.start()
    runner = await start_server(daemon, host, port)
    log.info("exporter listening", address=f"{host}:{port}", targets=len(daemon.targets), shard=str(daemon.shard),
             event_loop=type(asyncio.get_running_loop()).__module__.split(".")[0])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task] = set()  # referenced until done, so a reload is never garbage-collected

    def on_sighup() -> None:
        task = asyncio.create_task(daemon.reload(), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    await stop.wait()
    grace = daemon.config.exporter.shutdown_grace
    log.info("shutting down", reason="signal", grace_seconds=grace)
    daemon.ready = False
    # Stop scheduling and stop listening at once; scheduled runs and /probe requests in flight get up to
    # `grace` to finish, then are cancelled. The shared session closes last, once nothing uses it.
    await asyncio.gather(daemon.scheduler.shutdown(grace), runner.cleanup())
    # A reload still running (SIGHUP) is cancelled and awaited: shutdown ends every task it started.
    for task in reloads:
        task.cancel()
    if reloads:
        await asyncio.wait(reloads, timeout=5.0)
    await daemon.stop(grace=0)
    log.info("stopped")
    return 0


def main(config_path: str, listen: Optional[str] = None, log_format: Optional[str] = None,
         shard: Optional[str] = None) -> int:
    config = load_config_or_report(config_path)
    if config is None:
        print("refusing to start with an invalid config", file=sys.stderr)
        return 2
    try:
        effective_shard(shard, config.exporter.shard)
    except ShardError as exc:
        print(f"--shard: {exc}", file=sys.stderr)
        return 2
    logs.setup(log_format or config.exporter.log_format, config.exporter.log_level)
    host, _, port = (listen or config.exporter.listen).rpartition(":")
    if not port.isdigit():
        print(f"--listen: expected HOST:PORT, got {listen!r}", file=sys.stderr)
        return 2
    try:
        websecurity.ssl_context(config.exporter.web)
    except websecurity.WebConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    return eventloop.run(serve(config, config_path, host.strip("[]") or "0.0.0.0", int(port), shard))
