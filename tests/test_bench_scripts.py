"""The benchmarks under bench/ are not run by the suite (their figures need a quiet machine), but they
must not rot: each one still imports what it uses and parses its arguments."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HELPERS = {"__init__.py", "common.py"}
SCRIPTS = sorted(p.name for p in (ROOT / "bench").glob("*.py") if p.name not in HELPERS)


def test_there_are_benchmarks():
    assert len(SCRIPTS) >= 5, SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_script_starts(script):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"bench/{script} --help failed:\n{done.stderr[-2000:]}"
    assert done.stdout.startswith("usage:"), done.stdout[:200]
