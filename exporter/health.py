"""Tolerant readers of whoAsr's `/health` and `/model/info` answers.

Three shapes exist in the wild: the v1 and v2 servers' current schema (`services`, `system.*_percent`,
`*_gb`) and the older documented schema (`models`, `system.*_usage` as 0..1 ratios, memory strings such
as "1.2GB"). A field that is missing, "unknown" or malformed yields no value (and so no series), never an
error; only an answer that is not a JSON object of the expected kind is a bad_response.
"""

from __future__ import annotations

import math
import re
from typing import Any, Optional

from exporter.labels import model_name, version_label
from exporter.results import Failure, HealthState, ModelInfoState

GIB = 1024.0**3
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_UNIT_BYTES = {"": 1.0, "K": 1024.0, "M": 1024.0**2, "G": 1024.0**3, "T": 1024.0**4}


def number(value: Any) -> Optional[float]:
    """A finite number from a number or numeric string; None for "unknown", booleans and the rest."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            result = float(value)
        except OverflowError:  # an integer beyond float range: JSON allows thousands of digits
            return None
    elif isinstance(value, str):
        try:
            result = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return result if math.isfinite(result) else None


def ratio_from_percent(value: Any) -> Optional[float]:
    percent = number(value)
    return None if percent is None or percent < 0 else percent / 100.0


def ratio_from_fraction(value: Any) -> Optional[float]:
    """The documented schema's 0..1 ratios; a value above 1 can only be a percent (some forks send one)."""
    fraction = number(value)
    if fraction is None or fraction < 0:
        return None
    return fraction / 100.0 if fraction > 1.0 else fraction


def memory_bytes(value: Any) -> Optional[float]:
    """'1.2GB', '200MB', '512 KiB' -> bytes (binary units, as the seed's client reads them)."""
    if isinstance(value, str):
        match = _MEMORY.match(value)
        if not match:
            return None
        return float(match.group(1)) * _UNIT_BYTES[match.group(2).upper()]
    return None


def _loaded_flags(section: Any) -> dict[str, bool]:
    if not isinstance(section, dict):
        return {}
    return {
        model_name(model): entry["loaded"]
        for model, entry in section.items()
        if isinstance(entry, dict) and isinstance(entry.get("loaded"), bool)
    }


def _count(value: Any) -> Optional[int]:
    result = number(value)
    return int(result) if result is not None and result >= 0 else None


def parse_health(document: Any) -> HealthState:
    if not isinstance(document, dict) or not isinstance(document.get("status"), str):
        raise Failure("bad_response", "/health answer is not an object with a status")
    state = HealthState(status=document["status"])
    api_info = document.get("api_info")
    if isinstance(api_info, dict):
        state.version = version_label(api_info.get("version"))
    state.uptime_seconds = number(document.get("uptime"))

    # Current schema: services; documented schema: models (with memory and request counts).
    state.models_loaded = _loaded_flags(document.get("services")) or _loaded_flags(document.get("models"))
    state.total_loaded = _count(document.get("total_loaded"))
    models = document.get("models")
    if isinstance(models, dict):
        for model, entry in models.items():
            if not isinstance(entry, dict):
                continue
            mb = number(entry.get("memory_usage_mb"))
            size = mb * 1024.0**2 if mb is not None else memory_bytes(entry.get("memory_usage"))
            if size is not None:
                state.model_memory_bytes[model_name(model)] = size
            requests = number(entry.get("total_requests"))
            if requests is not None:
                state.model_requests[model_name(model)] = requests

    system = document.get("system")
    if isinstance(system, dict):
        state.cpu_ratio = _first(ratio_from_percent(system.get("cpu_usage_percent")),
                                 ratio_from_fraction(system.get("cpu_usage")))
        state.memory_ratio = _first(ratio_from_percent(system.get("memory_usage_percent")),
                                    ratio_from_fraction(system.get("memory_usage")))
        state.disk_ratio = _first(ratio_from_percent(system.get("disk_usage_percent")),
                                  ratio_from_fraction(system.get("disk_usage")))
        total = number(system.get("memory_total_gb"))
        available = number(system.get("memory_available_gb"))
        state.memory_total_bytes = total * GIB if total is not None else None
        state.memory_available_bytes = available * GIB if available is not None else None
        state.active_connections = number(system.get("active_connections"))
    return state


def parse_model_info(document: Any) -> ModelInfoState:
    if not isinstance(document, dict) or not isinstance(document.get("models"), dict):
        raise Failure("bad_response", "/model/info answer is not an object with models")
    return ModelInfoState(
        models_loaded=_loaded_flags(document["models"]),
        total_loaded=_count(document.get("total_loaded")),
    )


def _first(*values: Optional[float]) -> Optional[float]:
    return next((value for value in values if value is not None), None)
