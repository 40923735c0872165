"""Label values that come from a whoAsr server, bounded: a bad or hostile server must not be able to
flood Prometheus with series or with huge label values.

`model`: whoAsr's own model types always; any other name the server announces is sanitised (letters,
digits and `_.:-`, at most 64 characters) and admitted up to 16 per target, first come first kept; the
rest is dropped and counted (`whoasr_scrape_dropped_models_total`). `version`: printable characters,
at most 64.
"""

from __future__ import annotations

import re
from typing import Optional, TypeVar

from exporter.kinds import KINDS

# whoAsr's model types (whoasr-api.md): the models the probe kinds need.
MODEL_TYPES: tuple[str, ...] = tuple(dict.fromkeys(kind.model for kind in KINDS.values() if kind.model))
MAX_EXTRA_MODELS = 16  # other model names per target
MAX_LABEL_CHARS = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")

V = TypeVar("V")


def model_name(value: object) -> str:
    """A model key as a label value: unsafe characters replaced by `_`, at most 64 characters."""
    return _UNSAFE.sub("_", str(value)[:MAX_LABEL_CHARS]) or "_"


def version_label(value: object) -> Optional[str]:
    """A version as a label value: printable characters only, at most 64; None if nothing is left."""
    if not isinstance(value, str):
        return None
    text = "".join(char for char in value[:4 * MAX_LABEL_CHARS] if char.isprintable())[:MAX_LABEL_CHARS]
    return text or None


class ModelNames:
    """The model label values one target may use. Admitted extra names are remembered, so a server that
    announces new names on every scrape cannot churn series either."""

    def __init__(self) -> None:
        self.extras: set[str] = set()

    def bound(self, values: dict[str, V]) -> tuple[dict[str, V], int]:
        """The entries whose names may be labels, and how many were dropped."""
        kept: dict[str, V] = {}
        dropped = 0
        for name, value in values.items():
            if name in MODEL_TYPES or name in self.extras:
                kept[name] = value
            elif len(self.extras) < MAX_EXTRA_MODELS:
                self.extras.add(name)
                kept[name] = value
            else:
                dropped += 1
        return kept, dropped
