"""The product's Cloud Functions, served by functions-framework exactly as in production
(the real `functions/main.py` entry points), one process per function."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from localcloud.errors import LocalCloudError
from localcloud.procs import ChildRecords, free_port, port_is_open, stop_process, wait_until

# functions/main.py through a symlink inside the package: a checkout serves the file itself,
# and the wheel build copies it in, so an installed `retrain` serves the same entry points.
FUNCTIONS_SOURCE = Path(__file__).resolve().parent / "functions_source" / "main.py"


@dataclass
class FunctionServer:
    target: str
    env: Mapping[str, str]
    log_path: Path
    port: int = 0
    host: str = "127.0.0.1"
    source: Path = FUNCTIONS_SOURCE
    children: ChildRecords | None = None  # so that a later `up` stops what a crash left
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def start(self) -> FunctionServer:
        if not self.port:
            self.port = free_port(self.host)
        elif port_is_open(self.host, self.port):
            raise LocalCloudError(
                f"port {self.port} for function {self.target} is taken; free it or pick another"
            )
        if not self.source.exists():
            raise LocalCloudError(f"function source {self.source} not found")
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        # The source root first, as in the cloud: from a checkout that is functions/ (the
        # link resolved), so `retrain` imports from there.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.source.resolve().parent), env.get("PYTHONPATH", "")) if p
        )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "functions_framework",
                "--target",
                self.target,
                "--source",
                str(self.source),
                "--signature-type",
                "cloudevent",
                "--host",
                self.host,
                "--port",
                str(self.port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: the server and its workers
        )
        log.close()
        if self.children is not None:
            self.children.add(self._process, f"function {self.target}")
        wait_until(self._ready, what=f"function {self.target}", process=self._process, timeout=60)
        return self

    @property
    def pid(self) -> int:
        if self._process is None:
            raise LocalCloudError("not started")
        return self._process.pid

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def restart(self) -> None:
        """Start it again on the same port after it died (its URL is wired into the
        Eventarc triggers): whatever is left of the old process group goes first."""
        self._end_group(signal.SIGKILL)
        wait_until(
            lambda: not port_is_open(self.host, self.port),
            what=f"the release of port {self.port} by function {self.target}",
            timeout=30,
        )
        self.start()

    def _ready(self) -> bool:
        # Any HTTP answer means the server is up (a GET is not a CloudEvent: 4xx/405).
        try:
            urllib.request.urlopen(self.url, timeout=1)
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    def kill(self) -> None:
        """Crash the function process (SIGKILL): no cleanup, like a lost instance."""
        self._end_group(signal.SIGKILL)

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process)
        self._end_group(signal.SIGKILL)  # any worker left behind

    def _end_group(self, sig: signal.Signals) -> None:
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, sig)
        self._process.wait()
        if self.children is not None:
            self.children.remove(self._process)
        self._process = None

    def __enter__(self) -> FunctionServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
