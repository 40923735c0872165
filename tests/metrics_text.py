"""Reading the exporter's /metrics text in tests."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> list[tuple[str, dict, float]]:
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels) -> float | None:
    """The value of the one sample with this name whose labels include `labels`; None if absent."""
    found = [v for n, l, v in samples(text) if n == name and all(l.get(k) == str(w) for k, w in labels.items())]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return found[0] if found else None


def label_sets(text: str, name: str) -> list[dict]:
    return [l for n, l, _ in samples(text) if n == name]
