"""A small client of Prometheus' HTTP query API (`/api/v1/query`, `/api/v1/query_range`) for `report`.

Every call has a bounded total time; every way it can fail (unreachable, timeout, an HTTP error, a
rejected query, an answer that is not Prometheus') raises PrometheusError with one line for a person.
Answers are bounded in size, so a wrong URL that streams something big cannot fill the memory.
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from typing import Optional

import aiohttp

from exporter import __version__

MAX_ANSWER_BYTES = 64 * 1024 * 1024
USER_AGENT = f"whoasr-exporter-report/{__version__}"


class PrometheusError(Exception):
    """Prometheus could not answer: one line saying what happened and where."""


@dataclass(frozen=True)
class Sample:
    """One series of an instant vector: its labels and value (NaN and ±Inf as floats)."""

    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class Series:
    """One series of a range query: its labels and (unix time, value) points."""

    labels: dict[str, str]
    points: list[tuple[float, float]]


def _float(text: str) -> float:
    return float(text)  # Prometheus writes "NaN", "+Inf", "-Inf", which float() reads


class PrometheusAPI:
    """Queries one Prometheus; use as `async with PrometheusAPI(...) as api:`."""

    def __init__(self, url: str, timeout: float = 30.0, headers: Optional[dict[str, str]] = None,
                 concurrency: int = 4):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.headers = {"User-Agent": USER_AGENT, **(headers or {})}
        self._session: Optional[aiohttp.ClientSession] = None
        self._slots = asyncio.Semaphore(concurrency)  # do not flood a Prometheus with the report's queries

    async def __aenter__(self) -> "PrometheusAPI":
        self._session = aiohttp.ClientSession(
            headers=self.headers,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=self.timeout, connect=min(self.timeout, 10.0)),
        )
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self._session is not None:
            await self._session.close()

    async def query(self, expr: str, at: float) -> list[Sample]:
        """An instant query evaluated at unix time `at`; scalars come back as one sample without labels."""
        data = await self._call("query", {"query": expr, "time": _time(at)})
        kind, result = data.get("resultType"), data.get("result")
        if kind == "vector" and isinstance(result, list):
            return [Sample(dict(item["metric"]), _float(item["value"][1])) for item in result]
        if kind == "scalar" and isinstance(result, list):
            return [Sample({}, _float(result[1]))]
        raise PrometheusError(f"Prometheus at {self.url} answered {expr!r} with a {kind} result, not a vector")

    async def query_range(self, expr: str, start: float, end: float, step: float) -> list[Series]:
        data = await self._call("query_range",
                                {"query": expr, "start": _time(start), "end": _time(end), "step": _time(step)})
        if data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
            raise PrometheusError(f"Prometheus at {self.url} answered {expr!r} without a matrix result")
        return [Series(dict(item["metric"]), [(float(t), _float(v)) for t, v in item["values"]])
                for item in data["result"]]

    async def _call(self, endpoint: str, form: dict[str, str]) -> dict:
        if self._session is None:
            raise RuntimeError("use PrometheusAPI in `async with`")
        url = f"{self.url}/api/v1/{endpoint}"
        # The query's own limit, a little inside ours, so a slow query ends as Prometheus' clear error.
        form = {**form, "timeout": f"{max(1.0, self.timeout - 1.0):g}s"}
        async with self._slots:
            try:
                async with self._session.post(url, data=form) as response:
                    body = await response.content.read(MAX_ANSWER_BYTES + 1)
                    status = response.status
            except asyncio.TimeoutError:
                raise PrometheusError(f"Prometheus at {self.url} did not answer within {self.timeout:g}s") from None
            except aiohttp.InvalidURL:
                raise PrometheusError(f"not a usable Prometheus URL: {self.url}") from None
            except aiohttp.ClientError as exc:
                raise PrometheusError(f"cannot reach Prometheus at {self.url}: {_one_line(exc)}") from None
        if len(body) > MAX_ANSWER_BYTES:
            raise PrometheusError(f"Prometheus at {self.url} answered more than {MAX_ANSWER_BYTES} bytes")
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or answer.get("status") not in ("success", "error"):
            hint = " (wrong credentials?)" if status in (401, 403) else ""
            raise PrometheusError(f"{url} answered HTTP {status}{hint}, not Prometheus' query API")
        if answer["status"] == "error":
            raise PrometheusError(f"Prometheus at {self.url} rejected a query ({answer.get('errorType')}: "
                                  f"{_one_line(answer.get('error'))}): {_one_line(form['query'])}")
        data = answer.get("data")
        if not isinstance(data, dict):
            raise PrometheusError(f"{url} answered without data")
        return data


def _time(seconds: float) -> str:
    return f"{seconds:.3f}"


def _one_line(value: object, limit: int = 300) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def finite(value: Optional[float]) -> Optional[float]:
    """None for NaN and ±Inf (no data, or 0/0), the value otherwise."""
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return value
