"""The trainer as a Python package for Google's prebuilt training containers:
`python -m trainer.package [--out dist]` (what `make trainer-package` runs) writes
`dist/retrain_trainer-<version>.tar.gz`, a source distribution pip installs, whose
`trainer.task` module Vertex runs from a `python_package_spec`.

The distribution holds the trainer's modules and declares trainer/requirements.txt as its
dependencies (the prebuilt PyTorch image brings torch itself); the version is the
project's. Built in a staging folder with setuptools' own build backend, so no build tool
beyond setuptools is needed."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from pathlib import Path

DISTRIBUTION = "retrain_trainer"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Not part of the training code: this builder, and the container recipes.
_LEFT_OUT = frozenset({"package.py"})

_PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "{version}"
description = "The retrain trainer: python -m trainer.task"
requires-python = ">=3.10"
dependencies = {dependencies}

[tool.setuptools]
packages = ["trainer"]
"""


def project_version(root: Path = ROOT) -> str:
    with (root / "pyproject.toml").open("rb") as handle:
        return str(tomllib.load(handle)["project"]["version"])


def requirements(path: Path = HERE / "requirements.txt") -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def build_sdist(out_dir: Path, version: str | None = None) -> Path:
    """Write the source distribution into `out_dir` and return its path."""
    version = version or project_version()
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="trainer-package-") as temp:
        stage = Path(temp)
        package = stage / "trainer"
        package.mkdir()
        for module in sorted(HERE.glob("*.py")):
            if module.name not in _LEFT_OUT:
                shutil.copy2(module, package / module.name)
        dependencies = "[" + ", ".join(f'"{r}"' for r in requirements()) + "]"
        (stage / "pyproject.toml").write_text(
            _PYPROJECT.format(name=DISTRIBUTION, version=version, dependencies=dependencies)
        )
        from setuptools import build_meta

        previous = Path.cwd()
        os.chdir(stage)  # the backend builds the project in the working directory
        try:
            name = build_meta.build_sdist(str(out_dir))
        finally:
            os.chdir(previous)
    return out_dir / name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.package", description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="output folder")
    args = parser.parse_args(argv)
    path = build_sdist(args.out)
    print(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
