"""The serving container: `python -m trainer.serving`, Vertex AI's custom-container contract.

Listens on AIP_HTTP_PORT, answers AIP_HEALTH_ROUTE (503 until the model is loaded, then
200) and AIP_PREDICT_ROUTE (`{"instances": [...]}` -> `{"predictions": [...]}`), loads the
model directory the trainer wrote from AIP_STORAGE_URI (gs:// or local). Served by
waitress. Needs numpy and onnxruntime only: no torch, no training code.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer import blobs
from trainer.errors import BadRequest, ModelError, TrainerError
from trainer.features import Schema, decode_predictions, encode_instances

MAX_BODY_BYTES = 1_500_000  # Vertex AI's online prediction request limit (1.5 MB)
MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


@dataclass(frozen=True)
class Settings:
    port: int = 8080
    health_route: str = "/health"
    predict_route: str = "/predict"
    storage_uri: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        try:
            port = int(env.get("AIP_HTTP_PORT", "8080"))
        except ValueError as err:
            raise TrainerError(f"AIP_HTTP_PORT={env['AIP_HTTP_PORT']!r} is not a port") from err
        storage_uri = env.get("AIP_STORAGE_URI", "")
        if not storage_uri:
            raise TrainerError("AIP_STORAGE_URI is not set: it names the model directory")
        return cls(
            port=port,
            health_route=env.get("AIP_HEALTH_ROUTE") or "/health",
            predict_route=env.get("AIP_PREDICT_ROUTE") or "/predict",
            storage_uri=storage_uri,
        )


class Model:
    """An ONNX model and the schema that turns instances into its input."""

    def __init__(self, onnx_bytes: bytes, metadata: Mapping[str, Any]) -> None:
        import onnxruntime

        self.schema = Schema.from_json(metadata["schema"])
        options = onnxruntime.SessionOptions()
        # Spinning worker threads would steal the cores that parse the next request, and
        # waking them costs more than one small batch: one thread per request.
        options.intra_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            onnx_bytes, options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name

    @classmethod
    def load(cls, directory: str) -> Model:
        try:
            metadata = json.loads(blobs.read_bytes(blobs.join(directory, METADATA_FILE)))
            onnx_bytes = blobs.read_bytes(blobs.join(directory, MODEL_FILE))
            return cls(onnx_bytes, metadata)
        except TrainerError as err:
            raise ModelError(f"cannot load the model from {directory}: {err}") from err
        except (ValueError, KeyError, TypeError) as err:  # includes malformed JSON
            raise ModelError(f"model directory {directory} is malformed: {err!r}") from err
        except Exception as err:  # onnxruntime's own errors for a corrupt graph
            raise ModelError(f"{directory}/{MODEL_FILE} is not a loadable model: {err}") from err

    def predict(self, instances: Any) -> list[dict[str, Any]]:
        return decode_predictions(
            self.schema, self.outputs(encode_instances(self.schema, instances))
        )

    def outputs(self, features: np.ndarray) -> np.ndarray:
        """The graph's raw outputs (probabilities, or standardised values) for an encoded
        feature matrix: what predictions are decoded from, and what scoring reads."""
        (outputs,) = self.session.run(None, {self.input_name: features})
        return np.asarray(outputs)


class PredictionApp:
    """The WSGI application. The model arrives later (`set_model`), so the server can
    answer health checks while it loads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._model: Model | None = None

    def set_model(self, model: Model) -> None:
        self._model = model

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        if path == self.settings.health_route:
            if method not in ("GET", "HEAD"):
                return _reply(start_response, 405, {"error": "use GET for health"})
            if self._model is None:
                return _reply(start_response, 503, {"status": "loading"})
            return _reply(start_response, 200, {"status": "ok"})
        if path == self.settings.predict_route:
            if method != "POST":
                return _reply(start_response, 405, {"error": "use POST for predictions"})
            return self._predict(environ, start_response)
        return _reply(start_response, 404, {"error": f"no route {path}"})

    def _predict(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        model = self._model
        if model is None:
            return _reply(start_response, 503, {"error": "the model is still loading"})
        try:
            body = _read_json(environ)
            predictions = model.predict(body.get("instances"))
        except BadRequest as err:
            return _reply(start_response, err.status, {"error": str(err)})
        return _reply(start_response, 200, {"predictions": predictions})


def _read_json(environ: dict[str, Any]) -> dict[str, Any]:
    try:
        length = int(environ.get("CONTENT_LENGTH") or -1)
    except ValueError as err:
        raise BadRequest("Content-Length is not a number") from err
    if length > MAX_BODY_BYTES:
        raise BadRequest(f"request body of {length} bytes exceeds {MAX_BODY_BYTES}", 413)
    stream = environ["wsgi.input"]
    data = stream.read(length) if length >= 0 else stream.read(MAX_BODY_BYTES + 1)
    if len(data) > MAX_BODY_BYTES:
        raise BadRequest(f"request body exceeds {MAX_BODY_BYTES} bytes", 413)
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadRequest(f"request body is not JSON: {err}") from err
    if not isinstance(body, dict):
        raise BadRequest('request body must be an object: {"instances": [...]}')
    if "instances" not in body:
        raise BadRequest("request body has no 'instances'")
    parameters = body.get("parameters", {})
    if parameters is not None and not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object")
    return body


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    503: "Service Unavailable",
}


def _reply(start_response: StartResponse, status: int, body: Any) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        f"{status} {_REASONS.get(status, '')}".strip(),
        [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
    )
    return [data]


def main() -> int:
    from waitress import create_server

    try:
        settings = Settings.from_env(os.environ)
    except TrainerError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 2
    app = PredictionApp(settings)
    # Waitress refuses far larger bodies itself; the app answers 413 with a message below that.
    server = create_server(
        app, host="0.0.0.0", port=settings.port, max_request_body_size=4 * MAX_BODY_BYTES
    )

    def load() -> None:
        try:
            app.set_model(Model.load(settings.storage_uri))
        except ModelError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            os._exit(1)  # the container must fail visibly, not stay unhealthy forever
        print(f"model from {settings.storage_uri} loaded", flush=True)

    threading.Thread(target=load, name="model-loader", daemon=True).start()
    print(
        f"serving on port {settings.port}: health {settings.health_route}, "
        f"predict {settings.predict_route}",
        flush=True,
    )
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
