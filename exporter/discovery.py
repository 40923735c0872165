"""Targets from Prometheus file_sd files (`targets_files`), re-read when they change, as Prometheus does.

A file is a list of groups `{targets: [URL, ...], labels: {...}}`, YAML (.yml/.yaml) or JSON (.json).
A target is a whoAsr base URL (or host:port, with the scheme from the group's `__scheme__`); its name,
the `target` label, is the URL without the scheme. Group labels `api` and `probes` (comma-separated;
empty: the default set) set what the config's `targets[]` would; other labels are ignored, since a label
from a file would be an unbounded label set. A file that cannot be read or parsed is reported and its
last good content kept; a file no glob matches any more takes its targets with it.

Reading is blocking file I/O: `TargetsFiles.refresh` runs in a worker thread.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Optional
from urllib.parse import urlsplit

import structlog
import yaml
from pydantic import ValidationError

from exporter.config import TargetConfig, format_validation_error
from exporter.kinds import PROBE_KINDS

log = structlog.get_logger("exporter.discovery")

POLL_SECONDS = 5.0  # how often the globs are expanded and the files' stat compared
MAX_FILE_BYTES = 16 * 1024 * 1024
MAX_DISCOVERED_TARGETS = 50_000  # over all files, before sharding; the rest are dropped and reported
GROUP_KEYS = {"targets", "labels"}


class TargetsFileError(Exception):
    """A targets file that cannot be used; one line naming the file, the place and the fix."""


def target_name(url: str) -> str:
    """The URL without scheme and credentials: host[:port][/path]."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    netloc = host + (f":{parts.port}" if parts.port else "")
    return netloc + parts.path.rstrip("/")


def _group_settings(path: str, where: str, labels: dict[str, Any]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if "api" in labels:
        settings["api"] = labels["api"]
    if "probes" in labels:
        value = labels["probes"]
        if not isinstance(value, str):
            raise TargetsFileError(f"{path}: {where}.labels.probes: expected a comma-separated string like "
                                   f"'batch,stream' (empty: the default set), got {value!r}")
        kinds = tuple(kind.strip() for kind in value.split(",") if kind.strip())
        unknown = [kind for kind in kinds if kind not in PROBE_KINDS]
        if unknown:
            raise TargetsFileError(f"{path}: {where}.labels.probes: unknown probe {unknown[0]!r}; expected some of "
                                   f"{', '.join(PROBE_KINDS)}")
        if kinds:
            settings["probes"] = kinds
    return settings


def parse_targets_file(path: str, text: str) -> list[TargetConfig]:
    """The targets of one file_sd file; raises TargetsFileError at the first problem."""
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else (f"line {exc.lineno}: " if hasattr(exc, "lineno") else "")
        problem = getattr(exc, "problem", None) or getattr(exc, "msg", None) or str(exc)
        raise TargetsFileError(f"{path}: {where}not valid {'JSON' if path.endswith('.json') else 'YAML'}: "
                               f"{problem}") from None
    if data is None:
        return []  # an empty file: no targets (Prometheus reads it the same way)
    if not isinstance(data, list):
        raise TargetsFileError(f"{path}: expected a list of groups like [{{targets: [URL, ...], labels: {{...}}}}]")
    targets: list[TargetConfig] = []
    for g, group in enumerate(data):
        where = f"[{g}]"
        if not isinstance(group, dict):
            raise TargetsFileError(f"{path}: {where}: expected a group {{targets: [...], labels: {{...}}}}")
        if unknown := sorted(set(group) - GROUP_KEYS):
            raise TargetsFileError(f"{path}: {where}.{unknown[0]}: unknown key; a group has targets and labels")
        labels = group.get("labels") or {}
        if not isinstance(labels, dict):
            raise TargetsFileError(f"{path}: {where}.labels: expected a mapping of label names to strings")
        settings = _group_settings(path, where, labels)
        scheme = labels.get("__scheme__", "http")
        entries = group.get("targets") or []
        if not isinstance(entries, list):
            raise TargetsFileError(f"{path}: {where}.targets: expected a list of whoAsr base URLs")
        for t, entry in enumerate(entries):
            if not isinstance(entry, str) or not entry.strip():
                raise TargetsFileError(f"{path}: {where}.targets[{t}]: expected a URL like http://asr-1:8000, "
                                       f"got {entry!r}")
            url = entry.strip() if "://" in entry else f"{scheme}://{entry.strip()}"
            try:
                targets.append(TargetConfig.model_validate(
                    {"name": target_name(url), "url": url, **settings}, context={"discovered": True}))
            except (ValidationError, ValueError) as exc:
                if isinstance(exc, ValidationError):
                    detail = format_validation_error(f"{path}: {where}.targets[{t}]", exc)
                else:
                    detail = f"{path}: {where}.targets[{t}]: {exc}"
                raise TargetsFileError(detail.splitlines()[0]) from None
    return targets


@dataclass
class FileState:
    stat_key: tuple
    targets: tuple[TargetConfig, ...] = ()  # the last good content
    error: Optional[str] = None


def _stat_key(path: str) -> Optional[tuple]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class TargetsFiles:
    """The files the globs match, each with its last good targets; `refresh` re-reads changed ones."""

    def __init__(self, patterns: Iterable[str] = ()):
        self.patterns = tuple(patterns)
        self.files: dict[str, FileState] = {}
        self.errors_total = 0
        self.last_read_ok: Optional[bool] = None  # None until the first refresh, or without patterns
        self._targets: tuple[TargetConfig, ...] = ()

    def refresh(self) -> bool:
        """Expands the globs, re-reads new and changed files; True if the list of targets changed."""
        if not self.patterns:
            return False
        matched = sorted({path for pattern in self.patterns for path in glob.glob(pattern)
                          if os.path.isfile(path)})
        changed = False
        for path in [p for p in self.files if p not in matched]:
            del self.files[path]
            log.info("targets file gone", path=path, reason="no longer matched")
            changed = True
        for path in matched:
            key = _stat_key(path)
            state = self.files.get(path)
            if state is not None and state.stat_key == key:
                continue
            try:
                targets = tuple(self._read(path))
            except TargetsFileError as exc:
                self.errors_total += 1
                kept = state.targets if state is not None else ()
                self.files[path] = FileState(key, kept, str(exc))
                log.error("targets file invalid", path=path, reason="invalid_targets_file", error=str(exc),
                          kept_targets=len(kept))
                continue
            if state is None or state.targets != targets:
                changed = True
            self.files[path] = FileState(key, targets)
            log.info("targets file read", path=path, targets=len(targets))
        self.last_read_ok = not any(state.error for state in self.files.values())
        if changed:
            self._targets = self._collect()
        return changed

    def _read(self, path: str) -> list[TargetConfig]:
        try:
            with open(path, "rb") as handle:
                raw = handle.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise TargetsFileError(f"{path}: cannot read: {exc.strerror}") from None
        if len(raw) > MAX_FILE_BYTES:
            raise TargetsFileError(f"{path}: larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB; split it into "
                                   "several files")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise TargetsFileError(f"{path}: not UTF-8 text") from None
        return parse_targets_file(path, text)

    def _collect(self) -> tuple[TargetConfig, ...]:
        """Every file's targets in path order; a URL or name seen before is skipped (the first wins)."""
        out: list[TargetConfig] = []
        urls: set[str] = set()
        names: set[str] = set()
        duplicates = 0
        for path in sorted(self.files):
            for target in self.files[path].targets:
                if target.url in urls or target.name in names:
                    duplicates += 1
                    continue
                if len(out) >= MAX_DISCOVERED_TARGETS:
                    log.error("too many discovered targets", reason="limit", limit=MAX_DISCOVERED_TARGETS,
                              path=path)
                    self.errors_total += 1
                    return tuple(out)
                urls.add(target.url)
                names.add(target.name)
                out.append(target)
        if duplicates:
            log.info("duplicate discovered targets ignored", count=duplicates, reason="duplicate")
        return tuple(out)

    def targets(self) -> tuple[TargetConfig, ...]:
        return self._targets


def merge_targets(configured: Iterable[TargetConfig], discovered: Iterable[TargetConfig]
                  ) -> tuple[list[TargetConfig], list[TargetConfig]]:
    """(configured, discovered) without the discovered targets a configured one already covers, by URL
    or by name: a configured target carries credentials and a chosen name, so it wins."""
    configured = list(configured)
    urls = {t.url for t in configured}
    names = {t.name for t in configured}
    kept = [t for t in discovered if t.url not in urls and t.name not in names]
    return configured, kept
