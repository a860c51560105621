"""The serving container: Vertex's custom-container contract over a real WSGI server."""

from __future__ import annotations

import io
import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from localcloud.procs import free_port, stop_process, wait_until
from tests.trainer.conftest import PYTHON, child_env
from trainer.serving import MAX_BODY_BYTES, PredictionApp, Settings
from trainer.table import parse_csv
from trainer.task import TrainingResult, predict_rows


def _request(url: str, body: bytes | None = None, method: str = "POST") -> tuple[int, Any]:
    request = urllib.request.Request(url, data=body, method=method)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        text = err.read()
        try:
            return err.code, json.loads(text)
        except json.JSONDecodeError:
            return err.code, text.decode()


def _predict(url: str, instances: Any) -> tuple[int, Any]:
    return _request(url + "/v1/predict", json.dumps({"instances": instances}).encode())


@pytest.fixture(scope="module")
def server(digits_model: tuple[TrainingResult, Path, str]) -> Iterator[str]:
    _, model_dir, _ = digits_model
    port = free_port()
    process = subprocess.Popen(
        [PYTHON, "-m", "trainer.serving"],
        env=child_env(
            AIP_HTTP_PORT=str(port),
            AIP_HEALTH_ROUTE="/v1/health",
            AIP_PREDICT_ROUTE="/v1/predict",
            AIP_STORAGE_URI=str(model_dir),
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _healthy(url), what="serving container", timeout=60, process=process)
        yield url
    finally:
        stop_process(process)


def _healthy(url: str) -> bool:
    try:
        return _request(url + "/v1/health", method="GET")[0] == 200
    except OSError:
        return False


def test_served_predictions_equal_the_trainers_own(
    server: str, digits_model: tuple[TrainingResult, Path, str], digits_file: Path
) -> None:
    result, _, _ = digits_model
    table = parse_csv(str(digits_file), digits_file.read_bytes())
    columns = {name: column.values for name, column in table.columns.items()}
    rows = range(0, 1797, 7)
    instances = [{f"p{i}": int(columns[f"p{i}"][r]) for i in range(64)} for r in rows]
    expected = predict_rows(result, {k: v[list(rows)] for k, v in columns.items()})

    status, body = _predict(server, instances)

    assert status == 200
    predictions = body["predictions"]
    assert [p["label"] for p in predictions] == [str(k) for k in expected.argmax(axis=1)]
    served = np.array([[p["probabilities"][str(c)] for c in range(10)] for p in predictions])
    np.testing.assert_allclose(served, expected, rtol=1e-4, atol=1e-6)


def test_lists_in_feature_order_predict_the_same_as_objects(
    server: str, digits_model: tuple[TrainingResult, Path, str]
) -> None:
    _, model_dir, _ = digits_model
    smoke = json.loads((model_dir / "smoke.json").read_text())["instances"]
    as_lists = [[row[f"p{i}"] for i in range(64)] for row in smoke]

    assert _predict(server, smoke) == _predict(server, as_lists)
    assert _predict(server, smoke)[0] == 200


BAD_REQUESTS: dict[str, tuple[bytes, int, str]] = {
    "not json": (b"{instances", 400, "request body is not JSON"),
    "not an object": (b"[1, 2]", 400, "request body must be an object"),
    "no instances": (b'{"rows": []}', 400, "request body has no 'instances'"),
    "empty instances": (b'{"instances": []}', 400, "'instances' must be a non-empty list"),
    "instance of wrong type": (
        b'{"instances": [7]}',
        400,
        "instance 0 must be an object or a list",
    ),
    "missing field": (b'{"instances": [{"p0": 1}]}', 400, "instance 0 lacks field 'p1'"),
    "unknown field": (
        json.dumps(
            {"instances": [dict.fromkeys([f"p{i}" for i in range(64)], 0) | {"px": 1}]}
        ).encode(),
        400,
        "instance 0 has unknown field 'px'",
    ),
    "text for a number": (
        json.dumps({"instances": [[0] * 64, [0] * 63 + ["lots"]]}).encode(),
        400,
        "instance 1 field 'p63' must be a number, not 'lots'",
    ),
    "null for a number": (
        json.dumps({"instances": [[None] + [0] * 63]}).encode(),
        400,
        "instance 0 field 'p0' must be a number, not null",
    ),
    "NaN": (
        b'{"instances": [[NaN' + b", 0" * 63 + b"]]}",
        400,
        "instance 0 field 'p0' must be a finite number",
    ),
    "list of wrong length": (
        b'{"instances": [[1, 2]]}',
        400,
        "instance 0 has 2 values; expected 64",
    ),
    "parameters not an object": (
        b'{"instances": [[0]], "parameters": 3}',
        400,
        "'parameters' must be an object",
    ),
    "body over 1.5 MB": (b" " * (MAX_BODY_BYTES + 1), 413, "exceeds 1500000"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_answer_4xx_with_their_message(server: str, case: str) -> None:
    body, status, message = BAD_REQUESTS[case]

    answered, reply = _request(server + "/v1/predict", body)

    assert answered == status
    assert message in reply["error"]


def test_wrong_routes_and_methods(server: str) -> None:
    assert _request(server + "/predict", b"{}")[0] == 404
    assert _request(server + "/v1/predict", method="GET")[0] == 405


def _call(app: PredictionApp, path: str, method: str = "GET", body: bytes = b"") -> int:
    statuses: list[str] = []
    app(
        {
            "PATH_INFO": path,
            "REQUEST_METHOD": method,
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
        },
        lambda status, headers: statuses.append(status),
    )
    return int(statuses[0].split()[0])


def test_health_fails_until_the_model_is_loaded(
    digits_model: tuple[TrainingResult, Path, str],
) -> None:
    from trainer.serving import Model

    _, model_dir, _ = digits_model
    app = PredictionApp(Settings(storage_uri=str(model_dir)))

    assert _call(app, "/health") == 503
    assert _call(app, "/predict", "POST", b'{"instances": [[0]]}') == 503
    app.set_model(Model.load(str(model_dir)))
    assert _call(app, "/health") == 200


def test_an_unloadable_model_dir_ends_the_server_with_an_error_line(tmp_path: Path) -> None:
    completed = subprocess.run(
        [PYTHON, "-m", "trainer.serving"],
        env=child_env(AIP_HTTP_PORT=str(free_port()), AIP_STORAGE_URI=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode == 1
    assert completed.stderr.strip().splitlines()[-1] == (
        f"error: cannot load the model from {tmp_path}: {tmp_path}/metadata.json does not exist"
    )


def test_serving_imports_neither_torch_nor_the_training_code() -> None:
    probe = (
        "import sys, trainer.serving\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', "
        "'trainer.task', 'trainer.model', 'trainer.distributed', 'trainer.checkpoints'))))"
    )
    completed = subprocess.run(
        [PYTHON, "-c", probe], env=child_env(), capture_output=True, text=True, timeout=60
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"
