"""Batch requests for localcloud's Cloud Storage proxy: `POST /batch/storage/v1`, which
fake-gcs-server lacks, served as GCS serves it (cloud.google.com/storage/docs/batch).

The request is `multipart/mixed`; each part is an `application/http` JSON API call (request
line, headers, blank line, body). Each call is sent back through the proxy itself, one
after another on one kept-alive connection, so that it gets the proxy's full semantics
(a delete in a versioned bucket keeps the generation, say). The answer is `multipart/mixed`
too: one `application/http` part per call, in order, holding that call's HTTP response.

As on GCS: at most 100 calls in a batch; uploads, downloads and nested batches are refused
per part, without being sent; headers of the batch request other than its `Content-*` ones
apply to every call that does not set them itself."""

from __future__ import annotations

import http.client
import io
import json
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.message import Message
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from localcloud.gcs_relay import JSON_TYPE, UPSTREAM_TIMEOUT_S, Answer, Exchange

BATCH_PATH = "/batch/storage/v1"
MAX_PARTS = 100  # GCS's limit
_JSON_API = "/storage/v1/"
# What a call may not carry over from its own or the batch's headers: the framing and the
# encoding are this module's (the client reads the whole answer as UTF-8 text).
_CALL_DROPS = {
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "te",
    "trailer", "upgrade", "expect", "accept-encoding", "mime-version",
}  # fmt: skip
# Framing of a call's answer that its part sets anew.
_ANSWER_DROPS = {"content-length", "transfer-encoding", "connection", "keep-alive"}


class BatchRefused(ValueError):
    """The batch as a whole cannot be served (answered 400, no call sent)."""


@dataclass(frozen=True)
class Call:
    """One JSON API call of a batch. `host` is the authority its URL or headers name."""

    method: str
    target: str
    host: str | None
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True)
class Part:
    """One part of a batch: its Content-ID and the call it carries, or why it is answered
    400 without being sent."""

    content_id: str
    call: Call | None = None
    refusal: str = ""


def serve(ex: Exchange, host: str, port: int, upstream: tuple[str, int] | None = None) -> None:
    """Answer a batch request whose calls go to the proxy listening on `host`:`port`; a
    plain delete (of the live object, without preconditions: what the proxy relays as it
    is) straight to the server behind it at `upstream`, when given. A flush deletes
    thousands of records in batches: a second pass through the proxy each cost it as much
    again."""
    try:
        raws = split(ex.read_body(), _boundary(ex.headers))
    except BatchRefused as err:
        return ex.reply_error(400, str(err), "invalid")
    parts = [read_part(raw, index) for index, raw in enumerate(raws, 1)]
    shared = _shared_headers(ex.forwarded_headers())
    default_host = ex.headers.get("Host") or f"{host}:{port}"
    proxy = http.client.HTTPConnection(_loopback(host), port, timeout=UPSTREAM_TIMEOUT_S)
    behind = http.client.HTTPConnection(*upstream, timeout=UPSTREAM_TIMEOUT_S) if upstream else None
    try:
        answers = []
        for part in parts:
            if part.call is None:
                answers.append(error_answer(400, part.refusal, "invalid"))
            elif behind is not None and plain_delete(part.call):
                answers.append(deleted(_carry_out(behind, part.call, shared, default_host)))
            else:
                answers.append(_carry_out(proxy, part.call, shared, default_host))
    finally:
        proxy.close()
        if behind is not None:
            behind.close()
    boundary = f"batch_{secrets.token_urlsafe(18)}"
    body = encode_reply(boundary, zip((part.content_id for part in parts), answers, strict=True))
    ex.reply(200, [("Content-Type", f"multipart/mixed; boundary={boundary}")], body)


# -- reading the request --------------------------------------------------------------


def _boundary(headers: Message) -> str:
    if headers.get_content_type() != "multipart/mixed":
        raise BatchRefused(
            "a batch request is multipart/mixed, not "
            f"{headers.get('Content-Type') or 'without a Content-Type'}"
        )
    boundary = headers.get_boundary()
    if not boundary:
        raise BatchRefused("the batch request's multipart/mixed Content-Type has no boundary")
    return boundary


def split(body: bytes, boundary: str) -> list[bytes]:
    """The parts of a multipart body (RFC 2046 5.1.1), each its headers and content; the
    line breaks may be CRLF or LF (the python client sends LF)."""
    delimiter = re.compile(
        rb"(?:^|\r?\n)--" + re.escape(boundary.encode()) + rb"(?P<close>--)?[ \t]*(?:\r?\n|\Z)"
    )
    parts: list[bytes] = []
    start: int | None = None  # where the part being read begins
    for match in delimiter.finditer(body):
        if start is not None:
            parts.append(body[start : match.start()])
        if match["close"]:
            break
        start = match.end()
        if len(parts) >= MAX_PARTS:
            raise BatchRefused(f"a batch request holds at most {MAX_PARTS} calls")
    else:
        raise BatchRefused(
            f"the batch request's body does not end with its closing boundary --{boundary}--"
        )
    if not parts:
        raise BatchRefused("the batch request holds no calls")
    return parts


def read_part(raw: bytes, index: int) -> Part:
    """Part `index` (from 1) of a batch: a JSON API call, or a refusal."""
    stream = io.BytesIO(raw)
    try:
        part_headers = http.client.parse_headers(stream)
    except http.client.HTTPException as err:
        return Part(str(index), refusal=f"part {index} has malformed headers: {err}")
    content_id = (part_headers.get("Content-ID") or "").strip().strip("<>") or str(index)
    if part_headers.get_content_type() != "application/http":
        return Part(content_id, refusal=f"part {index} is not application/http")
    try:
        call = _read_call(stream)
    except ValueError as err:
        return Part(content_id, refusal=f"part {index}: {err}")
    return Part(content_id, call)


def _read_call(stream: io.BytesIO) -> Call:
    line = stream.readline().decode("latin-1").strip()
    words = line.split(" ")
    if len(words) != 3 or not words[2].startswith("HTTP/"):
        raise ValueError(f"{line!r} is not an HTTP request line (METHOD URL HTTP/1.1)")
    method, url, _ = words
    try:
        headers = http.client.parse_headers(stream)
    except http.client.HTTPException as err:
        raise ValueError(f"malformed headers: {err}") from err
    body = stream.read()
    length = headers.get("Content-Length", "")
    if length.isdigit() and int(length) <= len(body):
        body = body[: int(length)]
    split_url = urlsplit(url)
    _check_path(split_url.path, split_url.query)
    target = split_url.path + (f"?{split_url.query}" if split_url.query else "")
    return Call(
        method=method.upper(),
        target=target,
        host=split_url.netloc or headers.get("Host"),
        headers=tuple(headers.items()),
        body=body,
    )


def _check_path(path: str, query: str) -> None:
    """Only JSON API calls go in a batch, as on GCS."""
    if path.startswith("/batch/"):
        raise ValueError("a batch cannot hold another batch")
    if not path.startswith(_JSON_API) or any(seg in (".", "..") for seg in path.split("/")):
        raise ValueError(
            f"{path} is not a Cloud Storage JSON API call; uploads and downloads cannot be batched"
        )
    if parse_qs(query).get("alt") == ["media"]:
        raise ValueError(f"{path}?alt=media is a download; downloads cannot be batched")


def _shared_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The batch request's headers that apply to each call: all but its Content-* ones."""
    return [(k, v) for k, v in headers
            if not k.lower().startswith("content-") and k.lower() not in _CALL_DROPS]  # fmt: skip


# -- carrying the calls out ----------------------------------------------------------


def _carry_out(
    connection: http.client.HTTPConnection,
    call: Call,
    shared: Sequence[tuple[str, str]],
    default_host: str,
) -> Answer:
    own = [(k, v) for k, v in call.headers if k.lower() not in _CALL_DROPS]
    named = {k.lower() for k, _ in own}
    headers = [*((k, v) for k, v in shared if k.lower() not in named), *own]
    # The host the call names, so that the links in the resources it gets point there.
    headers += [("Host", call.host or default_host), ("Accept-Encoding", "identity")]
    if call.body or call.method in ("POST", "PUT", "PATCH"):
        headers.append(("Content-Length", str(len(call.body))))
    try:
        connection.putrequest(call.method, call.target, skip_host=True, skip_accept_encoding=True)
        for key, value in headers:
            connection.putheader(key, value)
        connection.endheaders(call.body or None)  # one write with the headers: no Nagle wait
        return Answer.read(connection.getresponse())
    except (OSError, http.client.HTTPException) as err:
        connection.close()  # the next call opens a fresh connection
        return error_answer(503, f"Cloud Storage did not answer this call: {err}", "backendError")


def plain_delete(call: Call) -> bool:
    """A delete of an object's live generation with no precondition."""
    query = parse_qs(urlsplit(call.target).query)
    return (
        call.method == "DELETE"
        and "/o/" in call.target
        and "generation" not in query
        and not any(name.startswith("if") for name in query)
    )


def deleted(answer: Answer) -> Answer:
    """fake-gcs-server answers an object delete 200 with a `null` body, GCS 204 No Content
    (which a batch's caller may read)."""
    if answer.status != 200:
        return answer
    headers = [(k, v) for k, v in answer.headers if k.lower() != "content-type"]
    return Answer(204, "No Content", headers, b"")


def _loopback(host: str) -> str:
    """An address to reach a server listening on `host` from this machine."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


# -- the answer -----------------------------------------------------------------------


def error_answer(status: int, message: str, reason: str) -> Answer:
    """Google's error shape, as GCS answers it."""
    error = {"code": status, "message": message,
             "errors": [{"message": message, "domain": "global", "reason": reason}]}  # fmt: skip
    body = json.dumps({"error": error}).encode()
    return Answer(status, HTTPStatus(status).phrase, [("Content-Type", JSON_TYPE)], body)


def encode_reply(boundary: str, answers: Iterable[tuple[str, Answer]]) -> bytes:
    """The body of a batch answer: per call, its Content-ID and its HTTP response."""
    out = io.BytesIO()
    for content_id, answer in answers:
        out.write(f"--{boundary}\r\n".encode())
        out.write(b"Content-Type: application/http\r\n")
        out.write(f"Content-ID: <response-{content_id}>\r\n\r\n".encode())
        out.write(_response_of(answer))
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def _response_of(answer: Answer) -> bytes:
    # The python client reads the status from the second word of three: a reason is a must.
    reason = answer.reason or _phrase(answer.status)
    headers = [(k, v) for k, v in answer.headers if k.lower() not in _ANSWER_DROPS]
    if not any(k.lower() == "content-type" for k, _ in headers):
        headers.append(("Content-Type", JSON_TYPE))
    headers.append(("Content-Length", str(len(answer.body))))
    lines = [f"HTTP/1.1 {answer.status} {reason}", *(f"{k}: {v}" for k, v in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1") + answer.body


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
