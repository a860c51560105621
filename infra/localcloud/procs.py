"""Small helpers for the local servers: free ports, readiness waits, child processes."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable

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
