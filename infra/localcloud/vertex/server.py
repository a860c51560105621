"""The Vertex AI emulator: one service layer behind two fronts — a REST v1 HTTP server
(here) and plaintext gRPC (grpc_front.py, each call transcoded into the REST request the
GAPIC REST transport would send) — answering the official `aiplatform_v1` clients for
custom jobs, hyperparameter tuning jobs, training pipelines, batch predictions, models,
endpoints, predictions and operations. Jobs and deployed models run through pluggable
runtimes."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from google.api import httpbody_pb2
from google.protobuf.message import Message
from werkzeug.routing import BaseConverter, Rule
from werkzeug.wrappers import Request, Response

from localcloud.httpserver import HttpServer, Routes, json_app, json_response, route
from localcloud.logstore import LogStore
from localcloud.tls import CERT_FILE, certificate
from localcloud.vertex.batch import BatchService
from localcloud.vertex.endpoints import EndpointService
from localcloud.vertex.grpc_front import VertexGrpcFront
from localcloud.vertex.jobs import JobService
from localcloud.vertex.models import ModelService
from localcloud.vertex.operations import OperationService
from localcloud.vertex.pipelines import PipelineService
from localcloud.vertex.runtime import JobRuntime, ModelRuntime
from localcloud.vertex.state import State
from localcloud.vertex.tuning import TuningService
from localcloud.vertex.wire import invalid, not_found, to_json

LOG = logging.getLogger(__name__)

Query = dict[str, str]
# A route handler gets the path's named values, the query and the JSON body; it returns
# the response message (None for google.protobuf.Empty). Routes are werkzeug rules whose
# endpoint is the handler; `<segment:x>` is one path segment without a `:verb` suffix.
Handler = Callable[[dict[str, str], Query, Any], Message | None]

_LOCATION = "/v1/projects/<segment:project>/locations/<segment:location>"
_MODEL = "/v1/<model:name>"
MAX_BODY_BYTES = 16 * 1024 * 1024
# Takes and answers a google.api.HttpBody: over HTTP the body itself, not JSON around it.
_RAW_PREDICT = ":rawPredict"


class _ModelName(BaseConverter):
    """A model's resource name, with an optional `@version` or `@alias` (`models/7@2`)."""

    regex = r"projects/[^/:]+/locations/[^/:]+/models/[^/:@]+(?:@[^/:@]+)?"
    part_isolating = False


class _OperationName(BaseConverter):
    """An operation's resource name, under a location or under the resource it acts on."""

    regex = r"projects/[^:]+/operations/[^/:]+"
    part_isolating = False


_CONVERTERS: dict[str, type[BaseConverter]] = {"model": _ModelName, "operation": _OperationName}


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
        self._httpd: HttpServer | None = None
        self._routes = Routes()
        self._job_service: JobService | None = None
        self._tuning_service: TuningService | None = None
        self._pipeline_service: PipelineService | None = None
        self._batch_service: BatchService | None = None
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
        return self._httpd.url

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
        pipelines = PipelineService(self._state_dir, operations, job_service, models)
        pipelines.recover()
        self._pipeline_service = pipelines
        batch = BatchService(
            self._state_dir, operations, models, self._job_runtime, self._model_runtime
        )
        batch.recover()
        self._batch_service = batch
        self._routes = Routes(
            [
                *_job_routes(job_service),
                *_tuning_routes(tuning),
                *_resource_routes("trainingPipelines", pipelines),
                *_resource_routes("batchPredictionJobs", batch),
                *_model_routes(models),
                *_endpoint_routes(endpoints),
                *_operation_routes(operations),
            ],
            _CONVERTERS,
        )
        self._httpd = HttpServer(
            json_app("Vertex emulator", self._serve_http),
            name="Vertex emulator",
            host=self._host,
            port=self._port,
            max_body_bytes=MAX_BODY_BYTES,
        ).start()
        self._grpc = VertexGrpcFront(
            self.dispatch,
            host=self._host,
            port=self._grpc_port,
            certificate=certificate(self._tls_dir) if self._tls else None,
        ).start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return  # never started, or already stopped
        if self._job_service is not None:
            self._job_service.stop_accepting_updates()
        if self._tuning_service is not None:
            self._tuning_service.stop_accepting_updates()
        if self._pipeline_service is not None:
            self._pipeline_service.stop()
        if self._batch_service is not None:
            self._batch_service.stop_accepting_updates()
        if self._grpc is not None:
            self._grpc.stop()
            self._grpc = None
        self._httpd.stop()
        for runtime in (self._job_runtime, self._model_runtime):
            if runtime is not None:
                runtime.close()
        self._httpd = None

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
        """The one entry point of both fronts: `path` as the REST transport sends it
        (`/v1/projects/.../customJobs/123:cancel`), its query, and the JSON body."""
        found = self._routes.match(method, path)
        if found is None:
            raise not_found(f"No such Vertex AI REST v1 method: {method} {path}")
        handler, params = found
        return handler(params, query, body)

    def _serve_http(self, request: Request) -> Response:
        path = request.path
        raw = request.get_data()
        body = _http_body(raw, request.content_type) if path.endswith(_RAW_PREDICT) else _json(raw)
        result = self.dispatch(request.method, path, request.args.to_dict(), body)
        if isinstance(result, httpbody_pb2.HttpBody):
            # rawPredict answers with the container's bytes and content type, not JSON.
            return Response(result.data, content_type=result.content_type)
        # `$alt=json;enum-encoding=int` asks for enums as numbers (what GAPIC sends).
        ints = "enum-encoding=int" in request.args.get("$alt", "")
        return json_response({} if result is None else to_json(result, ints))


def _job_routes(jobs: JobService) -> list[Rule]:
    base = _LOCATION + "/customJobs"
    one = base + "/<segment:id>"
    return [
        route("POST", base, lambda p, q, b: jobs.create(p["project"], p["location"], b)),
        route("GET", base, lambda p, q, b: jobs.list(p["project"], p["location"], q)),
        route("GET", one, lambda p, q, b: jobs.get(p["project"], p["location"], p["id"])),
        route(
            "POST",
            one + ":cancel",
            lambda p, q, b: jobs.cancel(p["project"], p["location"], p["id"]),
        ),
        route("DELETE", one, lambda p, q, b: jobs.delete(p["project"], p["location"], p["id"])),
    ]


def _tuning_routes(tuning: TuningService) -> list[Rule]:
    base = _LOCATION + "/hyperparameterTuningJobs"
    one = base + "/<segment:id>"
    return [
        route("POST", base, lambda p, q, b: tuning.create(p["project"], p["location"], b)),
        route("GET", base, lambda p, q, b: tuning.list(p["project"], p["location"], q)),
        route("GET", one, lambda p, q, b: tuning.get(p["project"], p["location"], p["id"])),
        route(
            "POST",
            one + ":cancel",
            lambda p, q, b: tuning.cancel(p["project"], p["location"], p["id"]),
        ),
        route("DELETE", one, lambda p, q, b: tuning.delete(p["project"], p["location"], p["id"])),
    ]


def _resource_routes(collection: str, service: PipelineService | BatchService) -> list[Rule]:
    """create/list/get/cancel/delete of a collection under a location."""
    base = f"{_LOCATION}/{collection}"
    one = base + "/<segment:id>"
    return [
        route("POST", base, lambda p, q, b: service.create(p["project"], p["location"], b)),
        route("GET", base, lambda p, q, b: service.list(p["project"], p["location"], q)),
        route("GET", one, lambda p, q, b: service.get(p["project"], p["location"], p["id"])),
        route(
            "POST",
            one + ":cancel",
            lambda p, q, b: service.cancel(p["project"], p["location"], p["id"]),
        ),
        route("DELETE", one, lambda p, q, b: service.delete(p["project"], p["location"], p["id"])),
    ]


def _model_routes(models: ModelService) -> list[Rule]:
    base = _LOCATION + "/models"
    return [
        route(
            "POST",
            base + ":upload",
            lambda p, q, b: models.upload(p["project"], p["location"], b),
        ),
        route("GET", base, lambda p, q, b: models.list(p["project"], p["location"], q)),
        route("GET", _MODEL, lambda p, q, b: models.get(p["name"])),
        route("PATCH", _MODEL, lambda p, q, b: models.update(p["name"], q, b)),
        route("GET", _MODEL + ":listVersions", lambda p, q, b: models.list_versions(p["name"], q)),
        route("DELETE", _MODEL, lambda p, q, b: models.delete(p["name"])),
        route(
            "DELETE",
            _MODEL + ":deleteVersion",
            lambda p, q, b: models.delete_version(p["name"]),
        ),
        route(
            "POST",
            _MODEL + ":mergeVersionAliases",
            lambda p, q, b: models.merge_version_aliases(p["name"], b),
        ),
    ]


def _endpoint_routes(endpoints: EndpointService) -> list[Rule]:
    base = _LOCATION + "/endpoints"
    one = base + "/<segment:id>"

    def on_one(method: Callable[[str, str, str, Any], Message | None]) -> Handler:
        return lambda p, q, b: method(p["project"], p["location"], p["id"], b)

    return [
        route("POST", base, lambda p, q, b: endpoints.create(p["project"], p["location"], q, b)),
        route("GET", base, lambda p, q, b: endpoints.list(p["project"], p["location"], q)),
        route("GET", one, lambda p, q, b: endpoints.get(p["project"], p["location"], p["id"])),
        route(
            "PATCH",
            one,
            lambda p, q, b: endpoints.update(p["project"], p["location"], p["id"], q, b),
        ),
        route(
            "DELETE",
            one,
            lambda p, q, b: endpoints.delete(p["project"], p["location"], p["id"]),
        ),
        route("POST", one + ":deployModel", on_one(endpoints.deploy_model)),
        route("POST", one + ":undeployModel", on_one(endpoints.undeploy_model)),
        route("POST", one + ":predict", on_one(endpoints.predict)),
        route("POST", one + _RAW_PREDICT, on_one(endpoints.raw_predict)),
    ]


def _operation_routes(operations: OperationService) -> list[Rule]:
    # Clients poll /ui/{name} (the first HTTP rule of GetOperation); /v1/{name} is the
    # documented one. Answer both.
    def get(params: dict[str, str], query: Query, body: Any) -> Message | None:
        return operations.get(params["name"])

    return [route("GET", "/v1/<operation:name>", get), route("GET", "/ui/<operation:name>", get)]


def _json(raw: bytes) -> Any:
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError as err:
        raise invalid(f"request body is not valid JSON: {err}") from err


def _http_body(raw: bytes, content_type: str | None) -> dict[str, Any]:
    """A rawPredict request as the RawPredictRequest the service layer takes (the form the
    gRPC front hands over too): the HTTP body, whatever it holds, is `http_body.data`."""
    data = base64.b64encode(raw).decode()
    return {"httpBody": {"contentType": content_type or "application/json", "data": data}}


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
