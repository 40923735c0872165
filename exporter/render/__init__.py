"""`whoasr-exporter render`: alert rules and Grafana dashboards generated from the config.

The committed alerts/ and dashboards/ are this package's output for config.example.yaml; output is
deterministic (no timestamps, stable key order) so that a test can compare it byte for byte.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from exporter import runbook
from exporter.config import Config, load_config_or_report

from .dashboards import render_dashboards
from .kubernetes import write_kubernetes
from .output import write_files
from .rules import render_rules

RULES_FILE = Path("alerts") / "whoasr-rules.yml"
DASHBOARDS_DIR = Path("dashboards")
RUNBOOK_FILE = Path("docs") / "runbook.md"  # a copy of the runbook the exporter serves at /runbook


def render(config: Config) -> dict[Path, str]:
    """Relative path -> file content, without touching the disk."""
    files = {RULES_FILE: render_rules(config)}
    for name, text in render_dashboards(config).items():
        files[DASHBOARDS_DIR / name] = text
    files[RUNBOOK_FILE] = runbook.markdown()
    return files


def write_all(config: Config, out_dir: Path) -> list[Path]:
    """Writes out_dir/alerts/whoasr-rules.yml, out_dir/dashboards/*.json, docs/runbook.md and the
    Kubernetes copies of the rules and dashboards (deploy/kubernetes/); returns the paths written."""
    written = write_files(render(config), out_dir)
    written += write_kubernetes(config, out_dir)  # deploy/kubernetes/: same rules and dashboards
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="config.example.yaml",
                        help="config file whose thresholds and targets drive the output (default: %(default)s)")
    parser.add_argument("--out", default=".",
                        help="directory to write alerts/ and dashboards/ into (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    config = load_config_or_report(args.config)
    if config is None:
        return 2
    for path in write_all(config, Path(args.out)):
        print(path)
    return 0
