"""The one place where state and results become Prometheus metrics (names: conventions.md).

`/metrics` must stay fast with hundreds of targets: each target's lines are rendered when its state changes (one section for its scraped state, one per probe
kind) and kept; a scrape only joins the kept text family by family. So `/metrics` costs the same whether
the targets changed or not, and never waits on a target. Sample lines are the same in the Prometheus
text format and in OpenMetrics; only the family headers differ.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from typing import Iterable, Optional

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.utils import floatToGoString

from exporter import __version__
from exporter.kinds import KINDS, is_scrape
from exporter.results import ProbeResult
from exporter.state import ExporterState, Histogram, ProbeStats, TargetState

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@dataclass(frozen=True)
class Family:
    name: str  # the OpenMetrics family name: counters without `_total`
    type: str  # gauge | counter | histogram
    help: str

    def header(self, openmetrics: bool) -> str:
        name = self.name + "_total" if self.type == "counter" and not openmetrics else self.name
        return f"# HELP {name} {self.help}\n# TYPE {name} {self.type}\n"


FAMILIES = [Family(*spec) for spec in (
    # target state (conventions.md, "Target state")
    ("whoasr_up", "gauge", "1 if the last /health scrape answered 200 with parseable JSON."),
    ("whoasr_healthy", "gauge", "1 if the last /health answer said status healthy."),
    ("whoasr_scrape_duration_seconds", "gauge", "How long the last scrape of the endpoint took."),
    ("whoasr_scrape_errors", "counter", "Failed scrapes by reason."),
    ("whoasr_scrape_skipped", "counter",
     "Scrapes not started: the previous one still ran, or probes held the gate until 2 s before its deadline."),
    ("whoasr_scrape_dropped_models", "counter",
     "Model names in answers not made label values: beyond whoAsr's model types and 16 other names per target."),
    ("whoasr_last_scrape_timestamp_seconds", "gauge", "When the last scrape of the endpoint finished."),
    ("whoasr_info", "gauge", "1; the detected API generation and the server's version."),
    ("whoasr_model_loaded", "gauge", "1 if the model type is loaded, 0 if not."),
    ("whoasr_models_loaded", "gauge", "Number of loaded models, as the server reports it."),
    ("whoasr_system_cpu_usage_ratio", "gauge", "Server-reported CPU use, 0..1."),
    ("whoasr_system_memory_usage_ratio", "gauge", "Server-reported memory use, 0..1."),
    ("whoasr_system_memory_total_bytes", "gauge", "Server-reported total memory."),
    ("whoasr_system_memory_available_bytes", "gauge", "Server-reported available memory."),
    ("whoasr_system_disk_usage_ratio", "gauge", "Server-reported disk use, 0..1."),
    ("whoasr_active_connections", "gauge", "Server-reported active connections."),
    ("whoasr_uptime_seconds", "gauge", "Server-reported uptime."),
    ("whoasr_model_memory_bytes", "gauge", "Server-reported memory used by a model."),
    ("whoasr_model_requests", "counter", "Server-reported requests served by a model."),
    # synthetic probes
    ("whoasr_probe_info", "gauge", "1 for each probe scheduled on a target, with the model it needs."),
    ("whoasr_probe_success", "gauge", "1 if the last run passed every check."),
    ("whoasr_probe_duration_seconds", "histogram", "Wall time of each run, end to end."),
    ("whoasr_probe_runs", "counter", "Runs started and finished."),
    ("whoasr_probe_failures", "counter", "Failed runs, by the first reason."),
    ("whoasr_probe_skipped", "counter",
     "Runs not started: the previous one still ran, or a /health held the gate past half the run's timeout."),
    ("whoasr_probe_last_run_timestamp_seconds", "gauge", "When the last run finished."),
    ("whoasr_probe_last_success_timestamp_seconds", "gauge", "When the last passing run finished."),
    ("whoasr_probe_last_failure_info", "gauge", "1 while the last run failed, with its reason."),
    ("whoasr_probe_audio_seconds", "counter", "Audio sent in probes."),
    ("whoasr_probe_processing_seconds", "counter", "Server-side time spent on that audio."),
    ("whoasr_probe_real_time_factor", "gauge", "Processing time / audio duration of the last run."),
    ("whoasr_probe_reference_characters", "counter", "Reference characters compared."),
    ("whoasr_probe_character_errors", "counter", "Character errors (substitutions, deletions, insertions)."),
    ("whoasr_probe_character_error_rate", "gauge", "Character error rate of the last run."),
    # the voice path
    ("whoasr_stream_connect_seconds", "histogram", "TCP + WebSocket handshake."),
    ("whoasr_stream_first_result_seconds", "histogram", "Start of speech -> first recognition_result."),
    ("whoasr_stream_result_lag_seconds", "histogram",
     "Per result: arrival minus the instant the audio it was computed from had been fully spoken."),
    ("whoasr_stream_final_result_seconds", "histogram", "stop_recording sent -> end of session."),
    ("whoasr_stream_partial_results", "counter", "Partial results received."),
)]


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def labels(**pairs: str) -> str:
    return ",".join(f'{key}="{escape(str(value))}"' for key, value in pairs.items())


class Lines:
    """Sample lines of one section, grouped by family."""

    def __init__(self) -> None:
        self.by_family: dict[str, list[str]] = {}

    def add(self, family: str, label_text: str, value: float, suffix: str = "") -> None:
        braces = f"{{{label_text}}}" if label_text else ""
        self.by_family.setdefault(family, []).append(f"{family}{suffix}{braces} {floatToGoString(value)}\n")

    def counter(self, family: str, label_text: str, value: float) -> None:
        self.add(family, label_text, value, "_total")

    def histogram(self, family: str, label_text: str, histogram: Histogram) -> None:
        out = self.by_family.setdefault(family, [])
        prefix = label_text + "," if label_text else ""
        for bound, count in histogram.cumulative():
            out.append(f'{family}_bucket{{{prefix}le="{floatToGoString(bound)}"}} {floatToGoString(count)}\n')
        self.add(family, label_text, histogram.count, "_count")
        self.add(family, label_text, histogram.sum, "_sum")

    def joined(self) -> dict[str, str]:
        return {family: "".join(lines) for family, lines in self.by_family.items()}


def target_state_lines(target: TargetState, target_labels: Optional[dict[str, str]] = None) -> Lines:
    """The scraped state of one target; `target_labels` default to {target: name}."""
    base = target_labels if target_labels is not None else {"target": target.name}
    tl = labels(**base)
    sep = "," if tl else ""
    out = Lines()
    for endpoint, state in sorted(target.endpoints.items()):
        el = f"{tl}{sep}{labels(endpoint=endpoint)}"
        if state.duration_seconds is not None:
            out.add("whoasr_scrape_duration_seconds", el, state.duration_seconds)
            out.add("whoasr_last_scrape_timestamp_seconds", el, state.last_scrape_timestamp)
        for reason, count in sorted(state.errors.items()):
            out.counter("whoasr_scrape_errors", f"{el},{labels(reason=reason)}", count)
        out.counter("whoasr_scrape_skipped", el, state.skipped_total)  # from 0: its label set is known
        if state.dropped_models_total:
            out.counter("whoasr_scrape_dropped_models", el, state.dropped_models_total)
    if target.up is not None:
        out.add("whoasr_up", tl, 1.0 if target.up else 0.0)
    if target.api:
        out.add("whoasr_info", f"{tl}{sep}{labels(api=target.api, version=target.version or '')}", 1.0)
    for model, is_loaded in sorted((target.models_loaded() or {}).items()):
        out.add("whoasr_model_loaded", f"{tl}{sep}{labels(model=model)}", 1.0 if is_loaded else 0.0)
    if (count := target.total_loaded()) is not None:
        out.add("whoasr_models_loaded", tl, count)
    health = target.health
    if health is not None:
        out.add("whoasr_healthy", tl, 1.0 if health.status == "healthy" else 0.0)
        for family, value in (
            ("whoasr_system_cpu_usage_ratio", health.cpu_ratio),
            ("whoasr_system_memory_usage_ratio", health.memory_ratio),
            ("whoasr_system_memory_total_bytes", health.memory_total_bytes),
            ("whoasr_system_memory_available_bytes", health.memory_available_bytes),
            ("whoasr_system_disk_usage_ratio", health.disk_ratio),
            ("whoasr_active_connections", health.active_connections),
            ("whoasr_uptime_seconds", health.uptime_seconds),
        ):
            if value is not None:
                out.add(family, tl, value)
        for model, size in sorted(health.model_memory_bytes.items()):
            out.add("whoasr_model_memory_bytes", f"{tl}{sep}{labels(model=model)}", size)
        for model, requests in sorted(health.model_requests.items()):
            out.counter("whoasr_model_requests", f"{tl}{sep}{labels(model=model)}", requests)
    for kind in target.scheduled_probes:
        stats = target.probes.get(kind)
        if stats is None or stats.applicable:
            out.add("whoasr_probe_info", f"{tl}{sep}{labels(probe=kind, model=KINDS[kind].model)}", 1.0)
    return out


def probe_lines(target_name: str, kind: str, stats: ProbeStats) -> Lines:
    out = Lines()
    if not stats.applicable:
        return out
    key = labels(target=target_name, probe=kind)
    out.counter("whoasr_probe_skipped", key, stats.skipped_total)  # from 0: its label set is known
    if not stats.runs_total:
        return out
    out.add("whoasr_probe_success", key, 1.0 if stats.success else 0.0)
    out.histogram("whoasr_probe_duration_seconds", key, stats.duration)
    out.counter("whoasr_probe_runs", key, stats.runs_total)
    for reason, count in sorted(stats.failures_total.items()):
        out.counter("whoasr_probe_failures", f"{key},{labels(reason=reason)}", count)
    out.add("whoasr_probe_last_run_timestamp_seconds", key, stats.last_run_timestamp)
    if stats.last_success_timestamp is not None:
        out.add("whoasr_probe_last_success_timestamp_seconds", key, stats.last_success_timestamp)
    if stats.last_failure_reason:
        out.add("whoasr_probe_last_failure_info", f"{key},{labels(reason=stats.last_failure_reason)}", 1.0)
    if stats.real_time_factor is not None:
        out.counter("whoasr_probe_audio_seconds", key, stats.audio_seconds_total)
        out.counter("whoasr_probe_processing_seconds", key, stats.processing_seconds_total)
        out.add("whoasr_probe_real_time_factor", key, stats.real_time_factor)
    if stats.character_error_rate is not None:
        out.counter("whoasr_probe_reference_characters", key, stats.reference_characters_total)
        out.counter("whoasr_probe_character_errors", key, stats.character_errors_total)
        out.add("whoasr_probe_character_error_rate", key, stats.character_error_rate)
    if stats.stream is not None:
        tl = labels(target=target_name)
        out.histogram("whoasr_stream_connect_seconds", tl, stats.stream.connect)
        out.histogram("whoasr_stream_first_result_seconds", tl, stats.stream.first_result)
        out.histogram("whoasr_stream_result_lag_seconds", tl, stats.stream.result_lag)
        out.histogram("whoasr_stream_final_result_seconds", tl, stats.stream.final_result)
        out.counter("whoasr_stream_partial_results", tl, stats.stream.partial_results_total)
    return out


def render_families(sections: Iterable[dict[str, str]], openmetrics: bool,
                    families: list[Family] = FAMILIES) -> list[str]:
    sections = list(sections)
    parts = []
    for family in families:
        body = "".join(section.get(family.name, "") for section in sections)
        if body:
            parts.append(family.header(openmetrics))
            parts.append(body)
    return parts


class Exposition:
    """Keeps every target's rendered text current and serves the whole page on demand."""

    def __init__(self, state: ExporterState, process_registry: Optional[CollectorRegistry] = None):
        self.state = state
        self.process_registry = process_registry
        self._sections: dict[str, dict[str, dict[str, str]]] = {}  # target -> section -> family -> text
        self._merged: dict[str, dict[str, str]] = {}  # target -> family -> text
        state.listeners.append(self.changed)
        for name in list(state.targets):
            self.changed(name, None)

    def changed(self, target_name: str, section: Optional[str]) -> None:
        """Re-renders a section of one target (None: all of it) right after its state changed."""
        target = self.state.targets.get(target_name)
        if target is None:
            self._sections.pop(target_name, None)
            self._merged.pop(target_name, None)
            return
        sections = self._sections.setdefault(target_name, {})
        if section is None:
            sections.clear()
            sections["state"] = target_state_lines(target).joined()
            for kind, stats in target.probes.items():
                sections[kind] = probe_lines(target_name, kind, stats).joined()
        elif section == "state":
            sections["state"] = target_state_lines(target).joined()
        elif section in target.probes:
            sections[section] = probe_lines(target_name, section, target.probes[section]).joined()
        else:
            sections.pop(section, None)
        merged: dict[str, str] = {}
        for rendered in sections.values():
            for family, text in rendered.items():
                merged[family] = merged.get(family, "") + text
        self._merged[target_name] = merged

    def render(self, openmetrics: bool = False) -> bytes:
        targets = [self._merged[name] for name in self.state.targets if name in self._merged]
        parts = render_families(targets, openmetrics)
        parts.append(self._exporter_text(openmetrics))
        if self.process_registry is not None:
            process = (generate_openmetrics if openmetrics else generate_latest)(self.process_registry).decode()
            parts.append(process.replace("# EOF\n", ""))
        if openmetrics:
            parts.append("# EOF\n")
        return "".join(parts).encode()

    def _exporter_text(self, openmetrics: bool) -> str:
        state = self.state
        out = Lines()
        out.add("whoasr_exporter_build_info", labels(version=__version__, python_version=platform.python_version()),
                1.0)
        if state.config_reload_successful is not None:
            out.add("whoasr_exporter_config_last_reload_successful", "", 1.0 if state.config_reload_successful else 0.0)
        if state.config_reload_success_timestamp is not None:
            out.add("whoasr_exporter_config_last_reload_success_timestamp_seconds", "",
                    state.config_reload_success_timestamp)
        out.histogram("whoasr_exporter_scheduler_lag_seconds", "", state.scheduler_lag)
        for stage, count in sorted(state.internal_errors.counts.items()):  # from 0: the stages are a closed set
            out.counter("whoasr_exporter_internal_errors", labels(stage=stage), count)
        for source, count in sorted(state.targets_by_source.items()):
            out.add("whoasr_exporter_targets", labels(source=source), count)
        index, count = state.shard
        out.add("whoasr_exporter_shard_info", labels(shard=str(index), shards=str(count)), 1.0)
        if state.targets_files_last_read_ok is not None:
            out.add("whoasr_exporter_targets_files_last_read_successful", "",
                    1.0 if state.targets_files_last_read_ok else 0.0)
            out.counter("whoasr_exporter_targets_file_errors", "", state.targets_file_errors_total)
        return "".join(render_families([out.joined()], openmetrics, EXPORTER_FAMILIES))


EXPORTER_FAMILIES = [Family(*spec) for spec in (
    ("whoasr_exporter_build_info", "gauge", "1; the exporter's version and Python version."),
    ("whoasr_exporter_config_last_reload_successful", "gauge", "1 if the last config (re)load succeeded."),
    ("whoasr_exporter_config_last_reload_success_timestamp_seconds", "gauge",
     "When the config was last loaded successfully."),
    ("whoasr_exporter_scheduler_lag_seconds", "histogram", "How late scheduled runs started compared to their due time."),
    ("whoasr_exporter_internal_errors", "counter",
     "Bugs of the exporter by stage (scrape, probe, record, scheduler); each such run ended as a failure."),
    ("whoasr_exporter_targets", "gauge", "Targets this exporter probes (after sharding), by source: config or files."),
    ("whoasr_exporter_shard_info", "gauge", "1; this exporter's shard and the number of shards (0/1: not sharded)."),
    ("whoasr_exporter_targets_files_last_read_successful", "gauge",
     "1 if every targets file was valid when last read (a bad one keeps its last good targets)."),
    ("whoasr_exporter_targets_file_errors", "counter", "Targets files that could not be read or parsed."),
)]


def wants_openmetrics(accept: str) -> bool:
    return "application/openmetrics-text" in accept


def process_registry() -> CollectorRegistry:
    """The process, platform and GC metrics of prometheus-client, appended to /metrics."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


# --- one on-demand run (/probe) -------------------------------------------------------------------
# Gauges only (a single run has no history to count) and no target label: Prometheus adds it by
# relabelling, as for blackbox_exporter. A scrape module answers with the scheduled target-state names.
# One name has one type everywhere: where /metrics has a counter or histogram of a measure (duration,
# audio, stream timings), the gauge of one run is `*_run_*`, so both can live in one Prometheus.
RESULT_FAMILIES = [Family(*spec) for spec in (
    ("whoasr_probe_success", "gauge", "1 if the run passed every check."),
    ("whoasr_probe_run_duration_seconds", "gauge", "Wall time of the run, end to end."),
    ("whoasr_probe_failure_info", "gauge", "1, with the reason the run failed."),
    ("whoasr_probe_applicable", "gauge", "0: this probe does not apply to the target (no success series then)."),
    ("whoasr_probe_http_status_code", "gauge", "HTTP status of the answer."),
    ("whoasr_probe_run_audio_seconds", "gauge", "Audio sent in the run."),
    ("whoasr_probe_run_processing_seconds", "gauge", "Server-side time spent on that audio."),
    ("whoasr_probe_real_time_factor", "gauge", "Processing time / audio duration."),
    ("whoasr_probe_character_error_rate", "gauge", "Character error rate of the transcript."),
    ("whoasr_stream_run_connect_seconds", "gauge", "TCP + WebSocket handshake."),
    ("whoasr_stream_run_first_result_seconds", "gauge", "Start of speech -> first recognition_result."),
    ("whoasr_stream_run_result_lag_seconds", "gauge",
     "The largest result lag of the run (see whoasr_stream_result_lag_seconds' help)."),
    ("whoasr_stream_run_final_result_seconds", "gauge", "stop_recording sent -> end of session."),
    ("whoasr_stream_run_partial_results", "gauge", "Partial results received."),
    ("whoasr_probe_not_started", "gauge",
     "1: the run could not start in time (the target's /health gate was held): no verdict."),
    ("whoasr_probe_result_age_seconds", "gauge",
     "Seconds since the /health verdict answered was taken: one that could not start answers the last one."),
)]


# A scrape module answers with the run's gauges and the target-state families (built once, not per request).
SCRAPE_RESULT_FAMILIES = RESULT_FAMILIES + [f for f in FAMILIES if f.name not in {r.name for r in RESULT_FAMILIES}]


def render_result(result: ProbeResult, openmetrics: bool = False, age_seconds: Optional[float] = None) -> bytes:
    """One run's answer to /probe. A run that did not start has no verdict: neither success nor failure
    (Prometheus records a gap, not a down target). `age_seconds`: the result is an earlier run's."""
    out = Lines()
    if result.skipped:
        out.add("whoasr_probe_not_started", "", 1.0)
        out.add("whoasr_probe_run_duration_seconds", "", result.duration_seconds)
        return _render_answer([out.joined()], openmetrics, RESULT_FAMILIES)
    if age_seconds is not None:
        out.add("whoasr_probe_result_age_seconds", "", age_seconds)
    if result.applicable:
        out.add("whoasr_probe_success", "", 1.0 if result.success else 0.0)
    else:
        out.add("whoasr_probe_applicable", "", 0.0)
    out.add("whoasr_probe_run_duration_seconds", "", result.duration_seconds)
    if result.reason:
        out.add("whoasr_probe_failure_info", labels(reason=result.reason), 1.0)
    if result.http_status is not None:
        out.add("whoasr_probe_http_status_code", "", result.http_status)
    sections = [out.joined()]
    families = list(RESULT_FAMILIES)
    if is_scrape(result.probe):
        state = ExporterState()
        state.set_targets({result.target: ()})
        state.record_scrape(result)
        sections.append(target_state_lines(state.targets[result.target], target_labels={}).joined())
        families = SCRAPE_RESULT_FAMILIES
    else:
        for family, value in (
            ("whoasr_probe_run_audio_seconds", result.audio_seconds),
            ("whoasr_probe_run_processing_seconds", result.processing_seconds),
            ("whoasr_probe_real_time_factor", result.real_time_factor),
            ("whoasr_probe_character_error_rate", result.cer),
        ):
            if value is not None:
                out.add(family, "", value)
        if result.stream is not None:
            for family, value in (
                ("whoasr_stream_run_connect_seconds", result.stream.connect_seconds),
                ("whoasr_stream_run_first_result_seconds", result.stream.first_result_seconds),
                ("whoasr_stream_run_result_lag_seconds", max(result.stream.result_lags, default=None)),
                ("whoasr_stream_run_final_result_seconds", result.stream.final_result_seconds),
                ("whoasr_stream_run_partial_results", float(result.stream.partial_results)),
            ):
                if value is not None:
                    out.add(family, "", value)
        sections = [out.joined()]
    return _render_answer(sections, openmetrics, families)


def _render_answer(sections: list[dict[str, str]], openmetrics: bool, families: list[Family]) -> bytes:
    parts = render_families(sections, openmetrics, families)
    if openmetrics:
        parts.append("# EOF\n")
    return "".join(parts).encode()
