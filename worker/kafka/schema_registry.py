"""The schema registry client: confluent-kafka's ``SchemaRegistryClient`` behind the codec's
:class:`~worker.wire.codec.SchemaRegistry` protocol.

The codec (:mod:`worker.wire.codec`) keeps the framing and the Avro encoding; this module only
registers a schema under a subject and fetches a schema by its global id, through the maintained
client (its cache, TLS, basic auth and bounded retries with backoff). Its errors become the
project's:

* an id the registry does not know (HTTP 404 with Confluent's error code 40403) is
  :class:`UnknownSchemaError`, a data error: the record is dead-lettered;
* anything else (connection refused, timeout, TLS, HTTP 401/403/5xx, a 404 without 40403, which
  is a wrong URL rather than an unknown id) is :class:`SchemaRegistryError`, an infrastructure
  error: the worker stops rather than dead-letter every record.

Credentials never appear in a repr, an error message or a log line: user info in the URL is moved
into the client's ``basic.auth.user.info`` and shown nowhere.

The client is imported when a registry is configured, not with this module: its imports (httpx2,
authlib, cryptography) take about 0.7 s, which a worker without a registry does not pay.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

from worker.core.errors import ConfigError, SchemaRegistryError, UnknownSchemaError

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import SchemaRegistryClient

#: Confluent's error code for "schema not found" (``GET /schemas/ids/{id}``).
SCHEMA_NOT_FOUND = 40403


@functools.cache
def _call_errors() -> tuple[type[Exception], ...]:
    """What a failed call can raise: the registry's answer (the client's SchemaRegistryError), or
    no answer at all (httpx2's TransportError and the rest of its HTTPError family, an OSError
    below it, ValueError for a body that is not JSON)."""
    import httpx2
    from confluent_kafka.schema_registry.error import SchemaRegistryError as ClientError

    return (ClientError, httpx2.HTTPError, OSError, ValueError)


def _is_unknown_id(exc: Exception) -> bool:
    """The registry's own 'schema not found': HTTP 404 with error code 40403."""
    return (
        getattr(exc, "http_status_code", None) == 404
        and getattr(exc, "error_code", None) == SCHEMA_NOT_FOUND
    )


class RegistrySettings(Protocol):
    """The settings this module reads (``WorkerSettings``, ``MonitorSettings``, parsed flags)."""

    @property
    def schema_registry_url(self) -> str | None: ...

    @property
    def schema_registry_basic_auth(self) -> str | None: ...

    @property
    def schema_registry_ca_location(self) -> Path | None: ...


class ConfluentSchemaRegistry:
    """A Confluent-compatible schema registry at ``url``.

    Args:
        url: base URL of the registry API (Confluent: ``http://registry:8081``; Apicurio:
            ``http://registry:8080/apis/ccompat/v7``). ``user:password@`` in it is basic auth.
        basic_auth: ``"user:password"`` for HTTP basic auth, or ``None``. Never shown.
        ca_location: CA certificate (PEM) that verifies an ``https`` registry; ``None`` trusts
            the system's CAs.
        timeout_s: per-request timeout.
        max_retries: retries of a request that failed to connect or got a retriable status
            (408, 429, 5xx), with jittered exponential backoff from ``retries_wait_ms``.

    Raises:
        ConfigError: basic auth both in the URL and in ``basic_auth``, or not ``user:password``.
    """

    def __init__(
        self,
        url: str,
        *,
        basic_auth: str | None = None,
        ca_location: Path | str | None = None,
        timeout_s: float = 5.0,
        max_retries: int = 2,
        retries_wait_ms: int = 200,
    ) -> None:
        self._url, url_auth = _split_user_info(url)
        if url_auth and basic_auth:
            raise ConfigError(
                "schema registry: basic auth is given twice, in the URL and as "
                "--schema-registry-basic-auth; keep one"
            )
        auth = basic_auth or url_auth
        if auth is not None and ":" not in auth:
            raise ConfigError("schema registry basic auth must be USER:PASSWORD (not shown)")
        conf: dict[str, Any] = {
            "url": self._url,
            "timeout": timeout_s,
            "max.retries": max_retries,
            "retries.wait.ms": retries_wait_ms,
            "retries.max.wait.ms": 10 * retries_wait_ms,
        }
        if auth:
            conf["basic.auth.user.info"] = auth
        if ca_location is not None:
            conf["ssl.ca.location"] = str(ca_location)
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self._client: SchemaRegistryClient = SchemaRegistryClient(conf)
        self._by_id: dict[int, Mapping[str, Any]] = {}

    def __repr__(self) -> str:  # the URL without user info; no credentials in reprs
        return f"ConfluentSchemaRegistry(url={self._url!r})"

    def register(self, subject: str, schema_json: Mapping[str, Any]) -> int:
        """Register (or look up) an Avro schema under ``subject``; return its global id.

        Raises:
            SchemaRegistryError: the registry refused it or could not be reached.
        """
        from confluent_kafka.schema_registry import Schema

        text = json.dumps(schema_json, sort_keys=True)
        try:
            schema_id = self._client.register_schema(subject, Schema(text, "AVRO"))
        except _call_errors() as exc:
            raise SchemaRegistryError(
                f"schema registry {self._url}: registering a schema under {subject!r} failed: "
                f"{_describe(exc)}"
            ) from exc
        self._by_id.setdefault(schema_id, schema_json)
        return schema_id

    def schema_by_id(self, schema_id: int) -> Mapping[str, Any]:
        """The schema JSON with global id ``schema_id`` (cached: ids are immutable).

        Raises:
            UnknownSchemaError: the registry does not know the id (404, error code 40403).
            SchemaRegistryError: any other failure, or an answer that is not a JSON schema.
        """
        cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        try:
            schema = self._client.get_schema(schema_id)
        except _call_errors() as exc:
            if _is_unknown_id(exc):
                raise UnknownSchemaError(
                    f"schema id {schema_id} is not registered in the schema registry {self._url}"
                ) from exc
            raise SchemaRegistryError(
                f"schema registry {self._url}: fetching schema id {schema_id} failed: "
                f"{_describe(exc)}"
            ) from exc
        if schema.schema_type not in (None, "AVRO"):
            raise SchemaRegistryError(
                f"schema id {schema_id} is a {schema.schema_type} schema, not Avro"
            )
        try:
            parsed = json.loads(schema.schema_str or "")
        except ValueError as exc:
            raise SchemaRegistryError(
                f"schema registry {self._url} answered schema id {schema_id} without valid JSON"
            ) from exc
        if not isinstance(parsed, Mapping):
            raise SchemaRegistryError(f"schema id {schema_id} is not an Avro record schema")
        self._by_id[schema_id] = parsed
        return parsed

    def close(self) -> None:
        """Close the client's HTTP connections."""
        self._client.close()


def open_schema_registry(settings: RegistrySettings) -> ConfluentSchemaRegistry | None:
    """The registry the settings name, or ``None`` (single-object encoding) when no URL is set.

    Raises:
        ConfigError: the basic auth settings are unusable.
    """
    if not settings.schema_registry_url:
        return None
    return ConfluentSchemaRegistry(
        settings.schema_registry_url,
        basic_auth=settings.schema_registry_basic_auth,
        ca_location=settings.schema_registry_ca_location,
    )


def _split_user_info(url: str) -> tuple[str, str | None]:
    """``http://u:p@host/x`` -> (``http://host/x``, ``"u:p"``); a URL without user info as is."""
    parts = urlsplit(url)
    if parts.username is None:
        return url.rstrip("/"), None
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    plain = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return plain.rstrip("/"), f"{unquote(parts.username)}:{unquote(parts.password or '')}"


def _describe(exc: BaseException) -> str:
    """An error as a message shows it: its class and text (no request URL with credentials:
    the client's URL never carries any)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
