"""A minimal client of the Prometheus HTTP API: ``/api/v1/query_range`` only, for ``worker
report`` (the history of the ``/metrics`` gauges and counters lives in the Prometheus that
scraped them)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from worker.core.errors import PrometheusError


class PrometheusClient:
    """The Prometheus HTTP API at ``url`` (``http://prometheus:9090``, or a path prefix behind a
    proxy: ``https://host/prometheus``).

    Args:
        url: base URL; ``/api/v1/...`` is appended. It may carry ``user:password@``, which is
            never shown in errors.
        timeout_s: per-request timeout.
    """

    def __init__(self, url: str, *, timeout_s: float = 30.0) -> None:
        self._url = url.rstrip("/")
        self._timeout_s = timeout_s
        parts = urllib.parse.urlsplit(self._url)
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        self.shown_url = urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))

    def __repr__(self) -> str:  # no credentials in reprs
        return f"PrometheusClient(url={self.shown_url!r})"

    def query_range(
        self, query: str, start_s: float, end_s: float, step_s: float
    ) -> list[dict[str, Any]]:
        """The matrix result (``data.result``) of a range query: one ``{"metric": {...},
        "values": [[t, "v"], ...]}`` per series.

        Raises:
            PrometheusError: unreachable, an HTTP error, an answer that is not a successful
                matrix (the message carries Prometheus' own ``error`` text and the query).
        """
        params = urllib.parse.urlencode(
            {"query": query, "start": f"{start_s:.3f}", "end": f"{end_s:.3f}", "step": f"{step_s}s"}
        )
        request = urllib.request.Request(
            f"{self._url}/api/v1/query_range",
            data=params.encode(),
            method="POST",  # long queries do not fit every proxy's URL limit
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        _add_basic_auth(request, self._url)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            answer = _error_body(exc)
            if answer is None:
                raise PrometheusError(
                    f"Prometheus at {self.shown_url} answered HTTP {exc.code} to {query!r}"
                ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise PrometheusError(f"Prometheus at {self.shown_url}: {reason}") from None
        except ValueError:
            raise PrometheusError(
                f"Prometheus at {self.shown_url} answered something that is not JSON"
            ) from None
        if not isinstance(answer, dict) or answer.get("status") != "success":
            error = answer.get("error") if isinstance(answer, dict) else None
            raise PrometheusError(
                f"Prometheus at {self.shown_url} refused {query!r}: {error or 'no error text'}"
            )
        data = answer.get("data") or {}
        if data.get("resultType") != "matrix" or not isinstance(data.get("result"), list):
            raise PrometheusError(
                f"Prometheus at {self.shown_url} answered {query!r} without a matrix"
            )
        result: list[dict[str, Any]] = data["result"]
        return result


def _error_body(exc: urllib.error.HTTPError) -> Any:
    """Prometheus' JSON error body (``{"status": "error", "error": ...}``), or None."""
    try:
        return json.loads(exc.read())
    except (ValueError, OSError):
        return None


def _add_basic_auth(request: urllib.request.Request, url: str) -> None:
    """``http://user:password@host`` -> an Authorization header (urllib does not do it)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return
    token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    request.add_header("Authorization", "Basic " + base64.b64encode(token.encode()).decode())
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    request.full_url = urllib.parse.urlunsplit(
        (parts.scheme, netloc, urllib.parse.urlsplit(request.full_url).path, "", "")
    )
