"""The runbook: one Markdown text, shipped with the package, written to docs/runbook.md by `render` and
served as HTML at /runbook, so every alert's runbook_url leads to a page the exporter itself serves.

Each `## AlertName` heading gets the anchor `alertname` (lower-cased), the fragment of the alerts' links.
"""

from __future__ import annotations

import html
import re
from functools import lru_cache
from importlib import resources

SOURCE = "runbook.md"


def markdown() -> str:
    return resources.files("exporter").joinpath("data", SOURCE).read_text(encoding="utf-8")


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes (AlertName ->
    alertname), so links work on the served page and in a repository browser alike."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@lru_cache(maxsize=1)
def html_page() -> str:
    """The runbook as one HTML page; rendered once (the text is part of the installed package)."""
    from markdown_it import MarkdownIt

    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = parser.parse(markdown())
    for index, token in enumerate(tokens):
        if token.type == "heading_open":
            token.attrSet("id", anchor(tokens[index + 1].content))
    body = parser.renderer.render(tokens, parser.options, {})
    title = html.escape(markdown().splitlines()[0].lstrip("# ").strip())
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{title}</title>\n<style>body{{font-family:sans-serif;max-width:60em;margin:1em auto;"
        "padding:0 1em;line-height:1.45}code,pre{background:#f4f4f4}pre{padding:.5em;overflow-x:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}"
        "h2:target{background:#fff3c4}</style></head><body>\n"
        f"{body}</body></html>\n"
    )
