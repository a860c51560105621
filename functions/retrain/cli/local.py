"""`retrain local up|down|demo`: localcloud, the embedded local cloud. The only commands
that import localcloud, and they import it when run."""

from __future__ import annotations

import argparse
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from retrain.cli.env import read_env_file
from retrain.cli.errors import CliError

Command = Callable[[argparse.Namespace], int]


def reported(command: Command) -> Command:
    """localcloud's own errors, reported as the command line reports any error."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        from localcloud.errors import LocalCloudError

        try:
            return command(args)
        except LocalCloudError as err:
            raise CliError(str(err)) from err

    return run


@reported
def cmd_up(args: argparse.Namespace) -> int:
    from localcloud.stack import DEMO_CONFIG, Options, Stack

    config = (args.config or DEMO_CONFIG).resolve()
    if not config.exists():
        raise CliError(f"config file {config} not found")
    running = running_pid(args.dir)
    if running:
        raise CliError(
            f"localcloud is already running in {args.dir} (pid {running}): "
            f"`retrain local down --dir {args.dir}` first"
        )
    if args.detach:
        return _up_detached(args, config)
    stack = Stack(
        Options(dir=args.dir, config=config, tick_seconds=args.tick_seconds),
        progress=lambda message: print(f"  {message}", flush=True),
    )
    print(f"localcloud: starting in {args.dir} with {config}", flush=True)
    env = stack.up()
    (args.dir / "pid").write_text(str(os.getpid()))
    _print_env(env, args.dir)
    stopping: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    try:
        while not stopping:
            time.sleep(0.5)  # the foreground process idles until SIGTERM or Ctrl-C
    except KeyboardInterrupt:
        pass
    print("localcloud: stopping", flush=True)
    stack.down()
    (args.dir / "pid").unlink(missing_ok=True)
    return 0


def _up_detached(args: argparse.Namespace, config: Path) -> int:
    args.dir.mkdir(parents=True, exist_ok=True)
    log_path = args.dir / "localcloud.log"
    (args.dir / "env").unlink(missing_ok=True)
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "retrain.cli", "local", "up", "--config", str(config),
             "--dir", str(args.dir), "--tick-seconds", str(args.tick_seconds)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if child.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            raise CliError("localcloud failed to start:\n" + "\n".join(tail))
        if (args.dir / "env").exists() and (args.dir / "pid").exists():
            _print_env(read_env_file(args.dir / "env"), args.dir)
            print(f"logs: {log_path}; stop with `retrain local down --dir {args.dir}`")
            return 0
        time.sleep(0.2)
    child.terminate()
    raise CliError(f"localcloud did not start within 120s; see {log_path}")


def _print_env(env: dict[str, str], directory: Path) -> None:
    print(f"localcloud is up. Environment (also in {directory / 'env'}):")
    for key, value in sorted(env.items()):
        print(f"  {key}={value}")


def running_pid(directory: Path) -> int | None:
    try:
        pid = int((directory / "pid").read_text().strip())
    except (OSError, ValueError):
        return None
    from localcloud.procs import process_identity

    # Not `os.kill(pid, 0)`: a localcloud killed with -9 stays a zombie until its new
    # parent reaps it, and a zombie no longer runs anything.
    return pid if process_identity(pid) is not None else None


def cmd_down(args: argparse.Namespace) -> int:
    pid = running_pid(args.dir)
    if pid is None:
        raise CliError(f"localcloud is not running in {args.dir}")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and running_pid(args.dir) == pid:
        time.sleep(0.2)
    if running_pid(args.dir) == pid:
        os.killpg(pid, signal.SIGKILL)
        (args.dir / "pid").unlink(missing_ok=True)
    print(f"localcloud in {args.dir} stopped; its state stays there for the next `up`")
    return 0


@reported
def cmd_demo(args: argparse.Namespace) -> int:
    from localcloud.demo.run import run_demo

    return run_demo(args.dir, twice=args.twice, epochs=args.epochs, timeout=args.timeout)
