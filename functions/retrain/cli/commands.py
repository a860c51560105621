"""The commands that target a cloud, Google Cloud or localcloud alike: drop, request,
runs, rerun, predict and replay. None imports localcloud: they run wherever the product's
package is installed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from retrain.cli.env import apply_env, command_env, project, storage
from retrain.cli.errors import CliError


def cmd_drop(args: argparse.Namespace) -> int:
    env = apply_env(args.dir)
    if not args.to.startswith("gs://"):
        raise CliError(f"--to must be gs://BUCKET/PREFIX/, not {args.to!r}")
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
            raise CliError(f"{path} does not exist")
    bucket = storage(env).bucket(bucket_name)
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
    env = apply_env(args.dir)
    payload: dict[str, Any] = {"pipeline": args.pipeline}
    if args.data_uri:
        payload["data_uri"] = args.data_uri
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--set takes KEY=VALUE, not {item!r}")
        overrides[key] = _parse_value(value)
    if overrides:
        payload["hyperparameters"] = overrides
    if args.reason:
        payload["reason"] = args.reason
    problem = _request_problem(payload, args.config, env)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    message_id, topic = _publish(env, args.topic, payload)
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
        return str(storage(env).bucket(bucket).blob(name).download_as_text())
    return Path(source).read_text(encoding="utf-8")


def cmd_runs(args: argparse.Namespace) -> int:
    from retrain.cli.runs import list_runs
    from retrain.cli.table import print_runs, watch_runs

    env = apply_env(args.dir)
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
    from retrain.cli.runs import load_config, rerun_problem

    env = apply_env(args.dir)
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
    from retrain.adapters.clients import publisher_client

    project_id = project(env)
    publisher = publisher_client()
    topic = (
        topic_name
        if topic_name.startswith("projects/")
        else publisher.topic_path(project_id, topic_name)
    )
    message_id = publisher.publish(topic, json.dumps(payload).encode()).result(timeout=30)
    return str(message_id), topic


def cmd_predict(args: argparse.Namespace) -> int:
    from retrain.cli.runs import predict

    env = apply_env(args.dir)
    text = sys.stdin.read() if str(args.instances) == "-" else Path(args.instances).read_text()
    try:
        body = json.loads(text)
    except json.JSONDecodeError as err:
        raise CliError(f"instances are not JSON: {err}") from err
    instances = body["instances"] if isinstance(body, dict) and "instances" in body else body
    if not isinstance(instances, list):
        raise CliError("instances must be a JSON list or {'instances': [...]}")
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
        raise CliError(
            f"prediction through the endpoint of pipeline {args.pipeline!r} failed: {reason}{hint}"
        ) from err
    print(json.dumps(answer, indent=2))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    import requests

    env = command_env(args.dir)
    url = env.get("TRIGGER_URL" if args.to == "trigger" else "JOB_EVENTS_URL")
    if not url:
        raise CliError("no function URL: start localcloud (`retrain local up --detach`)")
    recorded = json.loads(args.event.read_text())
    headers, body = recorded.get("headers", {}), recorded.get("body", recorded)
    response = requests.post(url, headers=headers, data=json.dumps(body), timeout=600)
    print(f"{response.status_code} {response.reason}")
    return 0 if response.status_code < 300 else 1
