"""The Prometheus edge of ``worker report`` against a local HTTP server that answers as
Prometheus' ``/api/v1/query_range`` does (answer shapes as Prometheus 2.x writes them): the
matrix comes back, the form is what the API takes, errors carry Prometheus' own text and never
the URL's password, basic auth is sent as a header."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.kafka_fixtures import free_port
from worker.core.errors import PrometheusError
from worker.ops.prometheus import PrometheusClient

MATRIX = {
    "status": "success",
    "data": {
        "resultType": "matrix",
        "result": [
            {
                "metric": {"pod": "worker-0"},
                "values": [[1700000000, "12"], [1700000015, "13.5"]],
            }
        ],
    },
}
BAD_QUERY = {
    "status": "error",
    "errorType": "bad_data",
    "error": '1:5: parse error: unexpected "(" in aggregation',
}


class _Server:
    def __init__(self) -> None:
        self.answers: list[tuple[int, bytes]] = []
        self.requests: list[dict[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                server.requests.append(
                    {
                        "path": self.path,
                        "form": dict(urllib.parse.parse_qsl(body)),
                        "auth": self.headers.get("Authorization"),
                    }
                )
                status, payload = server.answers.pop(0)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, status: int, payload: Any) -> None:
        self.answers.append(
            (status, payload if isinstance(payload, bytes) else json.dumps(payload).encode())
        )


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_query_range_returns_the_matrix(server: _Server) -> None:
    server.answer(200, MATRIX)
    client = PrometheusClient(server.url + "/")
    assert (
        client.query_range("up{job='w'}", 1700000000, 1700003600.5, 15)
        == (MATRIX["data"]["result"])
    )
    (request,) = server.requests
    assert request["path"] == "/api/v1/query_range"
    assert request["form"] == {
        "query": "up{job='w'}",
        "start": "1700000000.000",
        "end": "1700003600.500",
        "step": "15s",
    }
    assert request["auth"] is None


def test_a_refused_query_carries_prometheus_error_text(server: _Server) -> None:
    server.answer(400, BAD_QUERY)
    with pytest.raises(PrometheusError, match="parse error: unexpected"):
        PrometheusClient(server.url).query_range("sum((", 0, 60, 15)


@pytest.mark.parametrize(
    ("status", "payload", "message"),
    [
        (503, b"Service Unavailable", "answered HTTP 503"),
        (200, b"<html>a login page</html>", "not JSON"),
        (200, {"status": "success", "data": {"resultType": "vector", "result": []}}, "matrix"),
    ],
)
def test_answers_that_are_not_a_matrix_are_errors(
    server: _Server, status: int, payload: Any, message: str
) -> None:
    server.answer(status, payload)
    with pytest.raises(PrometheusError, match=message):
        PrometheusClient(server.url).query_range("up", 0, 60, 15)


def test_basic_auth_from_the_url_is_a_header_and_never_shown(server: _Server) -> None:
    server.answer(200, MATRIX)
    server.answer(400, BAD_QUERY)
    url = server.url.replace("http://", "http://reader:s3cr%40t@") + "/prom"
    client = PrometheusClient(url)
    client.query_range("up", 0, 60, 15)
    assert server.requests[0]["auth"] == "Basic cmVhZGVyOnMzY3JAdA=="  # reader:s3cr@t
    assert server.requests[0]["path"] == "/prom/api/v1/query_range"
    with pytest.raises(PrometheusError) as raised:
        client.query_range("up", 0, 60, 15)
    assert "s3cr" not in str(raised.value) and "reader" not in str(raised.value)
    assert "s3cr" not in repr(client)


def test_unreachable_is_an_error_naming_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PrometheusError, match=f"Prometheus at {url}: .*refused"):
        PrometheusClient(url, timeout_s=5).query_range("up", 0, 60, 15)
