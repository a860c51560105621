"""`retrain`: the command line of the product, against localcloud or Google Cloud.

    retrain local up [--config FILE] [--dir DIR] [--detach]   start localcloud
    retrain local down [--dir DIR]                            stop it
    retrain local demo [--twice]                              the whole loop, end to end
    retrain drop PATH... --to gs://BUCKET/PREFIX/             upload data
    retrain request PIPELINE [--data-uri URI] [--set K=V]...  publish a retrain request
    retrain runs [--pipeline P]                               table of runs
    retrain rerun PIPELINE RUN_ID                             a new run on a run's inputs
    retrain predict PIPELINE --instances FILE|-               predict through the endpoint
    retrain replay EVENT.json [--to trigger|job-events]       post a recorded CloudEvent

Commands other than `local` use the environment (STORAGE_EMULATOR_HOST, ...,
GOOGLE_CLOUD_PROJECT, RETRAIN_CONFIG); when a localcloud is running in DIR they read
DIR/env, so they work against it without any set-up.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from localcloud.errors import LocalCloudError

DEFAULT_DIR = Path(".localcloud")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except LocalCloudError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retrain", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(metavar="COMMAND")

    local = sub.add_parser("local", help="run localcloud, the embedded local cloud")
    local_sub = local.add_subparsers(metavar="ACTION")
    up = local_sub.add_parser("up", help="start localcloud")
    up.add_argument(
        "--config", type=Path, default=None, help="pipelines TOML (default: the demo config)"
    )
    up.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help="state directory (default .localcloud)"
    )
    up.add_argument("--detach", action="store_true", help="return once every piece answers")
    up.add_argument("--tick-seconds", type=float, default=5.0, help="scheduler tick interval")
    up.set_defaults(func=cmd_up)
    down = local_sub.add_parser("down", help="stop localcloud")
    down.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    down.set_defaults(func=cmd_down)
    demo = local_sub.add_parser("demo", help="up, drop data, follow the run, predict, summary")
    demo.add_argument("--dir", type=Path, default=DEFAULT_DIR / "demo")
    demo.add_argument("--twice", action="store_true", help="drop a second batch: retraining")
    demo.add_argument("--epochs", type=int, default=None, help="override the demo's epochs")
    demo.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each run")
    demo.set_defaults(func=cmd_demo)

    drop = sub.add_parser("drop", help="upload files to a bucket prefix")
    drop.add_argument("paths", nargs="+", type=Path)
    drop.add_argument("--to", required=True, help="gs://BUCKET/PREFIX/")
    drop.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    drop.set_defaults(func=cmd_drop)

    request = sub.add_parser("request", help="publish a retrain request")
    request.add_argument("pipeline")
    request.add_argument("--data-uri")
    request.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    request.add_argument("--reason")
    request.add_argument("--topic", default="retrain-requests")
    request.add_argument(
        "--config", help="pipelines TOML (path or gs://) to check against (default: RETRAIN_CONFIG)"
    )
    request.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    request.set_defaults(func=cmd_request)

    runs = sub.add_parser("runs", help="list runs")
    runs.add_argument("--pipeline")
    runs.add_argument("--watch", action="store_true", help="redraw the table live until Ctrl-C")
    runs.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    runs.set_defaults(func=cmd_runs)

    rerun = sub.add_parser("rerun", help="train again on exactly the inputs of an old run")
    rerun.add_argument("pipeline")
    rerun.add_argument("run_id")
    rerun.add_argument("--reason")
    rerun.add_argument("--topic", default="retrain-requests")
    rerun.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    rerun.set_defaults(func=cmd_rerun)

    predict = sub.add_parser("predict", help="predict through a pipeline's endpoint")
    predict.add_argument("pipeline")
    predict.add_argument(
        "--instances", required=True, help="JSON file ({'instances': [...]} or a list), or -"
    )
    predict.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    predict.set_defaults(func=cmd_predict)

    replay = sub.add_parser("replay", help="post a recorded CloudEvent to a function")
    replay.add_argument("event", type=Path)
    replay.add_argument("--to", choices=("trigger", "job-events"), default="trigger")
    replay.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    replay.set_defaults(func=cmd_replay)
    return parser


# local ---------------------------------------------------------------------------------
def cmd_up(args: argparse.Namespace) -> int:
    from localcloud.stack import DEMO_CONFIG, Options, Stack

    config = (args.config or DEMO_CONFIG).resolve()
    if not config.exists():
        raise LocalCloudError(f"config file {config} not found")
    running = _running_pid(args.dir)
    if running:
        raise LocalCloudError(
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
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    try:
        while not stopping:
            time.sleep(0.5)
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
            [sys.executable, "-m", "localcloud.cli", "local", "up", "--config", str(config),
             "--dir", str(args.dir), "--tick-seconds", str(args.tick_seconds)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if child.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            raise LocalCloudError("localcloud failed to start:\n" + "\n".join(tail))
        if (args.dir / "env").exists() and (args.dir / "pid").exists():
            from localcloud.stack import read_env

            _print_env(read_env(args.dir / "env"), args.dir)
            print(f"logs: {log_path}; stop with `retrain local down --dir {args.dir}`")
            return 0
        time.sleep(0.2)
    child.terminate()
    raise LocalCloudError(f"localcloud did not start within 120s; see {log_path}")


def _print_env(env: dict[str, str], directory: Path) -> None:
    print(f"localcloud is up. Environment (also in {directory / 'env'}):")
    for key, value in sorted(env.items()):
        print(f"  {key}={value}")


def _running_pid(directory: Path) -> int | None:
    try:
        pid = int((directory / "pid").read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return pid


def cmd_down(args: argparse.Namespace) -> int:
    pid = _running_pid(args.dir)
    if pid is None:
        raise LocalCloudError(f"localcloud is not running in {args.dir}")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _running_pid(args.dir) == pid:
        time.sleep(0.2)
    if _running_pid(args.dir) == pid:
        os.killpg(pid, signal.SIGKILL)
        (args.dir / "pid").unlink(missing_ok=True)
    print(f"localcloud in {args.dir} stopped; its state stays there for the next `up`")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from localcloud.demo.run import run_demo

    return run_demo(args.dir, twice=args.twice, epochs=args.epochs, timeout=args.timeout)


# against any cloud ----------------------------------------------------------------------
def _env(directory: Path) -> dict[str, str]:
    """The process environment, completed from DIR/env when localcloud runs there."""
    from localcloud.stack import read_env

    env = dict(os.environ)
    if (directory / "env").exists():
        for key, value in read_env(directory / "env").items():
            env.setdefault(key, value)
    return env


def _apply_env(directory: Path) -> dict[str, str]:
    env = _env(directory)
    for key in ("STORAGE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST"):
        if key in env:
            os.environ[key] = env[key]
    return env


def _storage(env: dict[str, str]) -> Any:
    from google.cloud import storage  # type: ignore[attr-defined]

    project = env.get("GOOGLE_CLOUD_PROJECT") or None
    if env.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project or "localcloud", credentials=AnonymousCredentials())
    return storage.Client(project=project)


def cmd_drop(args: argparse.Namespace) -> int:
    env = _apply_env(args.dir)
    if not args.to.startswith("gs://"):
        raise LocalCloudError(f"--to must be gs://BUCKET/PREFIX/, not {args.to!r}")
    bucket_name, _, prefix = args.to.removeprefix("gs://").partition("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    files = []
    for path in args.paths:
        if path.is_dir():
            files += [
                (p, prefix + str(p.relative_to(path)))
                for p in sorted(path.rglob("*"))
                if p.is_file()
            ]
        elif path.is_file():
            files.append((path, prefix + path.name))
        else:
            raise LocalCloudError(f"{path} does not exist")
    bucket = _storage(env).bucket(bucket_name)
    # Markers (_SUCCESS) go last, so that a batch is complete when it lands.
    files.sort(key=lambda item: item[0].name.startswith("_"))
    for local, name in files:
        bucket.blob(name).upload_from_filename(str(local))
        print(f"uploaded {local} -> gs://{bucket_name}/{name}")
    return 0


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def cmd_request(args: argparse.Namespace) -> int:
    env = _apply_env(args.dir)
    from google.cloud import pubsub_v1

    payload: dict[str, Any] = {"pipeline": args.pipeline}
    if args.data_uri:
        payload["data_uri"] = args.data_uri
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LocalCloudError(f"--set takes KEY=VALUE, not {item!r}")
        overrides[key] = _parse_value(value)
    if overrides:
        payload["hyperparameters"] = overrides
    if args.reason:
        payload["reason"] = args.reason
    problem = _request_problem(payload, args.config, env)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    project = env.get("GOOGLE_CLOUD_PROJECT")
    if not project:
        raise LocalCloudError("GOOGLE_CLOUD_PROJECT is not set (and no localcloud runs in --dir)")
    publisher = pubsub_v1.PublisherClient()
    topic = (
        args.topic
        if args.topic.startswith("projects/")
        else publisher.topic_path(project, args.topic)
    )
    message_id = publisher.publish(topic, json.dumps(payload).encode()).result(timeout=30)
    print(f"published retrain request {message_id} to {topic}: {json.dumps(payload)}")
    return 0


def _request_problem(payload: dict[str, Any], config_arg: str | None, env: dict[str, str]) -> str:
    """Why the trigger would refuse `payload`, checked with the trigger's own code against
    the config; "" when it would accept it, or when no config can be read to tell."""
    from retrain.config import parse_config
    from retrain.errors import ConfigError, InvalidEvent
    from retrain.events import request_from_payload
    from retrain.request_rules import Refused, check

    source = config_arg or env.get("RETRAIN_CONFIG")
    if not source:
        return ""
    try:
        text = _read_text(source, env)
    except Exception as err:  # a missing file, an unreachable bucket: anything unreadable
        if config_arg:
            return f"cannot read --config {source}: {err}"
        print(
            f"warning: RETRAIN_CONFIG {source} is unreadable ({err}); not checked", file=sys.stderr
        )
        return ""
    try:
        verdict = check(request_from_payload("cli", payload, {}), parse_config(text, source))
    except (ConfigError, InvalidEvent) as err:
        return str(err)
    return verdict.message if isinstance(verdict, Refused) else ""


def _read_text(source: str, env: dict[str, str]) -> str:
    if source.startswith("gs://"):
        bucket, _, name = source.removeprefix("gs://").partition("/")
        return str(_storage(env).bucket(bucket).blob(name).download_as_text())
    return Path(source).read_text(encoding="utf-8")


def cmd_runs(args: argparse.Namespace) -> int:
    from localcloud.runs import list_runs, print_runs, watch_runs

    env = _apply_env(args.dir)
    if args.watch:
        try:
            watch_runs(env, args.pipeline)
        except KeyboardInterrupt:
            return 0
    print_runs(list_runs(env, pipeline=args.pipeline))
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    """Publish a retrain request with `rerun_of`: the trigger submits it like any request,
    on the original run's manifest. Checked here first, so a gone generation is reported
    at once, naming the object, and no request is published."""
    from localcloud.runs import load_config, rerun_problem

    env = _apply_env(args.dir)
    problem = rerun_problem(env, load_config(env), args.pipeline, args.run_id)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    payload: dict[str, Any] = {"pipeline": args.pipeline, "rerun_of": args.run_id}
    if args.reason:
        payload["reason"] = args.reason
    message_id, topic = _publish(env, args.topic, payload)
    print(f"published rerun request {message_id} to {topic}: {json.dumps(payload)}")
    return 0


def _publish(env: dict[str, str], topic_name: str, payload: dict[str, Any]) -> tuple[str, str]:
    from google.cloud import pubsub_v1

    project = env.get("GOOGLE_CLOUD_PROJECT")
    if not project:
        raise LocalCloudError("GOOGLE_CLOUD_PROJECT is not set (and no localcloud runs in --dir)")
    publisher = pubsub_v1.PublisherClient()
    topic = (
        topic_name
        if topic_name.startswith("projects/")
        else publisher.topic_path(project, topic_name)
    )
    message_id = publisher.publish(topic, json.dumps(payload).encode()).result(timeout=30)
    return str(message_id), topic


def cmd_predict(args: argparse.Namespace) -> int:
    from localcloud.runs import predict

    env = _apply_env(args.dir)
    text = sys.stdin.read() if str(args.instances) == "-" else Path(args.instances).read_text()
    try:
        body = json.loads(text)
    except json.JSONDecodeError as err:
        raise LocalCloudError(f"instances are not JSON: {err}") from err
    instances = body["instances"] if isinstance(body, dict) and "instances" in body else body
    if not isinstance(instances, list):
        raise LocalCloudError("instances must be a JSON list or {'instances': [...]}")
    from google.api_core import exceptions

    try:
        answer = predict(env, args.pipeline, instances)
    except (exceptions.GoogleAPICallError, exceptions.RetryError) as err:
        # An endpoint whose model server is down or restarting answers UNAVAILABLE; say
        # so on one line, the way the rest of the CLI reports errors.
        reason = " ".join(str(getattr(err, "message", None) or err).split())
        unavailable = (exceptions.ServiceUnavailable, exceptions.RetryError)
        hint = (
            ": if its model server is restarting, try again in a moment"
            if isinstance(err, unavailable)
            else ""
        )
        raise LocalCloudError(
            f"prediction through the endpoint of pipeline {args.pipeline!r} failed: {reason}{hint}"
        ) from err
    print(json.dumps(answer, indent=2))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    import requests

    env = _env(args.dir)
    url = env.get("TRIGGER_URL" if args.to == "trigger" else "JOB_EVENTS_URL")
    if not url:
        raise LocalCloudError("no function URL: start localcloud (`retrain local up --detach`)")
    recorded = json.loads(args.event.read_text())
    headers, body = recorded.get("headers", {}), recorded.get("body", recorded)
    response = requests.post(url, headers=headers, data=json.dumps(body), timeout=600)
    print(f"{response.status_code} {response.reason}")
    return 0 if response.status_code < 300 else 1


if __name__ == "__main__":
    sys.exit(main())
