"""A small Prometheus HTTP API client: instant and range queries, with timeouts.

stdlib urllib only: the operator makes a handful of queries a minute, and one fewer dependency
is one fewer thing to patch. Every failure (connection refused, timeout, HTTP error, a query
Prometheus rejects) is a `PrometheusError` carrying a readable reason: the idle loop treats any
of them as "not idle" and logs why, because scaling on missing data would be a guess.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime


class PrometheusError(Exception):
    """The query could not be answered (unreachable, timeout, bad query, bad response)."""


@dataclass(frozen=True)
class Series:
    """One time series of a query result: its labels and `(unix seconds, value)` samples."""

    labels: dict[str, str]
    samples: list[tuple[float, float]]


class Prometheus:
    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: dict[str, str]) -> dict:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                payload = json.load(response)
        except urllib.error.HTTPError as exc:
            # Prometheus explains a bad query in the JSON body of its 400/422.
            try:
                detail = json.load(exc).get("error", exc.reason)
            except (ValueError, AttributeError):
                detail = exc.reason
            raise PrometheusError(f"{self.url} answered HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PrometheusError(f"{self.url} is unreachable: {reason}") from None
        except ValueError as exc:
            raise PrometheusError(f"{self.url} sent a response that is not JSON: {exc}") from None
        if payload.get("status") != "success":
            raise PrometheusError(f"{self.url}: {payload.get('errorType')}: {payload.get('error')}")
        return payload["data"]

    def query_range(self, query: str, *, start: datetime, end: datetime, step_seconds: float) -> list[Series]:
        data = self._get(
            "/api/v1/query_range",
            {
                "query": query,
                "start": f"{start.timestamp():.3f}",
                "end": f"{end.timestamp():.3f}",
                "step": f"{step_seconds:g}",
                "timeout": f"{self.timeout:g}s",
            },
        )
        return [
            Series(
                labels=item.get("metric", {}),
                samples=[(float(t), float(v)) for t, v in item.get("values", [])],
            )
            for item in data.get("result", [])
        ]

    def query(self, query: str, *, at: datetime | None = None) -> list[Series]:
        params = {"query": query, "timeout": f"{self.timeout:g}s"}
        if at is not None:
            params["time"] = f"{at.timestamp():.3f}"
        data = self._get("/api/v1/query", params)
        if data.get("resultType") == "scalar":
            t, v = data["result"]
            return [Series(labels={}, samples=[(float(t), float(v))])]
        return [
            Series(
                labels=item.get("metric", {}), samples=[(float(item["value"][0]), float(item["value"][1]))]
            )
            for item in data.get("result", [])
        ]
