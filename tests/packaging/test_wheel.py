"""The wheel users install works outside the checkout: built from the source, installed into
a fresh virtual environment, and run from a directory that is not the checkout.

The new environment sees the development environment's site-packages through a `.pth` path
line, so the dependencies need no download; that line adds the directory only (its `.pth`
files, the editable install's finder among them, are not run), and the environment's own
site-packages come first: `retrain`, `trainer` and `localcloud` resolve to the wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
# Import name -> its directory in the source tree.
SOURCE_ROOTS = {
    "retrain": "functions/retrain",
    "trainer": "trainer",
    "localcloud": "infra/localcloud",
}
# Read at run time: the log sink filter and the demo config.
DATA_FILES = {"localcloud/job-events-filter.txt", "localcloud/demo/pipelines.toml"}
# Build outputs and local state: never part of the source a wheel is built from.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv*", ".localcloud", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
    ".mypy_cache", ".ruff_cache", ".pytest_cache", ".terraform",
)  # fmt: skip
# What the installed code reports about itself, from a fresh interpreter.
PROBE = """
import json, localcloud, retrain, trainer
import retrain.adapters, retrain.cli, localcloud.vertex, localcloud.pubsub, localcloud.demo
from localcloud.functions import FUNCTIONS_SOURCE
from localcloud.router import SHARED_FILTER_PATH
from localcloud.stack import DEMO_CONFIG
print(json.dumps({
    "packages": [m.__file__ for m in (retrain, trainer, localcloud, retrain.adapters,
                                      retrain.cli, localcloud.vertex, localcloud.pubsub,
                                      localcloud.demo)],
    "read_at_run_time": [str(p) for p in (FUNCTIONS_SOURCE, SHARED_FILTER_PATH, DEMO_CONFIG)],
}))
"""
COMMAND_TIMEOUT_S = 180


@dataclass(frozen=True)
class Built:
    source: Path  # the copy of the source tree it was built from
    wheel: Path


@dataclass(frozen=True)
class Installed:
    root: Path  # the virtual environment
    python: Path
    retrain: Path  # the console command the wheel installs


def _points_elsewhere(variable: str) -> bool:
    """Would point a command back at the checkout or at an already running cloud."""
    return variable in (
        "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "RETRAIN_CONFIG", "GOOGLE_CLOUD_PROJECT"
    ) or variable.endswith(("_EMULATOR_HOST", "_API_ENDPOINT"))  # fmt: skip


def _run(argv: list[str | Path], *, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not _points_elsewhere(k)}
    return subprocess.run(
        [str(a) for a in argv],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
    )  # fmt: skip


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("outside").resolve()
    assert not directory.is_relative_to(REPO_ROOT), "the temp dir must be outside the checkout"
    return directory


@pytest.fixture(scope="module")
def built(outside: Path) -> Built:
    # Built from a copy of the source: building in place would leave build/ and an egg-info
    # in the checkout, and a stale build/ could put files in the wheel that the source lost.
    source = outside / "source"
    shutil.copytree(REPO_ROOT, source, ignore=NOT_SOURCE, symlinks=True)
    dist = outside / "dist"
    build = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", dist, "."],
        cwd=source,
    )  # fmt: skip
    assert build.returncode == 0, _output(build)
    (wheel,) = dist.glob("retrain-*.whl")
    return Built(source=source, wheel=wheel)


@pytest.fixture(scope="module")
def installed(outside: Path, built: Built) -> Installed:
    root = outside / "venv"
    created = _run([sys.executable, "-m", "venv", "--without-pip", root], cwd=outside)
    assert created.returncode == 0, _output(created)
    python = root / "bin" / "python"
    # The development environment's pip installs into the new one (no pip of its own needed).
    pip = _run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps",
         "--disable-pip-version-check", built.wheel],
        cwd=outside,
    )  # fmt: skip
    assert pip.returncode == 0, _output(pip)
    site = _run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=outside
    )
    assert site.returncode == 0, _output(site)
    dependencies = sysconfig.get_paths()["purelib"]
    (Path(site.stdout.strip()) / "development-dependencies.pth").write_text(dependencies + "\n")
    return Installed(root=root, python=python, retrain=root / "bin" / "retrain")


def _modules(source: Path) -> set[str]:
    """Every module under the source roots, as the wheel names it."""
    return {
        f"{name}/{path.relative_to(source / root).as_posix()}"
        for name, root in SOURCE_ROOTS.items()
        for path in (source / root).rglob("*.py")
    }


def test_the_wheel_holds_every_module_and_the_files_read_at_run_time(built: Built) -> None:
    with zipfile.ZipFile(built.wheel) as archive:
        names = {n for n in archive.namelist() if ".dist-info/" not in n}
        served = archive.read("localcloud/functions_source/main.py")
    assert names == _modules(built.source) | DATA_FILES
    # The functions localcloud serves are the deployed entry points, byte for byte.
    assert served == (built.source / "functions" / "main.py").read_bytes()


def test_the_installed_packages_and_their_files_come_from_the_wheel(
    installed: Installed, outside: Path
) -> None:
    probe = _run([installed.python, "-c", PROBE], cwd=outside)
    assert probe.returncode == 0, _output(probe)
    report = json.loads(probe.stdout)
    for path in (*report["packages"], *report["read_at_run_time"]):
        assert Path(path).is_relative_to(installed.root), path
        assert Path(path).is_file(), path


@pytest.fixture
def localcloud_dir(installed: Installed, outside: Path) -> Iterator[Path]:
    directory = outside / "lc"
    yield directory
    # Stop whatever an assertion left running; a no-op (exit 1) when nothing runs.
    _run([installed.retrain, "local", "down", "--dir", directory], cwd=outside)


def test_the_installed_command_brings_localcloud_up_and_down(
    installed: Installed, outside: Path, localcloud_dir: Path
) -> None:
    help_ = _run([installed.retrain, "--help"], cwd=outside)
    assert help_.returncode == 0, _output(help_)
    assert "usage: retrain" in help_.stdout

    up = _run([installed.retrain, "local", "up", "--detach", "--dir", localcloud_dir], cwd=outside)
    assert up.returncode == 0, _output(up)
    assert (localcloud_dir / "env").is_file()
    # With no --config, the demo config the wheel installed.
    packaged_config = next(installed.root.rglob("localcloud/demo/pipelines.toml"))
    log = (localcloud_dir / "localcloud.log").read_text(encoding="utf-8")
    assert f"with {packaged_config.resolve()}" in log

    down = _run([installed.retrain, "local", "down", "--dir", localcloud_dir], cwd=outside)
    assert down.returncode == 0, _output(down)
    assert not (localcloud_dir / "pid").exists()
