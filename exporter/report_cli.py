"""`whoasr-exporter report`: its arguments and the command; what it reads is exporter/report.py, how it
prints exporter/report_text.py.

Exit codes: 0 printed; 1 printed, and some error budget is spent or a target was up less often than its
availability objective; 2 Prometheus unreachable, a query rejected, or bad arguments (one line, stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import re
import sys
import time
from urllib.parse import urlsplit, urlunsplit

from exporter.prometheus_api import PrometheusAPI, PrometheusError
from exporter.report import FORMATS, Queries, Report, collect
from exporter.report_text import render

MAX_RANGE_SECONDS = 400 * 86400


class UsageError(Exception):
    """Bad arguments: exit 2 with the message."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prometheus", required=True, metavar="URL",
                        help="Prometheus base URL (http://prometheus:9090)")
    parser.add_argument("--range", default="24h", metavar="DURATION",
                        help="period to summarise, ending now: 90s, 30m, 24h, 7d, 2w (default 24h)")
    parser.add_argument("--target", action="append", default=[], metavar="NAME", nargs="+",
                        help="only these targets (the `target` label); repeatable")
    parser.add_argument("--format", default="table", choices=FORMATS, help="table (default), markdown or json")
    parser.add_argument("--bearer-token-file", metavar="FILE", help="send the token in FILE as a bearer token")
    parser.add_argument("--basic-auth", metavar="USER:PASSWORD_FILE",
                        help="HTTP basic auth: the user, and a file holding the password")
    parser.add_argument("--timeout", default="30s", metavar="DURATION",
                        help="bound of each query to Prometheus (default 30s)")

    def one_line_error(message: str):  # argparse's usage + message is two lines: keep it to one
        print(f"whoasr-exporter report: {message}", file=sys.stderr)
        raise SystemExit(2)

    parser.error = one_line_error  # type: ignore[method-assign]


# --- arguments ------------------------------------------------------------------------------------
_RANGE = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")
_RANGE_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_range(text: str, what: str = "--range") -> float:
    match = _RANGE.match(text.strip())
    if not match:
        raise UsageError(f"{what}: expected a duration like 90s, 30m, 24h, 7d or 2w, got {text!r}")
    seconds = int(match.group(1)) * _RANGE_UNITS[match.group(2)]
    if not 1 <= seconds <= MAX_RANGE_SECONDS:
        raise UsageError(f"{what}: expected between 1s and {MAX_RANGE_SECONDS // 86400}d, got {text!r}")
    return float(seconds)


def _read_secret(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            value = handle.read().strip()
    except OSError as exc:
        raise UsageError(f"{what}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{what}: {path} is not UTF-8 text") from None
    if not value:
        raise UsageError(f"{what}: {path} is empty")
    return value


def auth_headers(args: argparse.Namespace) -> dict[str, str]:
    if args.bearer_token_file and args.basic_auth:
        raise UsageError("--bearer-token-file and --basic-auth exclude each other: give one")
    if args.bearer_token_file:
        return {"Authorization": f"Bearer {_read_secret(args.bearer_token_file, '--bearer-token-file')}"}
    if args.basic_auth:
        user, sep, password_file = args.basic_auth.partition(":")
        if not sep or not user or not password_file:
            raise UsageError("--basic-auth: expected USER:PASSWORD_FILE (the password is read from the file)")
        password = _read_secret(password_file, "--basic-auth")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {token}"}
    return {}


def prometheus_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--prometheus: expected an http(s) URL like http://prometheus:9090, got {text!r}")
    if parts.username or parts.password:
        raise UsageError("--prometheus: put credentials in --basic-auth or --bearer-token-file, not in the URL")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


# --- the command ----------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    try:
        range_seconds = parse_range(args.range)
        timeout = parse_range(args.timeout, "--timeout")
        url = prometheus_url(args.prometheus)
        headers = auth_headers(args)
        names = tuple(dict.fromkeys(name for group in args.target for name in group))
        if any(not name for name in names):
            raise UsageError("--target: a target name cannot be empty")
    except UsageError as exc:
        print(f"whoasr-exporter report: {exc}", file=sys.stderr)
        return 2
    queries = Queries(range_seconds, names)
    end = round(time.time(), 3)
    try:
        report = asyncio.run(_collect(url, timeout, headers, queries, end))
    except PrometheusError as exc:
        print(f"whoasr-exporter report: {exc}", file=sys.stderr)
        return 2
    print(render(report, args.format))
    for target in report.targets:
        if not target.has_data:  # a --target Prometheus knows nothing about: a typo, or not scraped
            print(f"whoasr-exporter report: no data for target {target.target!r} in this range", file=sys.stderr)
    for reason in report.gate_failures:
        print(f"whoasr-exporter report: {reason}", file=sys.stderr)
    return 1 if report.gate_failures else 0


async def _collect(url: str, timeout: float, headers: dict, queries: Queries, end: float) -> Report:
    async with PrometheusAPI(url, timeout=timeout, headers=headers) as api:
        return await collect(api, queries, end)
