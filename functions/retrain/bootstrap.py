"""The composition root: builds adapters once per cold start, lazily, from settings.

Nothing here runs at import time. Clients are created on first use, so an event that is
ignored never imports the Vertex client library."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping
from typing import Any

from retrain.config import Config
from retrain.config_source import ConfigSource
from retrain.errors import ConfigError, InvalidEvent, PermanentError, TransientError
from retrain.events import Event, parse
from retrain.ledger import Ledger
from retrain.logs import Logger
from retrain.ports import TrainingService
from retrain.settings import Settings
from retrain.trigger import Trigger


class App:
    def __init__(self, settings: Settings, log: Logger):
        self.settings = settings
        self.log = log
        self._lock = threading.Lock()
        self._storage: Any = None
        self._ledgers: dict[str, Ledger] = {}
        self._training: dict[tuple[str, str], TrainingService] = {}
        from retrain.adapters.gcs import GcsBlobs

        self.config_source = ConfigSource(settings.config_uri, GcsBlobs(self.storage))

    def storage(self) -> Any:
        with self._lock:
            if self._storage is None:
                from retrain.adapters.clients import storage_client

                self._storage = storage_client(self.settings, self.settings.project)
            return self._storage

    def config(self) -> Config:
        return self.config_source.get()

    def project(self, config: Config) -> str:
        project = config.defaults.project or self.settings.project
        if not project:
            raise ConfigError(
                f"{config.source}: defaults.project is not set and neither is GOOGLE_CLOUD_PROJECT"
            )
        return project

    def ledger(self, config: Config) -> Ledger:
        uri = config.defaults.state_uri
        if uri not in self._ledgers:
            from retrain.adapters.gcs import GcsStateStore

            self._ledgers[uri] = Ledger(GcsStateStore(self.storage(), uri))
        return self._ledgers[uri]

    def training(self, config: Config) -> TrainingService:
        key = (self.project(config), config.defaults.region)
        with self._lock:
            if key not in self._training:
                from retrain.adapters.clients import vertex_client_kwargs
                from retrain.adapters.vertex import VertexTraining

                kwargs = vertex_client_kwargs(self.settings, config.defaults.region)
                self._training[key] = VertexTraining(key[0], key[1], kwargs)
            return self._training[key]

    @functools.cached_property
    def trigger(self) -> Trigger:
        return Trigger(self.config, self.ledger, self.training, self.log)


def deliver(
    handle: Callable[[Event], Any], attributes: Mapping[str, Any], data: Any, log: Logger
) -> None:
    """Parse one delivery and hand it to `handle`, acknowledging or retrying on purpose:
    permanent problems are logged and acknowledged; transient ones raise (HTTP 5xx)."""
    event_id = str(attributes.get("id", ""))
    ce_type = str(attributes.get("type", ""))
    try:
        event = parse(attributes, data)
    except InvalidEvent as err:
        log.error(f"invalid event: {err}", event_id=event_id, event_type=ce_type, error=str(err))
        return
    try:
        handle(event)
    except PermanentError as err:
        log.error(str(err), event_id=event_id, event_type=ce_type, error=type(err).__name__)
    except (TransientError, ConfigError) as err:
        log.warning(
            f"delivery will be retried: {err}",
            event_id=event_id,
            event_type=ce_type,
            error=type(err).__name__,
        )
        raise


@functools.cache
def app() -> App:
    settings = Settings.from_env()
    return App(settings, Logger(level=settings.log_level))
