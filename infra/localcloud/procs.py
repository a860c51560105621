"""Small helpers for the local servers: free ports, readiness waits, child processes and
the records that let a restart stop what a crash left running."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from localcloud.errors import LocalCloudError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def wait_until(
    ready: Callable[[], bool],
    *,
    what: str,
    timeout: float = 20.0,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Poll `ready` until it holds; fail with a message naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise LocalCloudError(f"{what} exited with code {process.returncode} while starting")
        if ready():
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    raise LocalCloudError(f"{what} did not become ready within {timeout:.0f}s")


def stop_process(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """Terminate a child process, killing it if it does not exit in time."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def process_identity(pid: int) -> str | None:
    """What tells a process from a later one that reuses its pid: its start time (from
    /proc on Linux, `ps` elsewhere). None when no such process runs."""
    if Path("/proc").is_dir():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rpartition(")")[2].split()
        # fields[0] is the state (field 3); a zombie has finished running.
        return None if not fields or fields[0] == "Z" else fields[19]
    try:
        result = subprocess.run(
            ["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


class ChildRecords:
    """The processes localcloud starts, one small file each under `directory`.

    Servers, functions, model servers and job replicas lead process groups of their own,
    so they outlive a localcloud that was killed (kill -9): the next `up` stops what such
    a crash left behind before starting anything, so that no stray trainer writes into a
    job's outputs and no stray server holds a port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def add(self, process: subprocess.Popen[bytes], what: str) -> None:
        identity = process_identity(process.pid)
        if identity is None:
            return  # already gone
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            group = os.getpgid(process.pid) == process.pid
        except OSError:
            return
        record = {"pid": process.pid, "identity": identity, "group": group, "what": what}
        (self.directory / str(process.pid)).write_text(json.dumps(record))

    def remove(self, process: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(OSError):
            (self.directory / str(process.pid)).unlink()

    def stop_leftovers(self) -> list[str]:
        """Kill (SIGKILL) what an earlier localcloud in this directory left running;
        the description of each one stopped."""
        stopped = []
        for path in sorted(self.directory.glob("*")) if self.directory.is_dir() else []:
            try:
                record = json.loads(path.read_text())
                pid = int(record["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)
                continue
            if process_identity(pid) == record.get("identity"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    if record.get("group"):
                        os.killpg(pid, signal.SIGKILL)
                    else:
                        os.kill(pid, signal.SIGKILL)
                stopped.append(f"{record.get('what', 'process')} (pid {pid})")
            path.unlink(missing_ok=True)
        return stopped
