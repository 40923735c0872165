"""The one place where state and results become Prometheus metrics (names: conventions.md).

A custom collector reads `ExporterState` at scrape time: no locks, no I/O, no waiting on targets.
"""

from __future__ import annotations

import platform
from typing import Iterable, Iterator, Optional

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from exporter import __version__
from exporter.probes import PROBE_MODELS
from exporter.results import ProbeResult, ScrapeResult
from exporter.state import ExporterState, Histogram, ProbeStats, TargetState


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def _counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=labels)


def _histogram(family: HistogramMetricFamily, labels: list[str], histogram: Histogram) -> None:
    buckets = [(floatToGoString(bound), count) for bound, count in histogram.cumulative()]
    family.add_metric(labels, buckets, histogram.sum)


class StateCollector(Collector):
    """Exposes everything in ExporterState; a target or probe that is gone has no series."""

    def __init__(self, state: ExporterState):
        self.state = state

    def collect(self) -> Iterator[Metric]:
        targets = list(self.state.targets.values())
        yield from self._target_state(targets)
        yield from self._probes(targets)
        yield from self._exporter()

    # --- target state ---------------------------------------------------------------------------
    def _target_state(self, targets: list[TargetState]) -> Iterator[Metric]:
        up = _gauge("whoasr_up", "1 if the last /health scrape answered 200 with parseable JSON.", ["target"])
        healthy = _gauge("whoasr_healthy", "1 if the last /health answer said status healthy.", ["target"])
        duration = _gauge("whoasr_scrape_duration_seconds", "How long the last scrape of the endpoint took.",
                          ["target", "endpoint"])
        errors = _counter("whoasr_scrape_errors", "Failed scrapes by reason.", ["target", "endpoint", "reason"])
        skipped = _counter("whoasr_scrape_skipped",
                           "Scrapes not started because the previous one was still running.", ["target", "endpoint"])
        last = _gauge("whoasr_last_scrape_timestamp_seconds", "When the last scrape of the endpoint finished.",
                      ["target", "endpoint"])
        info = _gauge("whoasr_info", "1; the detected API generation and the server's version.",
                      ["target", "api", "version"])
        loaded = _gauge("whoasr_model_loaded", "1 if the model type is loaded, 0 if not.", ["target", "model"])
        total_loaded = _gauge("whoasr_models_loaded", "Number of loaded models, as the server reports it.",
                              ["target"])
        cpu = _gauge("whoasr_system_cpu_usage_ratio", "Server-reported CPU use, 0..1.", ["target"])
        memory = _gauge("whoasr_system_memory_usage_ratio", "Server-reported memory use, 0..1.", ["target"])
        memory_total = _gauge("whoasr_system_memory_total_bytes", "Server-reported total memory.", ["target"])
        memory_available = _gauge("whoasr_system_memory_available_bytes", "Server-reported available memory.",
                                  ["target"])
        disk = _gauge("whoasr_system_disk_usage_ratio", "Server-reported disk use, 0..1.", ["target"])
        connections = _gauge("whoasr_active_connections", "Server-reported active connections.", ["target"])
        uptime = _gauge("whoasr_uptime_seconds", "Server-reported uptime.", ["target"])
        model_memory = _gauge("whoasr_model_memory_bytes", "Server-reported memory used by a model.",
                              ["target", "model"])
        model_requests = _counter("whoasr_model_requests", "Server-reported requests served by a model.",
                                  ["target", "model"])
        for target in targets:
            name = target.name
            for endpoint, state in target.endpoints.items():
                if state.duration_seconds is not None:
                    duration.add_metric([name, endpoint], state.duration_seconds)
                    last.add_metric([name, endpoint], state.last_scrape_timestamp)
                for reason, count in state.errors.items():
                    errors.add_metric([name, endpoint, reason], count)
                if state.skipped_total:
                    skipped.add_metric([name, endpoint], state.skipped_total)
            if target.up is not None:
                up.add_metric([name], 1.0 if target.up else 0.0)
            if target.api:
                version = target.health.version if target.health and target.health.version else ""
                info.add_metric([name, target.api, version], 1.0)
            for model, is_loaded in sorted((target.models_loaded() or {}).items()):
                loaded.add_metric([name, model], 1.0 if is_loaded else 0.0)
            if (count := target.total_loaded()) is not None:
                total_loaded.add_metric([name], count)
            health = target.health
            if health is None:
                continue
            healthy.add_metric([name], 1.0 if health.status == "healthy" else 0.0)
            for family, value in (
                (cpu, health.cpu_ratio), (memory, health.memory_ratio), (memory_total, health.memory_total_bytes),
                (memory_available, health.memory_available_bytes), (disk, health.disk_ratio),
                (connections, health.active_connections), (uptime, health.uptime_seconds),
            ):
                if value is not None:
                    family.add_metric([name], value)
            for model, size in sorted(health.model_memory_bytes.items()):
                model_memory.add_metric([name, model], size)
            for model, requests in sorted(health.model_requests.items()):
                model_requests.add_metric([name, model], requests)
        yield from (up, healthy, duration, errors, skipped, last, info, loaded, total_loaded, cpu, memory,
                    memory_total, memory_available, disk, connections, uptime, model_memory, model_requests)

    # --- probes ---------------------------------------------------------------------------------
    def _probes(self, targets: list[TargetState]) -> Iterator[Metric]:
        labels = ["target", "probe"]
        success = _gauge("whoasr_probe_success", "1 if the last run passed every check.", labels)
        duration = HistogramMetricFamily("whoasr_probe_duration_seconds", "Wall time of each run, end to end.",
                                         labels=labels)
        runs = _counter("whoasr_probe_runs", "Runs started and finished.", labels)
        failures = _counter("whoasr_probe_failures", "Failed runs, by the first reason.", labels + ["reason"])
        skipped = _counter("whoasr_probe_skipped", "Runs not started because the previous one was still running.",
                           labels)
        last_run = _gauge("whoasr_probe_last_run_timestamp_seconds", "When the last run finished.", labels)
        last_success = _gauge("whoasr_probe_last_success_timestamp_seconds", "When the last passing run finished.",
                              labels)
        failure_info = _gauge("whoasr_probe_last_failure_info",
                              "1 while the last run failed, with its reason.", labels + ["reason"])
        probe_info = _gauge("whoasr_probe_info", "1 for each probe scheduled on a target, with the model it needs.",
                            labels + ["model"])
        audio = _counter("whoasr_probe_audio_seconds", "Audio sent in probes.", labels)
        processing = _counter("whoasr_probe_processing_seconds", "Server-side time spent on that audio.", labels)
        rtf = _gauge("whoasr_probe_real_time_factor", "Processing time / audio duration of the last run.", labels)
        reference = _counter("whoasr_probe_reference_characters", "Reference characters compared.", labels)
        char_errors = _counter("whoasr_probe_character_errors", "Character errors (S+D+I) found.", labels)
        cer = _gauge("whoasr_probe_character_error_rate", "Character error rate of the last run.", labels)
        connect = HistogramMetricFamily("whoasr_stream_connect_seconds", "TCP + WebSocket handshake.",
                                        labels=["target"])
        first = HistogramMetricFamily("whoasr_stream_first_result_seconds",
                                      "First audio frame sent -> first recognition_result.", labels=["target"])
        final = HistogramMetricFamily("whoasr_stream_final_result_seconds",
                                      "stop_recording sent -> end of session.", labels=["target"])
        partials = _counter("whoasr_stream_partial_results", "Partial results received.", ["target"])
        for target in targets:
            for kind in target.scheduled_probes:
                stats = target.probes.get(kind)
                if stats is None or stats.applicable:
                    probe_info.add_metric([target.name, kind, PROBE_MODELS[kind]], 1.0)
            for kind, stats in target.probes.items():
                if not stats.applicable:
                    continue
                key = [target.name, kind]
                self._probe_stats(key, stats, success, duration, runs, failures, skipped, last_run, last_success,
                                  failure_info, audio, processing, rtf, reference, char_errors, cer)
                if stats.stream is not None and stats.runs_total:
                    _histogram(connect, [target.name], stats.stream.connect)
                    _histogram(first, [target.name], stats.stream.first_result)
                    _histogram(final, [target.name], stats.stream.final_result)
                    partials.add_metric([target.name], stats.stream.partial_results_total)
        yield from (success, duration, runs, failures, skipped, last_run, last_success, failure_info, probe_info,
                    audio, processing, rtf, reference, char_errors, cer, connect, first, final, partials)

    @staticmethod
    def _probe_stats(key, stats: ProbeStats, success, duration, runs, failures, skipped, last_run, last_success,
                     failure_info, audio, processing, rtf, reference, char_errors, cer) -> None:
        if stats.skipped_total:
            skipped.add_metric(key, stats.skipped_total)
        if not stats.runs_total:
            return
        success.add_metric(key, 1.0 if stats.success else 0.0)
        _histogram(duration, key, stats.duration)
        runs.add_metric(key, stats.runs_total)
        for reason, count in sorted(stats.failures_total.items()):
            failures.add_metric(key + [reason], count)
        last_run.add_metric(key, stats.last_run_timestamp)
        if stats.last_success_timestamp is not None:
            last_success.add_metric(key, stats.last_success_timestamp)
        if stats.last_failure_reason:
            failure_info.add_metric(key + [stats.last_failure_reason], 1.0)
        if stats.real_time_factor is not None:
            audio.add_metric(key, stats.audio_seconds_total)
            processing.add_metric(key, stats.processing_seconds_total)
            rtf.add_metric(key, stats.real_time_factor)
        if stats.character_error_rate is not None:
            reference.add_metric(key, stats.reference_characters_total)
            char_errors.add_metric(key, stats.character_errors_total)
            cer.add_metric(key, stats.character_error_rate)

    # --- the daemon itself ----------------------------------------------------------------------
    def _exporter(self) -> Iterator[Metric]:
        build = _gauge("whoasr_exporter_build_info", "1; the exporter's version and Python version.",
                       ["version", "python_version"])
        build.add_metric([__version__, platform.python_version()], 1.0)
        yield build
        if self.state.config_reload_successful is not None:
            ok = _gauge("whoasr_exporter_config_last_reload_successful",
                        "1 if the last config (re)load succeeded.", [])
            ok.add_metric([], 1.0 if self.state.config_reload_successful else 0.0)
            yield ok
        if self.state.config_reload_success_timestamp is not None:
            when = _gauge("whoasr_exporter_config_last_reload_success_timestamp_seconds",
                          "When the config was last loaded successfully.", [])
            when.add_metric([], self.state.config_reload_success_timestamp)
            yield when
        lag = HistogramMetricFamily("whoasr_exporter_scheduler_lag_seconds",
                                    "How late scheduled runs started compared to their due time.", labels=[])
        _histogram(lag, [], self.state.scheduler_lag)
        yield lag


def build_registry(state: ExporterState) -> CollectorRegistry:
    """The daemon's registry: its state plus the process, platform and GC metrics of prometheus-client."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(state))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class ResultCollector(Collector):
    """One on-demand run (/probe): gauges only, since a fresh registry has no history to count."""

    def __init__(self, result: ProbeResult | ScrapeResult):
        self.result = result

    def collect(self) -> Iterable[Metric]:
        result = self.result
        yield _single("whoasr_probe_success", "1 if the run passed every check.", 1.0 if result.success else 0.0)
        yield _single("whoasr_probe_duration_seconds", "Wall time of the run, end to end.", result.duration_seconds)
        if result.reason:
            reason = InfoMetricFamily("whoasr_probe_failure", "Why the run failed.")
            reason.add_metric([], {"reason": result.reason})
            yield reason
        if isinstance(result, ScrapeResult):
            if result.http_status is not None:
                yield _single("whoasr_probe_http_status_code", "HTTP status of the answer.", result.http_status)
            return
        if not result.applicable:
            yield _single("whoasr_probe_applicable", "0: this probe does not apply to the target.", 0.0)
        if result.http_status is not None:
            yield _single("whoasr_probe_http_status_code", "HTTP status of the answer.", result.http_status)
        for name, doc, value in (
            ("whoasr_probe_audio_seconds", "Audio sent in the run.", result.audio_seconds),
            ("whoasr_probe_processing_seconds", "Server-side time spent on that audio.", result.processing_seconds),
            ("whoasr_probe_real_time_factor", "Processing time / audio duration.", result.real_time_factor),
            ("whoasr_probe_character_error_rate", "Character error rate of the transcript.", result.cer),
        ):
            if value is not None:
                yield _single(name, doc, value)
        stream = result.stream
        if stream is not None:
            for name, doc, value in (
                ("whoasr_stream_connect_seconds", "TCP + WebSocket handshake.", stream.connect_seconds),
                ("whoasr_stream_first_result_seconds", "First audio frame -> first result.",
                 stream.first_result_seconds),
                ("whoasr_stream_final_result_seconds", "stop_recording -> end of session.",
                 stream.final_result_seconds),
                ("whoasr_stream_partial_results", "Partial results received.", float(stream.partial_results)),
            ):
                if value is not None:
                    yield _single(name, doc, value)


def _single(name: str, doc: str, value: Optional[float]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)
