"""The schema registry client (worker.kafka.schema_registry) on what a real registry cannot show:
the answers a healthy registry never gives (HTTP 500, 401, a 404 that is no unknown id), the
Authorization header on the wire, and credentials kept out of reprs and messages.

Everything a real registry can show (register, fetch, unknown id, a registry that is down, the
Confluent framing read by confluent-kafka's own deserializer) is in
tests/integration/test_schema_registry.py, against Apicurio Registry. These tests run a tiny
``http.server`` on 127.0.0.1 in a thread: no broker.
"""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from worker.config import SCHEMA_REGISTRY_BASIC_AUTH, SettingError
from worker.core.errors import ConfigError, SchemaRegistryError, UnknownSchemaError
from worker.kafka.schema_registry import ConfluentSchemaRegistry, open_schema_registry
from worker.wire.codec import load_schema

PASSWORD = "s3cr3t-Pa55"


class _Answers:
    """What the fake answers per path, and the requests it saw (method, path, headers)."""

    def __init__(self) -> None:
        self.by_path: dict[str, tuple[int, dict[str, Any]]] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.lock = threading.Lock()


def _handler(answers: _Answers) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            if length:
                self.rfile.read(length)
            with answers.lock:
                answers.requests.append((self.command, self.path, dict(self.headers)))
                code, body = answers.by_path.get(
                    self.path.split("?")[0], (404, {"error_code": 40403, "message": "not found"})
                )
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _answer  # noqa: N815  # http.server's naming

    return Handler


@pytest.fixture
def fake() -> Iterator[tuple[str, _Answers]]:
    """A fake registry on 127.0.0.1 (ephemeral port); yields (url, answers)."""
    answers = _Answers()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(answers))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", answers
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _registry(url: str, **kwargs: Any) -> ConfluentSchemaRegistry:
    return ConfluentSchemaRegistry(url, timeout_s=2, retries_wait_ms=1, **kwargs)


def test_http_500_is_a_schema_registry_error_after_the_clients_retries(fake) -> None:
    """A 500 is an infrastructure error (the worker stops), not a data error; the client retries
    it max_retries times first."""
    url, answers = fake
    answers.by_path["/schemas/ids/7"] = (500, {"error_code": 50001, "message": "store down"})
    with pytest.raises(SchemaRegistryError, match="store down") as caught:
        _registry(url, max_retries=2).schema_by_id(7)
    assert not isinstance(caught.value, UnknownSchemaError)
    assert [p for _, p, _ in answers.requests] == ["/schemas/ids/7"] * 3


@pytest.mark.parametrize(
    ("code", "body"),
    [
        (401, {"error_code": 40101, "message": "Unauthorized"}),
        (404, {"error_code": 404, "message": "HTTP 404 Not Found"}),  # a wrong URL path
    ],
    ids=["unauthorized", "404 without 40403"],
)
def test_only_error_code_40403_makes_an_unknown_schema(fake, code: int, body: dict) -> None:
    """401, and a 404 that is not Confluent's 'schema not found' (a URL missing its API path),
    would dead-letter every record if taken for unknown ids: they are SchemaRegistryError."""
    url, answers = fake
    answers.by_path["/schemas/ids/3"] = (code, body)
    with pytest.raises(SchemaRegistryError) as caught:
        _registry(url).schema_by_id(3)
    assert not isinstance(caught.value, UnknownSchemaError)


def test_basic_auth_goes_out_on_every_call_and_never_into_reprs_or_errors(fake) -> None:
    """basic_auth 'user:password' is an Authorization: Basic header on each request; the
    password appears in no repr, str or error message of the client."""
    url, answers = fake
    answers.by_path["/subjects/t-value/versions"] = (200, {"id": 42})
    answers.by_path["/schemas/ids/9"] = (500, {"error_code": 50001, "message": "boom"})
    registry = _registry(url, basic_auth=f"alice:{PASSWORD}", max_retries=0)
    assert registry.register("t-value", load_schema("PurchaseOutcome")) == 42
    with pytest.raises(SchemaRegistryError) as caught:
        registry.schema_by_id(9)
    expected = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    assert [h.get("Authorization") for _, _, h in answers.requests] == [expected, expected]
    for text in (repr(registry), str(registry), str(caught.value), repr(caught.value)):
        assert PASSWORD not in text
        assert expected.split()[1] not in text


def test_user_info_in_the_url_becomes_basic_auth_and_leaves_the_url(fake) -> None:
    """``http://user:password@host`` authenticates like basic_auth; the repr shows the URL
    without it. Both at once is a configuration error."""
    url, answers = fake
    answers.by_path["/schemas/ids/5"] = (200, {"schema": json.dumps(load_schema("BrowsingEvent"))})
    with_user = url.replace("http://", f"http://bob:{PASSWORD}@")
    registry = _registry(with_user)
    assert registry.schema_by_id(5) == load_schema("BrowsingEvent")
    expected = "Basic " + base64.b64encode(f"bob:{PASSWORD}".encode()).decode()
    assert answers.requests[0][2].get("Authorization") == expected
    assert PASSWORD not in repr(registry) and url in repr(registry)
    with pytest.raises(ConfigError, match="given twice"):
        _registry(with_user, basic_auth="carol:x")


def test_settings_build_the_client_and_read_the_password_from_a_file(fake, tmp_path: Path) -> None:
    """``--schema-registry-basic-auth @/path`` reads the file; an unreadable one is a setting
    error that shows neither value nor path; no URL means no registry."""
    url, answers = fake
    answers.by_path["/subjects/s-value/versions"] = (200, {"id": 1})
    secret = tmp_path / "registry-auth"
    secret.write_text(f"dave:{PASSWORD}\n")

    class Settings:
        schema_registry_url = url
        schema_registry_basic_auth = SCHEMA_REGISTRY_BASIC_AUTH.from_text(f"@{secret}")
        schema_registry_ca_location = None

    registry = open_schema_registry(Settings())
    assert registry is not None
    registry.register("s-value", load_schema("BrowsingEvent"))
    expected = "Basic " + base64.b64encode(f"dave:{PASSWORD}".encode()).decode()
    assert answers.requests[0][2].get("Authorization") == expected

    missing = tmp_path / "nope"
    with pytest.raises(SettingError) as caught:
        SCHEMA_REGISTRY_BASIC_AUTH.from_text(f"@{missing}")
    assert str(missing) not in str(caught.value)
    assert "--schema-registry-basic-auth" in str(caught.value)

    Settings.schema_registry_url = None  # type: ignore[assignment]
    assert open_schema_registry(Settings()) is None
