"""Character error rate of a transcript against the clip's known text (jiwer does the alignment)."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import jiwer


@dataclass(frozen=True)
class Accuracy:
    cer: float
    character_errors: int  # substitutions + deletions + insertions
    reference_characters: int


def normalize(text: str) -> str:
    """Drops punctuation, symbols and white space, folds width and case: CER counts words, not commas."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if unicodedata.category(ch)[0] in "LN")


def character_error_rate(reference: str, hypothesis: str) -> Accuracy:
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        raise ValueError("the reference transcript has no characters to compare")
    if not hyp:
        return Accuracy(cer=1.0, character_errors=len(ref), reference_characters=len(ref))
    output = jiwer.process_characters(ref, hyp)
    errors = output.substitutions + output.deletions + output.insertions
    return Accuracy(cer=errors / len(ref), character_errors=errors, reference_characters=len(ref))
