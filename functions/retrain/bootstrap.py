"""The composition root: builds adapters once per cold start, lazily, from settings, and
hands the handlers one bundle of ports per config (bundle.py).

Nothing here runs at import time. Clients are created on first use, so an event that is
ignored never imports the Vertex client library."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from retrain.bundle import Lazy, Ports
from retrain.config import Config, Pipeline
from retrain.config_source import ConfigSource
from retrain.errors import ConfigError, InvalidEvent, PermanentError, TransientError
from retrain.events import Event, parse
from retrain.jobevents import JobEvents
from retrain.ledger import Ledger
from retrain.logs import Logger
from retrain.ports import JobLogs, Notifier, TrainingService
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
        self._adapters: dict[Any, Any] = {}
        self._ports: Ports | None = None
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
                from retrain.adapters.clients import vertex_connection
                from retrain.adapters.vertex import VertexTraining

                connection = vertex_connection(self.settings, config.defaults.region)
                self._training[key] = VertexTraining(key[0], key[1], connection)
            return self._training[key]

    def ports(self) -> Ports:
        """The bundle of ports for the current config: built once per config (a reloaded
        config gets a new one; the clients underneath are shared). Each port is built on
        first use: an ignored event never imports the Vertex client."""
        config = self.config()
        with self._lock:
            built = self._ports
            if built is not None and built.config is config:
                return built
        from retrain.adapters.gcs import GcsBlobs, GcsDataObjects

        ports = Ports(
            config=config,
            project=Lazy(lambda: self.project(config)),
            ledger=Lazy(lambda: self.ledger(config)),
            training=Lazy(lambda: self.training(config)),
            notifiers=self.notifiers,
            blobs=Lazy.of(GcsBlobs(self.storage)),
            registry=Lazy(lambda: self._vertex(config_key="registry")(config)),
            endpoints=Lazy(lambda: self._vertex(config_key="endpoints")(config)),
            job_logs=Lazy(lambda: self.job_logs(config)),
            objects=Lazy.of(GcsDataObjects(self.storage)),
        )
        with self._lock:
            self._ports = ports
        return ports

    @functools.cached_property
    def trigger(self) -> Trigger:
        return Trigger(self.ports, self.log)

    @functools.cached_property
    def job_events(self) -> JobEvents:
        return JobEvents(self.ports, self.log)

    def _vertex(self, config_key: str) -> Callable[[Config], Any]:
        """A per-(project, region) cache of the registry or endpoints adapter."""

        def build(config: Config) -> Any:
            key = (config_key, self.project(config), config.defaults.region)
            with self._lock:
                if key not in self._adapters:
                    from retrain.adapters.clients import vertex_connection
                    from retrain.adapters.registry import VertexEndpoints, VertexRegistry

                    kind = VertexRegistry if config_key == "registry" else VertexEndpoints
                    connection = vertex_connection(self.settings, config.defaults.region)
                    self._adapters[key] = kind(key[1], key[2], connection)
                return self._adapters[key]

        return build

    def job_logs(self, config: Config) -> JobLogs:
        key = ("logs", self.project(config))
        with self._lock:
            if key not in self._adapters:
                from retrain.adapters.joblogs import CloudJobLogs, logging_client

                client = logging_client(self.settings, key[1])
                self._adapters[key] = CloudJobLogs(key[1], client)
            return self._adapters[key]

    def notifiers(self, pipeline: Pipeline) -> list[Notifier]:
        """The pipeline's channels. The webhook URL is read from the environment variable
        the config names (a mounted secret), at use, and never logged."""
        from retrain.adapters.notifiers import PubSubNotifier, WebhookNotifier

        notify = pipeline.notify
        channels: list[Notifier] = []
        if notify is None:
            return channels
        if notify.webhook_env:
            url = os.environ.get(notify.webhook_env)
            if not url:
                raise ConfigError(
                    f"pipelines.{pipeline.name}.notify.webhook_env names "
                    f"{notify.webhook_env}, which is not set"
                )
            channels.append(WebhookNotifier(url))
        if notify.pubsub_topic:
            channels.append(PubSubNotifier(self.publisher, notify.pubsub_topic))
        return channels

    def publisher(self) -> Any:
        with self._lock:
            if "publisher" not in self._adapters:
                from retrain.adapters.clients import publisher_client

                self._adapters["publisher"] = publisher_client()
            return self._adapters["publisher"]


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
        log.error(
            str(err),
            event_id=event_id,
            event_type=ce_type,
            error=type(err).__name__,
            **err.log_fields,
        )
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
