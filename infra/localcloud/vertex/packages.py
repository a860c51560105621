"""Python packages for python_package_spec: the archives named by `package_uris` (on GCS)
installed into a virtual environment per package set, cached under the state dir and keyed
by the archives' hashes, so a job that runs the same packages again starts at once.

Vertex pip-installs the packages into its prebuilt container and runs `python -m
<python_module>`. Locally the container's Python is an interpreter of this machine (the one
localcloud runs on, for Google's PyTorch, scikit-learn and XGBoost images): the environment
is made with `--system-site-packages` plus a path file naming that interpreter's own
site-packages, so torch, scikit-learn and the rest are visible, as they are in the image.
Installation is offline (`--no-deps --no-index`): the frameworks come from the interpreter,
and a package's own dependencies must be there too."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from localcloud.errors import LocalCloudError

READY_FILE = ".localcloud-ready"  # written last: the environment is complete
PARENT_PATHS_FILE = "_localcloud_parent.pth"
_PIP_TIMEOUT_S = 600
_TAIL_LINES = 15  # of pip's output, quoted when it fails


class PackageInstaller:
    """`interpreter(python, uris)` -> the Python of an environment holding the packages."""

    def __init__(self, cache_dir: Path, env: Mapping[str, str]) -> None:
        self._cache_dir = Path(cache_dir)
        self._env = dict(env)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def interpreter(self, python: str, package_uris: Sequence[str]) -> str:
        """Download the packages, and install them unless an environment with exactly these
        archives (same bytes) for this interpreter exists. Raises LocalCloudError."""
        if not package_uris:
            raise LocalCloudError("python_package_spec.package_uris is empty")
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self._cache_dir, prefix="download-") as temp:
            archives = [
                self._download(uri, Path(temp) / str(i)) for i, uri in enumerate(package_uris)
            ]
            key = environment_key(python, archives)
            venv = self._cache_dir / key
            with self._lock(key):
                if not (venv / READY_FILE).exists():
                    _build(venv, python, archives)
        return str(venv / "bin" / "python")

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def _download(self, uri: str, folder: Path) -> Path:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        if not uri.startswith("gs://") or not bucket or not name or name.endswith("/"):
            raise LocalCloudError(
                f"python_package_spec.package_uris: {uri!r} is not a gs://bucket/object URI"
            )
        folder.mkdir(parents=True)
        # pip reads the archive's kind from its file name: keep the object's.
        target = folder / name.rsplit("/", 1)[-1]
        try:
            storage_client(self._env).bucket(bucket).blob(name).download_to_filename(target)
        except Exception as err:  # any client failure means the job cannot start
            raise LocalCloudError(f"cannot download the package {uri}: {_first_line(err)}") from err
        return target


def environment_key(python: str, archives: Sequence[Path]) -> str:
    """Same interpreter, same archive names and bytes -> same environment."""
    digest = hashlib.sha256(os.path.realpath(python).encode())
    for archive in sorted(archives, key=lambda a: a.name):
        digest.update(b"\0" + archive.name.encode() + b"\0")
        digest.update(hashlib.sha256(archive.read_bytes()).digest())
    return digest.hexdigest()[:24]


def _build(venv: Path, python: str, archives: Sequence[Path]) -> None:
    """A fresh environment at `venv` (what a failed build left is removed first)."""
    shutil.rmtree(venv, ignore_errors=True)
    try:
        # No pip of its own: the interpreter's pip (visible through the path file) installs
        # into whichever environment runs it, and ensurepip would add seconds per build.
        _run([python, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)])
        site_packages = _site_packages(venv / "bin" / "python")
        parents = [p for p in _site_packages(Path(python), everything=True) if p != site_packages]
        (Path(site_packages) / PARENT_PATHS_FILE).write_text("".join(f"{p}\n" for p in parents))
        _run(
            [
                str(venv / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--no-index",
                "--no-build-isolation",
                "--disable-pip-version-check",
                "--no-input",
                *map(str, archives),
            ]
        )
        (venv / READY_FILE).write_text("")
    except BaseException:
        shutil.rmtree(venv, ignore_errors=True)
        raise


def _site_packages(python: Path, everything: bool = False) -> Any:
    """The environment's own site-packages, or (`everything`) every directory its `site`
    module adds: a virtualenv's and those of the interpreter it was made from."""
    code = (
        "import json, site, sysconfig; print(json.dumps(site.getsitepackages()))"
        if everything
        else "import json, sysconfig; print(json.dumps(sysconfig.get_paths()['purelib']))"
    )
    return json.loads(_run([str(python), "-c", code]))


def _run(argv: Sequence[str]) -> str:
    try:
        result = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=_PIP_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            env=_clean_env(),
        )
    except (OSError, subprocess.SubprocessError) as err:
        raise LocalCloudError(f"installing the job's packages failed: {argv[0]}: {err}") from err
    if result.returncode != 0:
        lines = (result.stdout + result.stderr).strip().splitlines()[-_TAIL_LINES:]
        output = "\n  ".join(lines) or "(no output)"
        raise LocalCloudError(
            f"installing the job's packages failed ({' '.join(argv[:4])} ... exited with"
            f" {result.returncode}):\n  {output}"
        )
    return result.stdout


def _clean_env() -> dict[str, str]:
    # The outer environment's own virtualenv must not leak into the new one's pip.
    return {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}


def storage_client(env: Mapping[str, str]) -> Any:
    """A Cloud Storage client for a process of `env`: fake-gcs-server's when the env names
    it (STORAGE_EMULATOR_HOST, anonymous), Google's otherwise."""
    from google.cloud import storage  # type: ignore[attr-defined]

    host = env.get("STORAGE_EMULATOR_HOST")
    if not host:
        return storage.Client()
    from google.auth.credentials import AnonymousCredentials

    return storage.Client(
        project="localcloud",
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": host},
    )


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
