"""A real HTTP proxy that injects failures into the traffic it forwards.

Put it between a function and an emulator (STORAGE_EMULATOR_HOST, VERTEX_API_ENDPOINT;
`GrpcFaultProxy` for VERTEX_EMULATOR_HOST) to make chosen requests answer 503/429 or fail after the upstream did the work — the
crash between two steps that idempotency must survive. `Chaos` does the same at random
(seeded) to a share of all calls: sustained faults rather than chosen ones."""

from __future__ import annotations

import http.client
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from localcloud.procs import free_port

Match = Callable[[str, str, bytes], bool]  # (method, path with query, body) -> bool


@dataclass
class Rule:
    match: Match
    status: int  # 0: no failure, the request is only held (a slow upstream)
    times: int = 1
    after_upstream: bool = False  # forward first (the work happens), then fail the reply
    hold: threading.Event | None = None  # block the matched request until this is set
    hits: int = 0


# What Chaos injects: an error answer without forwarding (503, 429), the connection dropped
# without an answer, a stall then a drop (the client's view of a timeout), or the request
# forwarded and applied and then answered 503 (the reply lost after the work was done).
CHAOS_KINDS = ("503", "429", "drop", "stall", "after")


@dataclass
class Chaos:
    """Seeded random faults on a share (`rate`) of the calls that `match`."""

    rate: float
    seed: int = 0
    kinds: tuple[str, ...] = CHAOS_KINDS
    match: Match = lambda _m, _p, _b: True
    stall_s: float = 1.0
    injected: Counter[str] = field(default_factory=Counter)
    seen: int = 0  # calls that matched
    _random: random.Random = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def draw(self, method: str, path: str, body: bytes) -> str | None:
        """The fault for this call, or None to relay it untouched."""
        if not self.match(method, path, body):
            return None
        with self._lock:
            self.seen += 1
            if self._random.random() >= self.rate:
                return None
            kind = self._random.choice(self.kinds)
            self.injected[kind] += 1
            return kind

    @property
    def total(self) -> int:
        return sum(self.injected.values())


@dataclass
class FaultProxy:
    upstream: str  # http://host:port
    rules: list[Rule] = field(default_factory=list)
    port: int = 0
    requests: int = 0  # requests relayed, for "requests per event" measurements
    chaos: Chaos | None = None
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(
        self,
        match: Match,
        status: int,
        times: int = 1,
        after_upstream: bool = False,
        hold: threading.Event | None = None,
    ) -> Rule:
        rule = Rule(match, status, times, after_upstream, hold)
        with self._lock:
            self.rules.append(rule)
        return rule

    def _take(self, method: str, path: str, body: bytes) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.hits < rule.times and rule.match(method, path, body):
                    rule.hits += 1
                    return rule
        return None

    def start(self) -> FaultProxy:
        self.port = self.port or free_port()
        proxy = self
        target = urlsplit(self.upstream)

        class Handler(BaseHTTPRequestHandler):
            # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's
            # algorithm and the client's delayed ACK add ~40 ms to every response.
            disable_nagle_algorithm = True

            protocol_version = "HTTP/1.1"
            _upstream: http.client.HTTPConnection | None = None

            def log_message(self, *args: object) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    proxy.requests += 1
                rule = proxy._take(self.command, self.path, body)
                if rule is not None and rule.hold is not None:
                    rule.hold.wait(timeout=60)
                if rule is not None and rule.status and not rule.after_upstream:
                    return self._reply(
                        rule.status,
                        b'{"error": {"code": %d, "message": "injected"}}' % rule.status,
                        {},
                    )
                fault = None
                if rule is None and proxy.chaos is not None:
                    fault = proxy.chaos.draw(self.command, self.path, body)
                if fault in ("503", "429"):
                    status = int(fault)  # type: ignore[arg-type]
                    return self._reply(
                        status, b'{"error": {"code": %d, "message": "injected"}}' % status, {}
                    )
                if fault in ("drop", "stall"):
                    if fault == "stall" and proxy.chaos is not None:
                        time.sleep(proxy.chaos.stall_s)
                    self.close_connection = True  # no answer at all
                    return None
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")
                }
                upstream, data = self._exchange(body, headers)
                if rule is not None and rule.status:
                    return self._reply(
                        rule.status,
                        b'{"error": {"code": %d, "message": "injected"}}' % rule.status,
                        {},
                    )
                if fault == "after":
                    return self._reply(503, b'{"error": {"code": 503, "message": "injected"}}', {})
                passed = {
                    k: v
                    for k, v in upstream.getheaders()
                    if k.lower() not in ("transfer-encoding", "connection", "content-length")
                }
                self._reply(upstream.status, data, passed)

            def _exchange(
                self, body: bytes, headers: dict[str, str]
            ) -> tuple[http.client.HTTPResponse, bytes]:
                """The upstream's answer, over a connection this client connection keeps
                (a new one per request cost upstream and proxy alike a connect each)."""
                conn = self._upstream
                reused = conn is not None
                if conn is None:
                    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                    self._upstream = conn
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    upstream = conn.getresponse()
                    data = upstream.read()
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                    conn.close()
                    self._upstream = None
                    if not reused:
                        raise
                    # A kept connection the upstream had closed while idle: it read nothing.
                    return self._exchange(body, headers)
                if upstream.will_close:
                    conn.close()
                    self._upstream = None
                return upstream, data

            def finish(self) -> None:
                super().finish()
                if self._upstream is not None:
                    self._upstream.close()

            def _reply(self, status: int, data: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if "content-type" not in {k.lower() for k in headers}:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _relay

        self._server = _QuietServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up on a dropped or stalled call: expected here


# HTTP statuses of the rules, as the gRPC codes Google's gateways map them to.
_GRPC_CODES = {
    400: "INVALID_ARGUMENT",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


@dataclass
class GrpcFaultProxy:
    """The same proxy for a plaintext gRPC upstream (host:port): unary calls are relayed as
    raw bytes, and a matching rule answers the gRPC status of its HTTP status. Rules see
    ("POST", "/package.Service/Method", request bytes)."""

    upstream: str  # host:port
    rules: list[Rule] = field(default_factory=list)
    port: int = 0
    requests: int = 0
    chaos: Chaos | None = None
    _server: Any = None
    _channel: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    fail = FaultProxy.fail
    _take = FaultProxy._take  # type: ignore[misc]  # same fields, same rule matching

    def start(self) -> GrpcFaultProxy:
        import grpc

        self._channel = grpc.insecure_channel(self.upstream)
        proxy = self

        def relay(path: str) -> Callable[[bytes, Any], bytes]:
            forward = proxy._channel.unary_unary(path)

            def call(data: bytes, context: Any) -> bytes:
                with proxy._lock:
                    proxy.requests += 1
                rule = proxy._take("POST", path, data)
                if rule is not None and rule.hold is not None:
                    rule.hold.wait(timeout=60)
                if rule is not None and rule.status and not rule.after_upstream:
                    context.abort(getattr(grpc.StatusCode, _GRPC_CODES[rule.status]), "injected")
                fault = None
                if rule is None and proxy.chaos is not None:
                    fault = proxy.chaos.draw("POST", path, data)
                if fault in ("503", "429"):
                    code = _GRPC_CODES[int(fault)]  # type: ignore[arg-type]
                    context.abort(getattr(grpc.StatusCode, code), "injected")
                if fault in ("drop", "stall"):
                    if fault == "stall" and proxy.chaos is not None:
                        time.sleep(proxy.chaos.stall_s)
                    # What a client sees of a connection lost mid-call.
                    context.abort(grpc.StatusCode.UNAVAILABLE, "injected: connection lost")
                try:
                    reply = forward(data, timeout=60)
                except grpc.RpcError as err:
                    context.abort(err.code(), err.details())
                if rule is not None and rule.status:
                    context.abort(getattr(grpc.StatusCode, _GRPC_CODES[rule.status]), "injected")
                if fault == "after":
                    context.abort(grpc.StatusCode.UNAVAILABLE, "injected after the call applied")
                return bytes(reply)

            return call

        class Handler(grpc.GenericRpcHandler):
            def service(self, details: Any) -> Any:
                return grpc.unary_unary_rpc_method_handler(relay(details.method))

        self._server = grpc.server(ThreadPoolExecutor(max_workers=32), handlers=[Handler()])
        self.port = self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._channel.close()
