"""The three /health shapes (v1/v2 current schema, the documented schema) and /model/info."""

import pytest

from exporter.health import memory_bytes, parse_health, parse_model_info
from exporter.results import Failure

CURRENT = {
    "status": "healthy",
    "timestamp": "2026-11-30T00:00:00Z",
    "services": {
        "streaming_asr": {"loaded": True, "display_name": "x", "auto_load": True},
        "offline_asr": {"loaded": False},
        "punctuation": {"loaded": True},
    },
    "total_loaded": 2,
    "system": {"memory_total_gb": 16.0, "memory_available_gb": 9.5, "memory_usage_percent": 40.625,
               "cpu_usage_percent": 12.5},
    "api_info": {"version": "1.0.0", "title": "whoAsr"},
}

DOCUMENTED = {
    "status": "healthy",
    "timestamp": "2026-11-30T00:00:00Z",
    "uptime": 3600,
    "models": {
        "paraformer": {"loaded": True, "memory_usage": "1.5GB", "total_requests": 42, "last_used": "..."},
        "punc": {"loaded": True, "memory_usage_mb": 200, "memory_usage": "999GB", "total_requests": 7},
        "vad": {"loaded": False, "memory_usage": "512KB"},
    },
    "system": {"cpu_usage": 0.25, "memory_usage": 0.5, "disk_usage": 0.75, "active_connections": 3},
}


def test_current_schema():
    state = parse_health(CURRENT)
    assert state.status == "healthy" and state.version == "1.0.0"
    assert state.models_loaded == {"streaming_asr": True, "offline_asr": False, "punctuation": True}
    assert state.total_loaded == 2
    assert state.cpu_ratio == 0.125 and state.memory_ratio == 0.40625
    assert state.memory_total_bytes == 16 * 1024**3 and state.memory_available_bytes == 9.5 * 1024**3
    assert state.disk_ratio is None and state.active_connections is None  # not sent: no series


def test_documented_schema():
    state = parse_health(DOCUMENTED)
    assert state.cpu_ratio == 0.25 and state.memory_ratio == 0.5 and state.disk_ratio == 0.75
    assert state.active_connections == 3 and state.uptime_seconds == 3600
    assert state.models_loaded == {"paraformer": True, "punc": True, "vad": False}
    # memory_usage_mb wins over the string; strings are binary units
    assert state.model_memory_bytes == {"paraformer": 1.5 * 1024**3, "punc": 200 * 1024**2, "vad": 512 * 1024}
    assert state.model_requests == {"paraformer": 42, "punc": 7}
    assert state.version is None


def test_unknown_strings_and_junk_give_no_value():
    doc = {"status": "healthy", "system": {"cpu_usage_percent": "unknown", "memory_usage_percent": None,
                                           "memory_total_gb": "unknown", "memory_available_gb": [1],
                                           "cpu_usage": True}}
    state = parse_health(doc)
    assert state.cpu_ratio is None and state.memory_ratio is None
    assert state.memory_total_bytes is None and state.memory_available_bytes is None


def test_a_percent_in_a_ratio_field_is_read_as_percent():
    state = parse_health({"status": "ok", "system": {"cpu_usage": 45.0, "memory_usage": "0.5"}})
    assert state.cpu_ratio == 0.45 and state.memory_ratio == 0.5


@pytest.mark.parametrize("text,expected", [("1.2GB", 1.2 * 1024**3), ("200MB", 200 * 1024**2),
                                           ("512 KiB", 512 * 1024), ("7", 7.0), ("lots", None), ("", None)])
def test_memory_strings(text, expected):
    assert memory_bytes(text) == expected


@pytest.mark.parametrize("doc", [[], "healthy", None, {"unexpected": True}, {"status": 1}])
def test_wrong_shape_is_bad_response(doc):
    with pytest.raises(Failure) as info:
        parse_health(doc)
    assert info.value.reason == "bad_response"


def test_model_info():
    state = parse_model_info({"models": {"vad": {"loaded": True}, "timestamp": {"loaded": False}, "junk": 1},
                              "total_loaded": 1, "available_models": {}})
    assert state.models_loaded == {"vad": True, "timestamp": False} and state.total_loaded == 1
    with pytest.raises(Failure):
        parse_model_info({"models": []})


def test_an_integer_beyond_float_range_is_no_value_not_a_crash():
    """JSON allows integers of thousands of digits; float() of one raises OverflowError."""
    huge = 10**400
    document = {"status": "healthy", "uptime": huge, "total_loaded": huge,
                "system": {"cpu_usage_percent": huge, "memory_total_gb": huge},
                "models": {"m": {"loaded": True, "memory_usage_mb": huge, "total_requests": huge}}}
    state = parse_health(document)
    assert state.status == "healthy" and state.models_loaded == {"m": True}
    assert (state.uptime_seconds, state.cpu_ratio, state.memory_total_bytes, state.total_loaded) == (None,) * 4
    assert state.model_memory_bytes == {} and state.model_requests == {}
