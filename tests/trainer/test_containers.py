"""What can be checked of the images without a Docker engine."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

TRAINER = Path(__file__).resolve().parents[2] / "trainer"


def _entrypoint(dockerfile: Path) -> list[str]:
    lines = [line for line in dockerfile.read_text().splitlines() if line.startswith("ENTRYPOINT")]
    assert len(lines) == 1, f"{dockerfile.name} needs exactly one ENTRYPOINT"
    return list(json.loads(lines[0].removeprefix("ENTRYPOINT")))


@pytest.mark.parametrize(
    ("dockerfile", "module"),
    [("Dockerfile", "trainer.task"), ("Dockerfile.serving", "trainer.serving")],
)
def test_entrypoints_run_modules_that_exist(dockerfile: str, module: str) -> None:
    entrypoint = _entrypoint(TRAINER / dockerfile)

    assert entrypoint == ["python", "-m", module]
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    assert 'if __name__ == "__main__":' in Path(spec.origin).read_text()


def _requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            assert "==" in line, f"{path.name}: {line!r} is not pinned"
            names.add(re.split(r"[=<>\[]", line, maxsplit=1)[0].lower())
    return names


def test_serving_image_has_no_torch_and_copies_what_serving_imports() -> None:
    names = _requirement_names(TRAINER / "requirements-serving.txt")

    assert not {n for n in names if n.startswith("torch")}
    assert {"onnxruntime", "numpy", "waitress", "google-cloud-storage"} <= names
    dockerfile = (TRAINER / "Dockerfile.serving").read_text()
    assert "requirements-serving.txt" in dockerfile
    (copy,) = [line for line in dockerfile.splitlines() if line.startswith("COPY __init__.py")]
    copied = {name.removesuffix(".py") for name in copy.split()[1:-1]}
    sources = _sources(copied)
    imported = set(re.findall(r"^from trainer\.(\w+) import", sources, re.MULTILINE))
    for names in re.findall(r"^from trainer import (.+)$", sources, re.MULTILINE):
        imported |= {n.strip() for n in names.split(",")}
    assert imported <= copied


def _sources(modules: set[str]) -> str:
    return "\n".join((TRAINER / f"{m}.py").read_text() for m in modules)


def test_training_image_builds_on_a_cuda_pytorch_base() -> None:
    dockerfile = (TRAINER / "Dockerfile").read_text()

    assert re.search(
        r"^ARG BASE_IMAGE=pytorch/pytorch:[\w.]+-cuda[\d.]+-", dockerfile, re.MULTILINE
    )
    assert "requirements.txt" in dockerfile
    names = _requirement_names(TRAINER / "requirements.txt")
    assert "torch" not in names  # the base has it
    assert "onnxruntime" in names  # the champion is scored as it is served
