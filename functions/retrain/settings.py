"""Process settings, read from the environment once per cold start.

Every environment variable the functions read is named here (infra checks that the
deployment sets each required one)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

REQUIRED_ENV = ("RETRAIN_CONFIG", "GOOGLE_CLOUD_PROJECT")
OPTIONAL_ENV = (
    "VERTEX_EMULATOR_HOST",
    "VERTEX_API_ENDPOINT",
    "STORAGE_EMULATOR_HOST",
    "PUBSUB_EMULATOR_HOST",
    "LOG_LEVEL",
    "LOGGING_EMULATOR_HOST",
    "LOGGING_API_ENDPOINT",
)


@dataclass(frozen=True)
class Settings:
    config_uri: str
    project: str
    vertex_endpoint: str | None = None
    storage_emulator: str | None = None
    pubsub_emulator: str | None = None
    log_level: str = "INFO"
    logging_endpoint: str | None = None  # an http:// value selects REST, anonymously
    # host:port of plaintext gRPC emulators (localcloud); they win over the REST endpoints
    vertex_emulator: str | None = None
    logging_emulator: str | None = None

    @property
    def emulated(self) -> bool:
        """Against emulators the clients use anonymous credentials (no account needed)."""
        return bool(
            self.storage_emulator
            or self.pubsub_emulator
            or self.vertex_emulator
            or self.logging_emulator
            or (self.vertex_endpoint or "").startswith("http://")
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        from retrain.errors import ConfigError

        env = os.environ if env is None else env
        missing = [name for name in REQUIRED_ENV if not env.get(name)]
        if "GOOGLE_CLOUD_PROJECT" in missing and env.get("RETRAIN_CONFIG"):
            missing.remove("GOOGLE_CLOUD_PROJECT")  # the config's `project` may supply it
        if missing:
            raise ConfigError(f"environment variable {', '.join(missing)} is not set")
        return cls(
            config_uri=env["RETRAIN_CONFIG"],
            project=env.get("GOOGLE_CLOUD_PROJECT", ""),
            vertex_endpoint=env.get("VERTEX_API_ENDPOINT") or None,
            storage_emulator=env.get("STORAGE_EMULATOR_HOST") or None,
            pubsub_emulator=env.get("PUBSUB_EMULATOR_HOST") or None,
            log_level=env.get("LOG_LEVEL", "INFO").upper(),
            logging_endpoint=env.get("LOGGING_API_ENDPOINT") or None,
            vertex_emulator=env.get("VERTEX_EMULATOR_HOST") or None,
            logging_emulator=env.get("LOGGING_EMULATOR_HOST") or None,
        )
