"""What the exporter knows: the latest target state and the accumulated probe statistics.

Results flow in (`record_*`); `/metrics` and the status page read from here and never wait on a target.
Everything is plain Python: the metrics module turns it into Prometheus families at scrape time, so
removing a target removes all of its series at once.
"""

from __future__ import annotations

import bisect
import dataclasses
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import structlog

from exporter.internal_errors import InternalErrors
from exporter.kinds import KINDS, is_scrape
from exporter.labels import MAX_EXTRA_MODELS, ModelNames
from exporter.results import HealthState, ModelInfoState, ProbeResult

log = structlog.get_logger("exporter.state")

INF = float("inf")
PROBE_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
STREAM_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
SCHEDULER_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def with_thresholds(buckets: Iterable[float], *thresholds: float) -> tuple[float, ...]:
    """Adds the configured thresholds as bucket bounds, so SLIs and alerts can read `le` exactly."""
    return tuple(sorted(set(buckets) | {float(t) for t in thresholds}))


class Histogram:
    """A cumulative-bucket histogram accumulator (no Prometheus types here)."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * len(bounds)  # non-cumulative per bucket; +Inf is `count`
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.bounds, value)
        if index < len(self.bounds):
            self.counts[index] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        total, out = 0, []
        for bound, count in zip(self.bounds, self.counts):
            total += count
            out.append((bound, total))
        out.append((INF, self.count))
        return out


@dataclass
class EndpointState:
    duration_seconds: Optional[float] = None
    last_scrape_timestamp: Optional[float] = None
    last_success: Optional[bool] = None
    last_reason: Optional[str] = None
    last_detail: str = ""
    errors: Counter = field(default_factory=Counter)
    skipped_total: int = 0
    dropped_models_total: int = 0  # model names beyond the target's allowance (labels.py)


@dataclass
class StreamStats:
    connect: Histogram
    first_result: Histogram
    final_result: Histogram
    result_lag: Histogram
    partial_results_total: int = 0

    @classmethod
    def empty(cls, buckets: tuple[float, ...], partial_results_total: int = 0) -> "StreamStats":
        return cls(Histogram(buckets), Histogram(buckets), Histogram(buckets), Histogram(buckets),
                   partial_results_total)


@dataclass
class ProbeStats:
    duration: Histogram
    success: Optional[bool] = None
    runs_total: int = 0
    failures_total: Counter = field(default_factory=Counter)
    skipped_total: int = 0
    last_run_timestamp: Optional[float] = None
    last_success_timestamp: Optional[float] = None
    last_failure_reason: Optional[str] = None
    applicable: bool = True
    audio_seconds_total: float = 0.0
    processing_seconds_total: float = 0.0
    real_time_factor: Optional[float] = None
    character_error_rate: Optional[float] = None
    reference_characters_total: int = 0
    character_errors_total: int = 0
    stream: Optional[StreamStats] = None


@dataclass
class TargetState:
    name: str
    api: Optional[str] = None
    version: Optional[str] = None  # bounded (labels.version_label)
    model_names: ModelNames = field(default_factory=ModelNames)  # which model label values it may use
    dropped_models_logged: bool = False
    health: Optional[HealthState] = None  # None until a scrape succeeded, and again after one failed
    model_info: Optional[ModelInfoState] = None
    up: Optional[bool] = None
    endpoints: dict[str, EndpointState] = field(default_factory=dict)
    probes: dict[str, ProbeStats] = field(default_factory=dict)
    scheduled_probes: tuple[str, ...] = ()

    def models_loaded(self) -> Optional[dict[str, bool]]:
        """Loaded flags from the freshest source: /model/info (cheap, frequent), else /health."""
        if self.model_info is not None and self.model_info.models_loaded:
            return self.model_info.models_loaded
        if self.health is not None and self.health.models_loaded:
            return self.health.models_loaded
        return None

    def total_loaded(self) -> Optional[int]:
        if self.model_info is not None and self.model_info.total_loaded is not None:
            return self.model_info.total_loaded
        return self.health.total_loaded if self.health is not None else None


Listener = Callable[[str, Optional[str]], None]  # (target, section: "state" | probe kind | None = all)


class ExporterState:
    def __init__(self, response_time_seconds: float = 5.0, stream_first_result_seconds: float = 2.0):
        self.targets: dict[str, TargetState] = {}
        self.listeners: list[Listener] = []  # told which part of which target changed
        self.config_reload_successful: Optional[bool] = None
        self.config_reload_success_timestamp: Optional[float] = None
        self.scheduler_lag = Histogram(SCHEDULER_LAG_BUCKETS)
        self.internal_errors = InternalErrors()  # the exporter's own bugs, by stage
        self.targets_by_source: dict[str, int] = {}  # targets probed here, by where they came from
        self.shard: tuple[int, int] = (0, 1)
        self.targets_file_errors_total = 0
        self.targets_files_last_read_ok: Optional[bool] = None  # None: no targets_files configured
        self.probe_buckets = with_thresholds(PROBE_DURATION_BUCKETS, response_time_seconds)
        self.stream_buckets = with_thresholds(STREAM_BUCKETS, stream_first_result_seconds)

    def set_thresholds(self, response_time_seconds: float, stream_first_result_seconds: float) -> None:
        """Bucket bounds that include the thresholds. When a reload moves a threshold, histograms restart
        empty with the new bounds (Prometheus reads that as a counter reset): otherwise the `le` series
        the rules query would stay missing until the exporter restarted."""
        probe_buckets = with_thresholds(PROBE_DURATION_BUCKETS, response_time_seconds)
        stream_buckets = with_thresholds(STREAM_BUCKETS, stream_first_result_seconds)
        if (probe_buckets, stream_buckets) == (self.probe_buckets, self.stream_buckets):
            return
        self.probe_buckets, self.stream_buckets = probe_buckets, stream_buckets
        for target in self.targets.values():
            for stats in target.probes.values():
                stats.duration = Histogram(probe_buckets)
                if stats.stream is not None:
                    stats.stream = StreamStats.empty(stream_buckets, stats.stream.partial_results_total)
            self._changed(target.name, None)

    def _changed(self, target: str, section: Optional[str]) -> None:
        for listener in self.listeners:
            listener(target, section)

    # --- targets --------------------------------------------------------------------------------
    def set_targets(self, scheduled: dict[str, tuple[str, ...]]) -> None:
        """Keeps exactly these targets (name -> probe kinds scheduled); a removed target's series vanish."""
        for name in list(self.targets):
            if name not in scheduled:
                del self.targets[name]
                self._changed(name, None)
        for name, probes in scheduled.items():
            target = self.targets.setdefault(name, TargetState(name))
            target.scheduled_probes = probes
            for kind in list(target.probes):
                if kind not in probes:
                    del target.probes[kind]
            self._changed(name, None)

    def target(self, name: str) -> TargetState:
        return self.targets.setdefault(name, TargetState(name))

    def _probe(self, target: TargetState, kind: str) -> ProbeStats:
        stats = target.probes.get(kind)
        if stats is None:
            stats = ProbeStats(duration=Histogram(self.probe_buckets))
            if KINDS[kind].voice_path:
                stats.stream = StreamStats.empty(self.stream_buckets)
            target.probes[kind] = stats
        return stats

    # --- results in -----------------------------------------------------------------------------
    def record(self, result: ProbeResult) -> None:
        """The state's sink: a scrape updates the target's state, a probe its statistics; a run that could
        not start in time is counted as skipped."""
        if result.skipped:
            self.record_skip(result.target, result.probe)
        elif is_scrape(result.probe):
            self.record_scrape(result)
        else:
            self.record_probe(result)

    def record_scrape(self, result: ProbeResult) -> None:
        if result.target not in self.targets:
            return  # removed by a reload while it ran
        target = self.targets[result.target]
        endpoint = target.endpoints.setdefault(result.probe, EndpointState())
        endpoint.duration_seconds = result.duration_seconds
        endpoint.last_scrape_timestamp = result.finished_at
        endpoint.last_success = result.success
        endpoint.last_reason = result.reason
        endpoint.last_detail = result.detail
        if result.api:
            target.api = result.api
        if result.version:
            target.version = result.version
        if not result.success:
            endpoint.errors[result.reason] += 1
        if result.probe == "health":
            target.up = result.success
            target.health = self._bounded_health(target, endpoint, result.health) if result.success else None
        else:
            model_info = result.model_info if result.success else None
            if model_info is not None:
                loaded = self._bounded(target, endpoint, model_info.models_loaded)
                model_info = dataclasses.replace(model_info, models_loaded=loaded)
            target.model_info = model_info
        self._changed(result.target, "state")

    def _bounded_health(self, target: TargetState, endpoint: EndpointState,
                        health: Optional[HealthState]) -> Optional[HealthState]:
        if health is None:
            return None
        return dataclasses.replace(
            health,
            models_loaded=self._bounded(target, endpoint, health.models_loaded),
            model_memory_bytes=self._bounded(target, endpoint, health.model_memory_bytes),
            model_requests=self._bounded(target, endpoint, health.model_requests),
        )

    def _bounded(self, target: TargetState, endpoint: EndpointState, values: dict) -> dict:
        """Only the model names the target may use as label values; the rest counted, and logged once."""
        kept, dropped = target.model_names.bound(values)
        if dropped:
            endpoint.dropped_models_total += dropped
            if not target.dropped_models_logged:
                target.dropped_models_logged = True
                log.warning("model names dropped", target=target.name, reason="too_many_model_names",
                            dropped=dropped, allowed_extra=MAX_EXTRA_MODELS)
        return kept

    def record_probe(self, result: ProbeResult) -> None:
        if result.target not in self.targets:
            return
        target = self.targets[result.target]
        stats = self._probe(target, result.probe)
        was_applicable = stats.applicable
        self._record_probe(stats, result)
        # applicability also decides whether the target lists the probe in whoasr_probe_info
        self._changed(result.target, result.probe if stats.applicable == was_applicable else None)

    def _record_probe(self, stats: ProbeStats, result: ProbeResult) -> None:
        if not result.applicable:
            stats.applicable = False
            return
        stats.applicable = True
        finished = result.started_at + result.duration_seconds
        stats.runs_total += 1
        stats.success = result.success
        stats.last_run_timestamp = finished
        stats.duration.observe(result.duration_seconds)
        if result.success:
            stats.last_success_timestamp = finished
            stats.last_failure_reason = None
        else:
            stats.failures_total[result.reason] += 1
            stats.last_failure_reason = result.reason
        if result.audio_seconds is not None and result.processing_seconds is not None:
            stats.audio_seconds_total += result.audio_seconds
            stats.processing_seconds_total += result.processing_seconds
            stats.real_time_factor = result.real_time_factor
        if result.cer is not None and result.reference_characters:
            stats.character_error_rate = result.cer
            stats.reference_characters_total += result.reference_characters
            stats.character_errors_total += result.character_errors or 0
        if stats.stream is not None and result.stream is not None:
            timings = result.stream
            if timings.connect_seconds is not None:
                stats.stream.connect.observe(timings.connect_seconds)
            if timings.first_result_seconds is not None:
                stats.stream.first_result.observe(timings.first_result_seconds)
            if timings.final_result_seconds is not None:
                stats.stream.final_result.observe(timings.final_result_seconds)
            for lag in timings.result_lags:
                stats.stream.result_lag.observe(lag)
            stats.stream.partial_results_total += timings.partial_results

    def record_skip(self, target_name: str, kind: str) -> None:
        if target_name not in self.targets:
            return
        target = self.targets[target_name]
        if is_scrape(kind):
            target.endpoints.setdefault(kind, EndpointState()).skipped_total += 1
            self._changed(target_name, "state")
        else:
            self._probe(target, kind).skipped_total += 1
            self._changed(target_name, kind)

    def record_targets(self, by_source: dict[str, int], shard: tuple[int, int]) -> None:
        self.targets_by_source = dict(by_source)
        self.shard = shard

    def record_targets_files(self, errors_total: int, last_read_ok: Optional[bool]) -> None:
        self.targets_file_errors_total = errors_total
        self.targets_files_last_read_ok = last_read_ok

    def record_reload(self, success: bool) -> None:
        self.config_reload_successful = success
        if success:
            self.config_reload_success_timestamp = time.time()
