"""A minimal client for a Confluent-compatible schema registry (REST, JSON over HTTP).

Only the two calls the codec needs: register a schema under a subject, and fetch a schema by its
global id. Answers are cached for the life of the process (ids are immutable).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from worker.core.errors import SchemaRegistryError, UnknownSchemaError

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class HttpSchemaRegistry:
    """Schema registry at ``url`` (for example ``http://registry:8081``).

    Args:
        url: base URL of the registry.
        basic_auth: ``"user:password"`` for HTTP basic auth, or ``None``. Never logged.
        timeout_s: per-request timeout.
    """

    def __init__(self, url: str, *, basic_auth: str | None = None, timeout_s: float = 5.0) -> None:
        self._url = url.rstrip("/")
        self._timeout_s = timeout_s
        self._auth_header = (
            "Basic " + base64.b64encode(basic_auth.encode()).decode() if basic_auth else None
        )
        self._by_id: dict[int, Mapping[str, Any]] = {}
        self._ids: dict[tuple[str, str], int] = {}

    def __repr__(self) -> str:  # no credentials in reprs
        return f"HttpSchemaRegistry(url={self._url!r})"

    def register(self, subject: str, schema_json: Mapping[str, Any]) -> int:
        text = json.dumps(schema_json, sort_keys=True)
        key = (subject, text)
        if key not in self._ids:
            answer = self._call("POST", f"/subjects/{subject}/versions", {"schema": text})
            self._ids[key] = int(answer["id"])
            self._by_id[self._ids[key]] = schema_json
        return self._ids[key]

    def schema_by_id(self, schema_id: int) -> Mapping[str, Any]:
        if schema_id not in self._by_id:
            try:
                answer = self._call("GET", f"/schemas/ids/{schema_id}", None)
            except SchemaRegistryError as exc:
                if "HTTP 404" in str(exc):
                    raise UnknownSchemaError(f"schema id {schema_id} is not registered") from exc
                raise
            try:
                self._by_id[schema_id] = json.loads(answer["schema"])
            except (KeyError, TypeError, ValueError) as exc:
                raise SchemaRegistryError(
                    f"schema registry answered schema id {schema_id} without a valid schema"
                ) from exc
        return self._by_id[schema_id]

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self._url + path, data=data, method=method)
        request.add_header("Accept", _CONTENT_TYPE)
        if data is not None:
            request.add_header("Content-Type", _CONTENT_TYPE)
        if self._auth_header:
            request.add_header("Authorization", self._auth_header)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                answer: dict[str, Any] = json.loads(response.read())  # the API answers objects
                return answer
        except urllib.error.HTTPError as exc:
            raise SchemaRegistryError(
                f"schema registry {method} {path}: HTTP {exc.code} {exc.reason}"
            ) from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise SchemaRegistryError(f"schema registry {method} {path}: {exc}") from exc
