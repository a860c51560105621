"""Google's prebuilt scikit-learn and XGBoost serving containers
(`us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.*`, `xgboost-cpu.*`), locally:
`python -m localcloud.prebuilt_serving` with the serving container contract.

As in those images, the model is the one file of `model.joblib`, `model.pkl` or
`model.bst` at the top of AIP_STORAGE_URI (a gs:// directory, read through
STORAGE_EMULATOR_HOST locally, or a local directory); the server listens on AIP_HTTP_PORT,
answers AIP_HEALTH_ROUTE, and turns `{"instances": [...]}` posted to AIP_PREDICT_ROUTE
into `{"predictions": model.predict(instances)}`. Exit code 1 with an `error: ` line when
the model cannot be loaded."""

from __future__ import annotations

import json
import os
import pickle
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

MODEL_FILES = ("model.joblib", "model.pkl", "model.bst")
MAX_REQUEST_BYTES = 1_500_000  # Vertex's online prediction limit


class ModelError(Exception):
    """The artifact cannot be served: no model file, several, or one that does not load."""


class Predictor:
    """A loaded model: `predict(instances)` -> a JSON-ready list."""

    def __init__(self, model: Any, kind: str) -> None:
        self._model, self.kind = model, kind

    def predict(self, instances: Sequence[Any]) -> list[Any]:
        import numpy as np

        rows = np.asarray(instances)
        if self.kind == "model.bst":
            import xgboost

            result = self._model.predict(xgboost.DMatrix(rows))
        else:
            result = self._model.predict(rows)
        return np.asarray(result).tolist()


def load(storage_uri: str, env: Mapping[str, str]) -> Predictor:
    """The model under `storage_uri`, as the prebuilt containers find it."""
    with tempfile.TemporaryDirectory(prefix="prebuilt-serving-") as temp:
        found = _fetch(storage_uri, Path(temp), env)
        if not found:
            raise ModelError(
                f"no model file in {storage_uri}: the prebuilt scikit-learn and XGBoost "
                f"containers load one of {', '.join(MODEL_FILES)}"
            )
        if len(found) > 1:
            raise ModelError(
                f"{storage_uri} holds {', '.join(p.name for p in found)}: keep exactly one model file"
            )
        return _load_file(found[0])


def _fetch(storage_uri: str, folder: Path, env: Mapping[str, str]) -> list[Path]:
    """The model files at the top of `storage_uri`, local copies for gs:// ones."""
    if not storage_uri.startswith("gs://"):
        return [Path(storage_uri) / n for n in MODEL_FILES if (Path(storage_uri) / n).is_file()]
    from localcloud.vertex.packages import storage_client

    bucket_name, _, prefix = storage_uri.removeprefix("gs://").partition("/")
    prefix = prefix.strip("/")
    bucket = storage_client(env).bucket(bucket_name)
    found = []
    for name in MODEL_FILES:
        blob = bucket.blob(f"{prefix}/{name}" if prefix else name)
        if blob.exists():
            target = folder / name
            blob.download_to_filename(target)
            found.append(target)
    return found


def _load_file(path: Path) -> Predictor:
    try:
        if path.name == "model.bst":
            import xgboost

            booster = xgboost.Booster()
            booster.load_model(str(path))
            return Predictor(booster, path.name)
        if path.name == "model.joblib":
            import joblib

            return Predictor(joblib.load(path), path.name)
        with path.open("rb") as handle:
            return Predictor(pickle.load(handle), path.name)
    except ImportError as err:
        raise ModelError(f"cannot load {path.name}: {err.name} is not installed here") from err
    except Exception as err:  # whatever the file holds, the container cannot start
        raise ModelError(f"cannot load {path.name}: {err}") from err


def application(predictor: Predictor, health_route: str, predict_route: str) -> Any:
    """The WSGI app: health, and predict with Vertex's request and response shapes."""

    @Request.application  # type: ignore[arg-type]
    def app(request: Request) -> Response:
        if request.path == health_route and request.method == "GET":
            return _json(200, {})
        if request.path != predict_route or request.method != "POST":
            return _json(404, {"error": f"no route {request.method} {request.path}"})
        if (request.content_length or 0) > MAX_REQUEST_BYTES:
            return _json(413, {"error": f"request larger than {MAX_REQUEST_BYTES} bytes"})
        try:
            body = json.loads(request.get_data())
            instances = body["instances"]
            if not isinstance(instances, list):
                raise TypeError("'instances' must be a list")
        except (ValueError, KeyError, TypeError) as err:
            return _json(400, {"error": f'expected {{"instances": [...]}}: {err}'})
        try:
            predictions = predictor.predict(instances)
        except Exception as err:  # the model's refusal of these rows is the caller's error
            return _json(400, {"error": f"the model cannot predict these instances: {err}"})
        return _json(200, {"predictions": predictions})

    return app


def _json(status: int, payload: Any) -> Response:
    return Response(json.dumps(payload), status=status, mimetype="application/json")


def main(env: Mapping[str, str] = os.environ) -> int:
    try:
        predictor = load(env["AIP_STORAGE_URI"], env)
    except KeyError:
        print(
            "error: AIP_STORAGE_URI is not set: upload the model with an artifact_uri",
            file=sys.stderr,
        )
        return 1
    except ModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    app = application(
        predictor, env.get("AIP_HEALTH_ROUTE", "/health"), env.get("AIP_PREDICT_ROUTE", "/predict")
    )
    port = int(env.get("AIP_HTTP_PORT", "8080"))
    server = make_server("127.0.0.1", port, app, threaded=True)
    print(f"serving {predictor.kind} on port {port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
