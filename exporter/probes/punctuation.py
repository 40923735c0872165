"""The `punctuation` probe (v1 /punctuate, v2 /punctuation/add).

whoAsr answers 200 with the text unchanged when its punctuation model fails or cannot load, so a 200
proves nothing: the probe passes only if punctuation was really added and nothing else was changed.
"""

from __future__ import annotations

import unicodedata

from exporter.probes import ProbeContext
from exporter.probes.common import check, expect_ok, json_object, post, run_checked, shape_error
from exporter.results import ProbeResult

KIND = "punctuation"


async def run(ctx: ProbeContext) -> ProbeResult:
    return await run_checked(ctx, KIND, _probe)


async def _probe(ctx: ProbeContext, result: ProbeResult) -> None:
    text = ctx.settings.text
    result.expected_transcript = text
    reply = await post(ctx, result, KIND, json_body={"text": text})
    expect_ok(reply)
    document = json_object(reply)
    answer = document.get("punctuated_text", document.get("text"))
    if not isinstance(answer, str):
        raise shape_error(reply, "the answer has neither a punctuated_text nor a text string")
    result.transcript = answer
    ctx.trace(f"punctuated {answer!r}")

    check(ctx, result, "changed", answer != text,
          "text came back unchanged: the punctuation model failed or is not loaded" if answer == text
          else "text came back changed")
    same_words = _words(answer) == _words(text)
    check(ctx, result, "same_words", same_words,
          "text is the input with punctuation added" if same_words
          else f"text changed beyond punctuation: {answer[:80]!r}")
    added = sorted(set(_marks(answer)) - set(_marks(text)))
    check(ctx, result, "punctuation_added", bool(added),
          f"added {''.join(added)}" if added else "no punctuation mark was added")


def _is_mark(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P")


def _words(text: str) -> str:
    """The text without punctuation and white space: what punctuation must leave alone."""
    return "".join(ch for ch in text if not _is_mark(ch) and not ch.isspace())


def _marks(text: str) -> str:
    return "".join(ch for ch in text if _is_mark(ch))
