"""Writing rendered files to disk."""

from __future__ import annotations

from pathlib import Path


def write_files(files: dict[Path, str], out_dir: Path) -> list[Path]:
    """Writes each relative path's text under out_dir (UTF-8, LF line ends), creating directories as
    needed; returns the paths written, in the order given."""
    written = []
    for relative, text in files.items():
        path = Path(out_dir) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="\n")
        written.append(path)
    return written
