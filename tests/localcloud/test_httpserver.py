"""localcloud's one small HTTP server (werkzeug routes, keep-alive, body limit, Google's
JSON errors) and the webhook receiver built on it, over real sockets."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from werkzeug.wrappers import Request, Response

from localcloud.errors import LocalCloudError
from localcloud.httpserver import HttpServer, Routes, json_app, json_response, route
from localcloud.vertex.wire import invalid, not_found
from localcloud.webhook import WebhookSink

ROUTES = Routes(
    [
        route("GET", "/v1/jobs/<segment:id>", "get"),
        route("POST", "/v1/jobs/<segment:id>:cancel", "cancel"),
        route("POST", "/echo", "echo"),
        route("GET", "/boom", "boom"),
        route("GET", "/refused", "refused"),
        route("GET", "/empty", "empty"),
    ]
)


def _serve(request: Request) -> Response:
    found = ROUTES.match(request.method, request.path)
    if found is None:
        raise not_found(f"nothing at {request.path}")
    endpoint, values = found
    if endpoint == "echo":
        return json_response({"length": len(request.get_data())})
    if endpoint == "boom":
        raise RuntimeError("a bug")
    if endpoint == "refused":
        raise invalid("field `x` must be positive")
    if endpoint == "empty":
        return Response("dropped", status=204)
    return json_response({"endpoint": endpoint, **values, "port": request.environ["REMOTE_PORT"]})


@pytest.fixture
def server() -> Iterator[HttpServer]:
    with HttpServer(json_app("test server", _serve), name="test server", max_body_bytes=64) as s:
        yield s


def _get(connection: http.client.HTTPConnection, method: str, path: str, body: bytes = b""):
    connection.request(method, path, body=body or None)
    response = connection.getresponse()
    return response, response.read()


def test_routes_take_google_custom_verbs_apart_from_ids() -> None:
    assert ROUTES.match("GET", "/v1/jobs/12") == ("get", {"id": "12"})
    assert ROUTES.match("POST", "/v1/jobs/12:cancel") == ("cancel", {"id": "12"})
    assert ROUTES.match("GET", "/v1/jobs/12:cancel") is None  # wrong method
    assert ROUTES.match("POST", "/v1/jobs/12:pause") is None  # no such verb
    assert ROUTES.match("GET", "/v1//jobs/12") is None  # no slash merging, no redirect
    assert ROUTES.match("GET", "/v1/jobs/12/") is None


def test_one_keep_alive_connection_carries_answers_and_google_errors(server: HttpServer) -> None:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    found, found_body = _get(connection, "GET", "/v1/jobs/7")
    missing, missing_body = _get(connection, "GET", "/v1/nothing")
    refused, refused_body = _get(connection, "GET", "/refused")
    bug, bug_body = _get(connection, "GET", "/boom")
    empty, empty_body = _get(connection, "GET", "/empty")
    again, again_body = _get(connection, "GET", "/v1/jobs/8")

    assert found.status == 200 and found.getheader("Content-Type").startswith("application/json")
    assert json.loads(found_body)["endpoint"] == "get"
    assert missing.status == 404
    assert json.loads(missing_body)["error"] == {
        "code": 404,
        "message": "nothing at /v1/nothing",
        "status": "NOT_FOUND",
    }
    assert refused.status == 400 and "field `x`" in json.loads(refused_body)["error"]["message"]
    assert bug.status == 500 and json.loads(bug_body)["error"]["status"] == "INTERNAL"
    assert "internal error in the test server" in json.loads(bug_body)["error"]["message"]
    # A 204 carries no body, so the next answer on the connection is read intact.
    assert (empty.status, empty_body, empty.getheader("Content-Length")) == (204, b"", None)
    assert again.status == 200
    # Every request came over the same connection.
    assert json.loads(found_body)["port"] == json.loads(again_body)["port"]


def test_bodies_are_read_whole_up_to_the_limit(server: HttpServer) -> None:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
    _, exact = _get(connection, "POST", "/echo", b"x" * 64)
    connection.request("POST", "/echo", body=iter([b"x" * 10, b"y" * 20]), encode_chunked=True)
    chunked = connection.getresponse()
    chunked_body = chunked.read()
    too_big, too_big_body = _get(connection, "POST", "/echo", b"x" * 65)

    assert json.loads(exact) == {"length": 64}
    assert chunked.status == 200 and json.loads(chunked_body) == {"length": 30}
    assert too_big.status == 400
    error = json.loads(too_big_body)["error"]
    assert error["status"] == "INVALID_ARGUMENT" and "65 bytes exceeds" in error["message"]
    # The unread body is still on the connection: the server closes it.
    assert too_big.getheader("Connection") == "close"


def test_stop_closes_idle_connections_and_start_listens_on_the_same_port() -> None:
    server = HttpServer(json_app("test server", _serve), name="test server").start()
    port = server.port
    idle = socket.create_connection((server.host, port), timeout=10)
    idle.sendall(b"GET /v1/jobs/1 HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = http.client.HTTPResponse(idle)
    answer.begin()
    assert answer.status == 200 and json.loads(answer.read())["id"] == "1"

    server.stop()
    # A stopped server does not answer through a connection opened before.
    assert idle.recv(4096) == b""
    idle.close()
    try:
        server.start()
        assert server.port == port
        reply = requests.get(f"{server.url}/v1/jobs/2", timeout=10)
        assert reply.json()["id"] == "2"
    finally:
        server.stop()


def test_a_taken_port_is_refused_with_its_number(server: HttpServer) -> None:
    with pytest.raises(LocalCloudError, match=f"cannot listen on 127.0.0.1:{server.port}"):
        HttpServer(json_app("other", _serve), name="other", port=server.port).start()


# -- the webhook receiver -------------------------------------------------------------------


def test_webhook_receiver_keeps_json_messages_and_refuses_the_rest(tmp_path: Path) -> None:
    lines = tmp_path / "logs" / "webhook.jsonl"
    with WebhookSink(lines, route="/hook/token") as hook:
        sent = requests.post(hook.url, json={"text": "run r1 deployed"}, timeout=10)
        other = requests.post(hook.url, json={"blocks": []}, timeout=10)
        bad = requests.post(hook.url, data=b"not json", timeout=10)
        wrong_method = requests.get(hook.url, timeout=10)

        assert hook.url.endswith("/hook/token")
        assert (sent.status_code, sent.text, other.status_code) == (200, "ok", 200)
        assert (bad.status_code, wrong_method.status_code) == (400, 405)
        assert hook.received() == [{"text": "run r1 deployed"}, {"blocks": []}]
        assert hook.texts() == ["run r1 deployed"]
        assert [json.loads(line) for line in lines.read_text().splitlines()] == hook.received()


def test_webhook_wait_for_wakes_on_the_message_and_times_out_naming_what_came() -> None:
    with WebhookSink() as hook:
        sender = threading.Thread(
            target=lambda: requests.post(hook.url, json={"text": "late"}, timeout=10)
        )
        sender.start()
        got = hook.wait_for(lambda messages: bool(messages), timeout=30)
        sender.join()

        assert got == [{"text": "late"}]
        with pytest.raises(TimeoutError, match="received \\[\\{'text': 'late'\\}\\]"):
            hook.wait_for(lambda messages: len(messages) > 1, timeout=0.2)
