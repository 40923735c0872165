"""The code's shape: modules import one another one way only, and every kind comes from one registry."""

from __future__ import annotations

import ast
from pathlib import Path

from exporter.config import parse_config
from exporter.kinds import DEFAULT_PROBES, KINDS, MODULES, PROBE_KINDS, SCRAPE_KINDS

PACKAGE = Path(__file__).resolve().parent.parent / "exporter"


def import_graph() -> dict[str, set[str]]:
    """exporter module -> the exporter modules it imports anywhere (also inside functions and
    TYPE_CHECKING blocks). A submodule's import of its own package is left out: it only runs the
    package's __init__, which Python does first anyway."""
    modules: dict[str, Path] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{node.module}" if node.module else anchor
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {dep for dep in found if dep in modules and dep != name and not name.startswith(dep + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        for dep in sorted(graph[node]):
            if dep in path:
                found.append(path[path.index(dep):] + [dep])
            elif dep not in done:
                visit(dep, path + [dep])
        done.add(node)

    for node in sorted(graph):
        if node not in done:
            visit(node, [node])
    return found


def test_imports_form_no_cycle():
    graph = import_graph()
    assert {"exporter.daemon", "exporter.server", "exporter.probe_endpoint", "exporter.runner"} <= set(graph)
    assert cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_only_the_commands_import_the_daemon():
    importers = {name for name, deps in import_graph().items() if "exporter.daemon" in deps}
    assert importers == {"exporter.cli", "exporter.demo"}


def test_kind_lists_come_from_the_registry():
    assert set(SCRAPE_KINDS) | set(PROBE_KINDS) == set(KINDS) == set(MODULES)
    assert set(DEFAULT_PROBES) <= set(PROBE_KINDS)
    config = parse_config({"targets": [{"name": "a", "url": "http://127.0.0.1:1"}]})
    assert config.targets[0].enabled_probes() == DEFAULT_PROBES
    for name, kind in KINDS.items():
        schedule = config.schedules.for_kind(name)
        assert (schedule.interval, schedule.timeout) == (kind.interval, kind.timeout)
        if kind.scrape:
            assert kind.settings is None and kind.model is None
        else:
            assert type(config.probes.for_kind(name)) is kind.settings
            assert kind.model is not None


def test_no_assert_in_the_exporter():
    """`python -O` drops assert statements: validation and invariants raise real exceptions instead."""
    found = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}" for path in sorted(PACKAGE.rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(node, ast.Assert)]
    assert found == []
