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

Only `local` imports localcloud (when it runs); the other commands target Google Cloud
or a localcloud alike. They use the environment (STORAGE_EMULATOR_HOST, ...,
GOOGLE_CLOUD_PROJECT, RETRAIN_CONFIG); when a localcloud is running in DIR they read
DIR/env, so they work against it without any set-up.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from retrain.cli import commands, local
from retrain.cli.errors import CliError

DEFAULT_DIR = Path(".localcloud")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CliError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retrain", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(metavar="COMMAND")

    local_parser = sub.add_parser("local", help="run localcloud, the embedded local cloud")
    local_sub = local_parser.add_subparsers(metavar="ACTION")
    up = local_sub.add_parser("up", help="start localcloud")
    up.add_argument(
        "--config", type=Path, default=None, help="pipelines TOML (default: the demo config)"
    )
    up.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help="state directory (default .localcloud)"
    )
    up.add_argument("--detach", action="store_true", help="return once every piece answers")
    up.add_argument("--tick-seconds", type=float, default=5.0, help="scheduler tick interval")
    up.set_defaults(func=local.cmd_up)
    down = local_sub.add_parser("down", help="stop localcloud")
    down.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    down.set_defaults(func=local.cmd_down)
    demo = local_sub.add_parser("demo", help="up, drop data, follow the run, predict, summary")
    demo.add_argument("--dir", type=Path, default=DEFAULT_DIR / "demo")
    demo.add_argument("--twice", action="store_true", help="drop a second batch: retraining")
    demo.add_argument("--epochs", type=int, default=None, help="override the demo's epochs")
    demo.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each run")
    demo.set_defaults(func=local.cmd_demo)

    drop = sub.add_parser("drop", help="upload files to a bucket prefix")
    drop.add_argument("paths", nargs="+", type=Path)
    drop.add_argument("--to", required=True, help="gs://BUCKET/PREFIX/")
    drop.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    drop.set_defaults(func=commands.cmd_drop)

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
    request.set_defaults(func=commands.cmd_request)

    runs = sub.add_parser("runs", help="list runs")
    runs.add_argument("--pipeline")
    runs.add_argument("--watch", action="store_true", help="redraw the table live until Ctrl-C")
    runs.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    runs.set_defaults(func=commands.cmd_runs)

    rerun = sub.add_parser("rerun", help="train again on exactly the inputs of an old run")
    rerun.add_argument("pipeline")
    rerun.add_argument("run_id")
    rerun.add_argument("--reason")
    rerun.add_argument("--topic", default="retrain-requests")
    rerun.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    rerun.set_defaults(func=commands.cmd_rerun)

    predict = sub.add_parser("predict", help="predict through a pipeline's endpoint")
    predict.add_argument("pipeline")
    predict.add_argument(
        "--instances", required=True, help="JSON file ({'instances': [...]} or a list), or -"
    )
    predict.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    predict.set_defaults(func=commands.cmd_predict)

    replay = sub.add_parser("replay", help="post a recorded CloudEvent to a function")
    replay.add_argument("event", type=Path)
    replay.add_argument("--to", choices=("trigger", "job-events"), default="trigger")
    replay.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    replay.set_defaults(func=commands.cmd_replay)
    return parser
