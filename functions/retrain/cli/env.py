"""The environment the commands run under, and the official clients built from it.

Commands other than `local` read the process environment (STORAGE_EMULATOR_HOST, ...,
GOOGLE_CLOUD_PROJECT, RETRAIN_CONFIG); when a localcloud runs in DIR they complete it from
DIR/env, so they work against it without any set-up. Clients come from
`retrain.adapters.clients`, as the functions build theirs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrain.cli.errors import CliError
from retrain.settings import Settings

if TYPE_CHECKING:
    from retrain.adapters.clients import VertexConnection

NOT_SET = "{} is not set (and no localcloud runs in --dir)"


def read_env_file(path: Path) -> dict[str, str]:
    """DIR/env as `retrain local up` writes it: one KEY=VALUE a line."""
    env = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            env[key.strip()] = value.strip()
    return env


def command_env(directory: Path) -> dict[str, str]:
    """The process environment, completed from DIR/env when localcloud runs there."""
    env = dict(os.environ)
    if (directory / "env").exists():
        for key, value in read_env_file(directory / "env").items():
            env.setdefault(key, value)
    return env


def apply_env(directory: Path) -> dict[str, str]:
    """`command_env`, with the emulator hosts the official clients read from the process
    environment exported to it."""
    env = command_env(directory)
    for key in ("STORAGE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST"):
        if key in env:
            os.environ[key] = env[key]
    return env


def settings(env: Mapping[str, str]) -> Settings:
    """The functions' settings under `env`; RETRAIN_CONFIG may be unset (not every command
    reads the config)."""
    return Settings(
        config_uri=env.get("RETRAIN_CONFIG", ""),
        project=env.get("GOOGLE_CLOUD_PROJECT", ""),
        vertex_endpoint=env.get("VERTEX_API_ENDPOINT") or None,
        storage_emulator=env.get("STORAGE_EMULATOR_HOST") or None,
        pubsub_emulator=env.get("PUBSUB_EMULATOR_HOST") or None,
        vertex_emulator=env.get("VERTEX_EMULATOR_HOST") or None,
    )


def storage(env: Mapping[str, str]) -> Any:
    from retrain.adapters.clients import storage_client

    return storage_client(settings(env), env.get("GOOGLE_CLOUD_PROJECT", ""))


def vertex(env: Mapping[str, str], region: str) -> VertexConnection:
    """The connection the functions use under this environment (gRPC to an emulator host,
    REST to an http:// endpoint, or Google Cloud)."""
    from retrain.adapters.clients import vertex_connection

    return vertex_connection(settings(env), region)


def project(env: Mapping[str, str]) -> str:
    value = env.get("GOOGLE_CLOUD_PROJECT")
    if not value:
        raise CliError(NOT_SET.format("GOOGLE_CLOUD_PROJECT"))
    return value
