"""Prometheus registries: the daemon's process metrics, and one on-demand result (/probe).

The scheduled state's own metrics are rendered by exposition.py, cached per target.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from exporter.results import ProbeResult, ScrapeResult


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def _counter(name: str, doc: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=labels)


def process_registry() -> CollectorRegistry:
    """The process, platform and GC metrics of prometheus-client; the state's own are in exposition.py."""
    registry = CollectorRegistry(auto_describe=False)
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
            yield from _scrape_state(result)
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


def _scrape_state(result: ScrapeResult) -> Iterator[Metric]:
    """What an on-demand health/model_info scrape saw, under the scheduled names minus the target label
    (Prometheus adds the instance by relabelling, as with blackbox_exporter)."""
    if result.api:
        version = result.health.version if result.health and result.health.version else ""
        info = _gauge("whoasr_info", "1; the detected API generation and the server's version.", ["api", "version"])
        info.add_metric([result.api, version], 1.0)
        yield info
    state = result.model_info or result.health
    if state is not None:
        if state.models_loaded:
            loaded = _gauge("whoasr_model_loaded", "1 if the model type is loaded, 0 if not.", ["model"])
            for model, is_loaded in sorted(state.models_loaded.items()):
                loaded.add_metric([model], 1.0 if is_loaded else 0.0)
            yield loaded
        if state.total_loaded is not None:
            yield _single("whoasr_models_loaded", "Number of loaded models, as the server reports it.",
                          state.total_loaded)
    health = result.health
    if health is None:
        return
    yield _single("whoasr_healthy", "1 if the /health answer said status healthy.",
                  1.0 if health.status == "healthy" else 0.0)
    for name, doc, value in (
        ("whoasr_system_cpu_usage_ratio", "Server-reported CPU use, 0..1.", health.cpu_ratio),
        ("whoasr_system_memory_usage_ratio", "Server-reported memory use, 0..1.", health.memory_ratio),
        ("whoasr_system_memory_total_bytes", "Server-reported total memory.", health.memory_total_bytes),
        ("whoasr_system_memory_available_bytes", "Server-reported available memory.", health.memory_available_bytes),
        ("whoasr_system_disk_usage_ratio", "Server-reported disk use, 0..1.", health.disk_ratio),
        ("whoasr_active_connections", "Server-reported active connections.", health.active_connections),
        ("whoasr_uptime_seconds", "Server-reported uptime.", health.uptime_seconds),
    ):
        if value is not None:
            yield _single(name, doc, value)
