"""The Vertex AI emulator: one service layer behind two fronts — a REST v1 HTTP server
(here) and plaintext gRPC (grpc_front.py, each call transcoded into the REST request the
GAPIC REST transport would send) — answering the official `aiplatform_v1` clients for
custom jobs, hyperparameter tuning jobs, models, endpoints, predictions and operations. Jobs and deployed models run
through pluggable runtimes."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import re
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from google.api import httpbody_pb2
from google.protobuf.message import Message

from localcloud.logstore import LogStore
from localcloud.tls import CERT_FILE, certificate
from localcloud.vertex.endpoints import EndpointService
from localcloud.vertex.grpc_front import VertexGrpcFront
from localcloud.vertex.jobs import JobService
from localcloud.vertex.models import ModelService
from localcloud.vertex.operations import OperationService
from localcloud.vertex.runtime import JobRuntime, ModelRuntime
from localcloud.vertex.state import State
from localcloud.vertex.tuning import TuningService
from localcloud.vertex.wire import ApiError, invalid, not_found, to_json

LOG = logging.getLogger(__name__)

Query = dict[str, str]
# A route handler gets the path's named groups, the query and the JSON body; it returns
# the response message (None for google.protobuf.Empty).
Handler = Callable[[dict[str, str], Query, Any], Message | None]

_LOCATION = r"/v1/projects/(?P<project>[^/:]+)/locations/(?P<location>[^/:]+)"
_MODEL = r"/v1/(?P<name>projects/[^/:]+/locations/[^/:]+/models/[^/:@]+(?:@[^/:@]+)?)"
_OPERATION = re.compile(r"/(?:v1|ui)/(?P<name>projects/[^:]+/operations/[^/:]+)")
MAX_BODY_BYTES = 16 * 1024 * 1024
# Takes and answers a google.api.HttpBody: over HTTP the body itself, not JSON around it.
_RAW_PREDICT = ":rawPredict"


class VertexServer:
    """`with VertexServer(state_dir).start() as server:` serves on `server.url`.

    Owns the runtimes it is given: `stop()` closes them."""

    def __init__(
        self,
        state_dir: Path,
        port: int = 0,
        host: str = "127.0.0.1",
        jobs: JobRuntime | None = None,
        models: ModelRuntime | None = None,
        logs: LogStore | None = None,
        grpc_port: int = 0,
        tls: bool = False,
        tls_dir: Path | None = None,
    ) -> None:
        self._state_dir = Path(state_dir)
        self._host = host
        self._port = port
        self._job_runtime = jobs
        self._model_runtime = models
        self._logs = logs
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._job_service: JobService | None = None
        self._tuning_service: TuningService | None = None
        self._grpc: VertexGrpcFront | None = None
        self._grpc_port = grpc_port
        self._tls = tls
        self._tls_dir = Path(tls_dir) if tls_dir else self._state_dir / "tls"

    @property
    def grpc_host(self) -> str:
        """`host:port` of the gRPC front: the value for VERTEX_EMULATOR_HOST."""
        if self._grpc is None:
            raise RuntimeError("VertexServer is not started: call start() first")
        return self._grpc.host_port

    @property
    def grpc_tls_host(self) -> str | None:
        """`host:port` of the gRPC front over TLS (for clients that insist on TLS, such
        as the Vertex AI SDK); its certificate is `tls_certificate`. None unless tls=True."""
        if self._grpc is None:
            raise RuntimeError("VertexServer is not started: call start() first")
        return self._grpc.tls_host_port

    @property
    def tls_certificate(self) -> Path:
        """The certificate of the TLS front (self-signed; trust it as a root)."""
        return self._tls_dir / CERT_FILE

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("VertexServer is not started: call start() first")
        return f"http://{self._host}:{self._httpd.server_address[1]}"

    def start(self) -> VertexServer:
        state = State.load(self._state_dir)
        operations = OperationService(state)
        job_service = JobService(state, operations, self._job_runtime, self._logs)
        job_service.recover()
        self._job_service = job_service
        tuning = TuningService(self._state_dir, operations, self._job_runtime, self._logs)
        tuning.recover()
        self._tuning_service = tuning
        models = ModelService(state, operations)
        endpoints = EndpointService(state, operations, models, self._model_runtime)
        endpoints.redeploy_all()
        self._routes = [
            *_job_routes(job_service),
            *_tuning_routes(tuning),
            *_model_routes(models),
            *_endpoint_routes(endpoints),
            *_operation_routes(operations),
        ]
        self._httpd = ThreadingHTTPServer((self._host, self._port), _handler_class(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._serve, name="vertex-emulator", daemon=True)
        self._thread.start()
        self._grpc = VertexGrpcFront(
            self.dispatch,
            host=self._host,
            port=self._grpc_port,
            certificate=certificate(self._tls_dir) if self._tls else None,
        ).start()
        return self

    def _serve(self) -> None:
        assert self._httpd is not None
        # A short poll interval keeps stop() quick; idle cost is negligible.
        self._httpd.serve_forever(poll_interval=0.05)

    def stop(self) -> None:
        if self._httpd is None:
            return  # never started, or already stopped
        if self._job_service is not None:
            self._job_service.stop_accepting_updates()
        if self._tuning_service is not None:
            self._tuning_service.stop_accepting_updates()
        if self._grpc is not None:
            self._grpc.stop()
            self._grpc = None
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join()
        for runtime in (self._job_runtime, self._model_runtime):
            if runtime is not None:
                runtime.close()
        self._httpd = None
        self._thread = None

    def __enter__(self) -> VertexServer:
        return self if self._httpd is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def dispatch(self, method: str, path: str, query: Query, body: Any) -> Message | None:
        for route_method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match is not None and route_method == method:
                return handler(match.groupdict(), query, body)
        raise not_found(f"No such Vertex AI REST v1 method: {method} {path}")


def _job_routes(jobs: JobService) -> list[tuple[str, re.Pattern[str], Handler]]:
    base = _LOCATION + "/customJobs"
    one = base + r"/(?P<id>[^/:]+)"
    return [
        ("POST", re.compile(base), lambda p, q, b: jobs.create(p["project"], p["location"], b)),
        ("GET", re.compile(base), lambda p, q, b: jobs.list(p["project"], p["location"], q)),
        ("GET", re.compile(one), lambda p, q, b: jobs.get(p["project"], p["location"], p["id"])),
        (
            "POST",
            re.compile(one + ":cancel"),
            lambda p, q, b: jobs.cancel(p["project"], p["location"], p["id"]),
        ),
        (
            "DELETE",
            re.compile(one),
            lambda p, q, b: jobs.delete(p["project"], p["location"], p["id"]),
        ),
    ]


def _tuning_routes(tuning: TuningService) -> list[tuple[str, re.Pattern[str], Handler]]:
    base = _LOCATION + "/hyperparameterTuningJobs"
    one = base + r"/(?P<id>[^/:]+)"
    return [
        ("POST", re.compile(base), lambda p, q, b: tuning.create(p["project"], p["location"], b)),
        ("GET", re.compile(base), lambda p, q, b: tuning.list(p["project"], p["location"], q)),
        ("GET", re.compile(one), lambda p, q, b: tuning.get(p["project"], p["location"], p["id"])),
        (
            "POST",
            re.compile(one + ":cancel"),
            lambda p, q, b: tuning.cancel(p["project"], p["location"], p["id"]),
        ),
        (
            "DELETE",
            re.compile(one),
            lambda p, q, b: tuning.delete(p["project"], p["location"], p["id"]),
        ),
    ]


def _model_routes(models: ModelService) -> list[tuple[str, re.Pattern[str], Handler]]:
    base = _LOCATION + "/models"
    return [
        (
            "POST",
            re.compile(base + ":upload"),
            lambda p, q, b: models.upload(p["project"], p["location"], b),
        ),
        ("GET", re.compile(base), lambda p, q, b: models.list(p["project"], p["location"], q)),
        ("GET", re.compile(_MODEL), lambda p, q, b: models.get(p["name"])),
        ("PATCH", re.compile(_MODEL), lambda p, q, b: models.update(p["name"], q, b)),
        (
            "GET",
            re.compile(_MODEL + ":listVersions"),
            lambda p, q, b: models.list_versions(p["name"], q),
        ),
        ("DELETE", re.compile(_MODEL), lambda p, q, b: models.delete(p["name"])),
        (
            "DELETE",
            re.compile(_MODEL + ":deleteVersion"),
            lambda p, q, b: models.delete_version(p["name"]),
        ),
        (
            "POST",
            re.compile(_MODEL + ":mergeVersionAliases"),
            lambda p, q, b: models.merge_version_aliases(p["name"], b),
        ),
    ]


def _endpoint_routes(endpoints: EndpointService) -> list[tuple[str, re.Pattern[str], Handler]]:
    base = _LOCATION + "/endpoints"
    one = base + r"/(?P<id>[^/:]+)"

    def on_one(method: Callable[[str, str, str, Any], Message | None]) -> Handler:
        return lambda p, q, b: method(p["project"], p["location"], p["id"], b)

    return [
        (
            "POST",
            re.compile(base),
            lambda p, q, b: endpoints.create(p["project"], p["location"], q, b),
        ),
        ("GET", re.compile(base), lambda p, q, b: endpoints.list(p["project"], p["location"], q)),
        (
            "GET",
            re.compile(one),
            lambda p, q, b: endpoints.get(p["project"], p["location"], p["id"]),
        ),
        (
            "PATCH",
            re.compile(one),
            lambda p, q, b: endpoints.update(p["project"], p["location"], p["id"], q, b),
        ),
        (
            "DELETE",
            re.compile(one),
            lambda p, q, b: endpoints.delete(p["project"], p["location"], p["id"]),
        ),
        ("POST", re.compile(one + ":deployModel"), on_one(endpoints.deploy_model)),
        ("POST", re.compile(one + ":undeployModel"), on_one(endpoints.undeploy_model)),
        ("POST", re.compile(one + ":predict"), on_one(endpoints.predict)),
        ("POST", re.compile(one + _RAW_PREDICT), on_one(endpoints.raw_predict)),
    ]


def _operation_routes(operations: OperationService) -> list[tuple[str, re.Pattern[str], Handler]]:
    # Clients poll /ui/{name} (the first HTTP rule of GetOperation); /v1/{name} is the
    # documented one. Answer both.
    return [("GET", _OPERATION, lambda p, q, b: operations.get(p["name"]))]


def _handler_class(server: VertexServer) -> type[BaseHTTPRequestHandler]:
    class VertexRequestHandler(BaseHTTPRequestHandler):
        # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's
        # algorithm and the client's delayed ACK add ~40 ms to every response.
        disable_nagle_algorithm = True

        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PATCH(self) -> None:
            self._serve("PATCH")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def log_message(self, format: str, *args: Any) -> None:
            LOG.debug("%s " + format, self.address_string(), *args)

        def _serve(self, method: str) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            # `$alt=json;enum-encoding=int` asks for enums as numbers (what GAPIC sends).
            ints = "enum-encoding=int" in query.get("$alt", "")
            path = unquote(parts.path)
            try:
                raw = self._read_raw()
                body = _http_body(raw, self.headers) if path.endswith(_RAW_PREDICT) else _json(raw)
                result = server.dispatch(method, path, query, body)
                if isinstance(result, httpbody_pb2.HttpBody):
                    self._send(HTTPStatus.OK, result.content_type, result.data)
                    return
                payload = {} if result is None else to_json(result, ints)
                self._reply(HTTPStatus.OK, payload)
            except ApiError as err:
                self._reply(err.http_status, err.body())
            except Exception as err:  # a bug must still answer, or the client hangs
                LOG.exception("Vertex emulator failed on %s %s", method, self.path)
                error = ApiError("INTERNAL", f"internal error in the Vertex emulator: {err!r}")
                self._reply(error.http_status, error.body())

        def _read_raw(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                raise invalid(f"request body of {length} bytes exceeds {MAX_BODY_BYTES}")
            return self.rfile.read(length) if length else b""

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            self._send(status, "application/json; charset=UTF-8", json.dumps(payload).encode())

        def _send(self, status: int, content_type: str, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return VertexRequestHandler


def _json(raw: bytes) -> Any:
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError as err:
        raise invalid(f"request body is not valid JSON: {err}") from err


def _http_body(raw: bytes, headers: Any) -> dict[str, Any]:
    """A rawPredict request as the RawPredictRequest the service layer takes (the form the
    gRPC front hands over too): the HTTP body, whatever it holds, is `http_body.data`."""
    content_type = headers.get("Content-Type") or "application/json"
    return {"httpBody": {"contentType": content_type, "data": base64.b64encode(raw).decode()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m localcloud.vertex.server",
        description="Serve the Vertex AI REST v1 emulator (no job or model runtime) until Ctrl-C.",
    )
    parser.add_argument("--dir", type=Path, required=True, help="state directory")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    server = VertexServer(args.dir, port=args.port, host=args.host).start()
    print(f"Vertex AI emulator on {server.url} (state in {args.dir}); Ctrl-C stops it", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
