"""localcloud as one stack: every emulator, the bridge, the log router, the scheduler and
the product's two functions, wired like the Terraform wires Google Cloud.

    data ─▶ fake-gcs-server ─notification─▶ Pub/Sub ─push─▶ eventarc bridge ─▶ trigger
    trigger ─▶ Vertex emulator ─▶ job processes ─▶ LogStore ─▶ router (shared filter)
          ─▶ Pub/Sub job-events ─push─▶ bridge ─▶ on_job_event ─▶ models/endpoints
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localcloud.errors import LocalCloudError
from localcloud.eventarc import EventarcBridge, connect
from localcloud.functions import FunctionServer
from localcloud.logging_api import LoggingServer
from localcloud.logstore import LogStore
from localcloud.procs import ChildRecords, port_is_open
from localcloud.pubsub.server import PubSubServer
from localcloud.router import LogRouter, pubsub_publisher
from localcloud.scheduler import Scheduler
from localcloud.storage import StorageServer
from localcloud.supervisor import Supervisor
from localcloud.tls import certificate, trusted_roots
from localcloud.vertex.images import ImageCommands
from localcloud.vertex.runtime_local import LocalJobRuntime, LocalModelRuntime
from localcloud.vertex.server import VertexServer
from localcloud.webhook import WebhookSink

DEFAULT_PROJECT = "localcloud"
GCS_TOPIC = "gcs-notifications"
TOPICS = ("retrain-requests", "job-events", "retrain-ticks", "retrain-notifications")
DEMO_CONFIG = Path(__file__).resolve().parent / "demo" / "pipelines.toml"

Progress = Callable[[str], None]
_log = logging.getLogger(__name__)


@dataclass
class Options:
    dir: Path
    config: Path
    tick_seconds: float = 5.0
    retry_min_backoff_s: float = 1.0
    retry_max_backoff_s: float = 30.0
    max_delivery_attempts: int = 10
    extra_env: dict[str, str] = field(default_factory=dict)


class Stack:
    """`Stack(options).up()` starts everything and writes `DIR/env`; `down()` stops it.
    State lives under DIR, so an `up` after a `down` (or after localcloud was killed)
    finds buckets, topics, messages not yet delivered, jobs, models and endpoints again;
    a job that was in flight runs again from the start. While it is up, a supervisor
    restarts the processes and servers that die (see localcloud.supervisor)."""

    def __init__(self, options: Options, progress: Progress | None = None):
        self.options = options
        self.dir = options.dir.resolve()
        self._progress = progress or (lambda _m: None)
        self._progress_given = progress is not None
        self._stop: list[Callable[[], Any]] = []
        self.env: dict[str, str] = {}
        self.project = DEFAULT_PROJECT
        self.log_store: LogStore | None = None
        self.vertex: VertexServer | None = None
        self.storage: StorageServer | None = None
        self.pubsub: PubSubServer | None = None
        self.webhook: WebhookSink | None = None
        self.functions: dict[str, FunctionServer] = {}
        self.supervisor: Supervisor | None = None
        self.children = ChildRecords(self.dir / "children")

    # lifecycle ---------------------------------------------------------------------------
    def up(self) -> dict[str, str]:
        try:
            self._up()
        except BaseException:
            self.down()
            raise
        return self.env

    def _up(self) -> None:
        from retrain.config import parse_config
        from retrain.errors import ConfigError

        config_path = self.options.config.resolve()
        try:
            config = parse_config(config_path.read_text(encoding="utf-8"), str(config_path))
        except (OSError, ConfigError) as err:
            raise LocalCloudError(f"config invalid: {err}") from err
        self.project = config.defaults.project or DEFAULT_PROJECT
        self.dir.mkdir(parents=True, exist_ok=True)
        logs_dir = self.dir / "logs"
        logs_dir.mkdir(parents=True, exist_ok=True)
        # Processes of a localcloud that was killed here lead their own process groups and
        # outlive it: a stray trainer would write into a job's outputs, a stray server hold
        # on to its port.
        for leftover in self.children.stop_leftovers():
            self._progress(f"stopped {leftover}, left running by an earlier localcloud")

        self._progress("starting Pub/Sub")
        self.pubsub = PubSubServer(self.dir / "pubsub").start()
        self._stop.append(self.pubsub.stop)
        pubsub_host = self.pubsub.host_port
        os.environ["PUBSUB_EMULATOR_HOST"] = pubsub_host  # for the official clients here

        self._progress("starting Cloud Storage (fake-gcs-server)")
        self.storage = StorageServer(
            root=self.dir / "gcs",
            pubsub_project=self.project,
            pubsub_topic=GCS_TOPIC,
            pubsub_host=pubsub_host,
            log_path=logs_dir / "gcs.log",
            children=self.children,
            # Versioned buckets keep noncurrent generations, as GCS does: a rerun reads the
            # generations its run pinned even after they were overwritten.
            keep_versions=True,
        )
        self._ensure_topics([GCS_TOPIC])  # fake-gcs-server publishes to an existing topic
        self.storage.start()
        self._stop.append(self.storage.stop)

        self._progress("starting Cloud Logging")
        self.log_store = LogStore(logs_dir / "entries.jsonl")
        logging_server = LoggingServer(self.log_store).start()
        self._stop.append(logging_server.stop)

        self._progress("starting Vertex AI")
        runtime_env = {"STORAGE_EMULATOR_HOST": self.storage.url, **self.options.extra_env}
        commands = ImageCommands.from_env()
        jobs = LocalJobRuntime(
            self.project,
            self.log_store,
            self.dir / "jobs",
            commands,
            runtime_env,
            children=self.children,
        )
        models = LocalModelRuntime(
            self.log_store,
            commands,
            runtime_env,
            project=self.project,
            children=self.children,
            report=self._report,
        )
        self.vertex = VertexServer(
            self.dir / "vertex", jobs=jobs, models=models, logs=self.log_store, tls=True
        ).start()
        self._stop.append(self.vertex.stop)

        self._create_buckets(config)
        notify_topics = [
            p.notify.pubsub_topic.rsplit("/", 1)[-1]
            for p in config.pipelines.values()
            if p.notify and p.notify.pubsub_topic
        ]
        self._ensure_topics([*TOPICS, *notify_topics])

        self.env = {
            "STORAGE_EMULATOR_HOST": self.storage.url,
            "PUBSUB_EMULATOR_HOST": pubsub_host,
            # The functions speak gRPC to Vertex AI, as in production; the REST front
            # stays available for clients that pick REST.
            "VERTEX_EMULATOR_HOST": self.vertex.grpc_host,
            "VERTEX_API_ENDPOINT": self.vertex.url,
            "LOGGING_EMULATOR_HOST": logging_server.grpc_host,
            "LOGGING_API_ENDPOINT": logging_server.url,
            "GOOGLE_CLOUD_PROJECT": self.project,
            "RETRAIN_CONFIG": str(config_path),
        }
        # Webhook URLs the config names but nobody set go to a local receiver.
        function_env = {**self.env, **self.options.extra_env}
        unset = sorted(
            {
                p.notify.webhook_env
                for p in config.pipelines.values()
                if p.notify
                and p.notify.webhook_env
                and p.notify.webhook_env not in function_env
                and p.notify.webhook_env not in os.environ
            }
        )
        if unset:
            self.webhook = WebhookSink(logs_dir / "webhook.jsonl").start()
            self._stop.append(self.webhook.stop)
            function_env.update({name: self.webhook.url for name in unset})
            self._progress(f"webhook notifications ({', '.join(unset)}) go to {self.webhook.path}")

        self._progress("starting the functions (functions-framework)")
        functions = {}
        for target in ("trigger", "on_job_event"):
            server = FunctionServer(
                target,
                env=function_env,
                log_path=logs_dir / f"{target}.log",
                children=self.children,
            ).start()
            self._stop.append(server.stop)
            self.functions[target] = server
            functions[target] = server.url
        self.env["TRIGGER_URL"] = functions["trigger"]
        self.env["JOB_EVENTS_URL"] = functions["on_job_event"]
        # For clients that only open TLS channels (the Vertex AI SDK over gRPC): the same
        # Vertex front over TLS, and gRPC's own switch to trust localcloud's certificate.
        # The functions do not get these; they speak plaintext gRPC as configured above.
        self.env["VERTEX_TLS_ENDPOINT"] = str(self.vertex.grpc_tls_host)
        roots = trusted_roots(
            certificate(self.vertex.tls_certificate.parent),
            os.environ.get("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"),
        )
        self.env["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = str(roots)

        self._progress("wiring Eventarc triggers")
        bridge = EventarcBridge().start()
        self._stop.append(bridge.stop)
        wiring = [
            (GCS_TOPIC, "trigger-storage", functions["trigger"], "storage"),
            ("retrain-requests", "trigger-requests", functions["trigger"], "pubsub"),
            ("retrain-ticks", "trigger-ticks", functions["trigger"], "pubsub"),
            ("job-events", "job-events", functions["on_job_event"], "pubsub"),
            ("retrain-ticks", "job-events-ticks", functions["on_job_event"], "pubsub"),
        ]
        for topic, name, url, kind in wiring:
            connect(
                pubsub_host,
                self.project,
                topic,
                f"eventarc-{name}",
                bridge,
                name,
                url,
                kind,  # type: ignore[arg-type]
                dead_letter_topic=f"{topic}-dead-letter",
                max_attempts=self.options.max_delivery_attempts,
                min_backoff=self.options.retry_min_backoff_s,
                max_backoff=self.options.retry_max_backoff_s,
            )

        self._progress("starting the log router and the scheduler")
        router = LogRouter.from_shared_filter(
            self.log_store, pubsub_publisher(self.project, "job-events")
        ).start()
        self._stop.append(router.stop)
        scheduler = Scheduler(
            self.options.tick_seconds, pubsub_publisher(self.project, "retrain-ticks")
        ).start()
        self._stop.append(scheduler.stop)
        self.supervisor = self._supervise(logs_dir)
        self._stop.append(self.supervisor.stop)
        write_env(self.dir / "env", self.env)

    def _supervise(self, logs_dir: Path) -> Supervisor:
        """Watch what can die on its own: the processes, and the Pub/Sub server that every
        publisher and push subscription reaches on its one port."""
        assert self.pubsub is not None and self.storage is not None
        pubsub, storage = self.pubsub, self.storage
        supervisor = Supervisor(self._report, interval=0.5)
        supervisor.watch(
            "Pub/Sub",
            lambda: pubsub.running and port_is_open(pubsub.host, pubsub.port),
            pubsub.restart,
        )
        supervisor.watch(
            f"Cloud Storage (fake-gcs-server; log {logs_dir / 'gcs.log'})",
            storage.alive,
            storage.restart,
        )
        for target, server in self.functions.items():
            supervisor.watch(
                f"function {target} (log {server.log_path})", server.alive, server.restart
            )
        return supervisor.start()

    def _report(self, message: str) -> None:
        # Restarts are news for whoever watches localcloud: its progress output when it
        # has one (`retrain local up` and its log file), the log otherwise.
        if self._progress_given:
            self._progress(message)
        else:
            _log.warning("%s", message)

    def down(self) -> None:
        while self._stop:
            stop = self._stop.pop()
            try:
                stop()
            except Exception:
                # Stop the rest anyway; a failing piece is named, not hidden.
                _log.exception("stopping %s failed", getattr(stop, "__qualname__", stop))
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "env").unlink()

    # set-up helpers ----------------------------------------------------------------------
    def _ensure_topics(self, topics: list[str]) -> None:
        from google.api_core import exceptions
        from google.cloud import pubsub_v1

        publisher = pubsub_v1.PublisherClient()
        for topic in topics:
            with contextlib.suppress(exceptions.AlreadyExists):
                publisher.create_topic(name=publisher.topic_path(self.project, topic))

    def _create_buckets(self, config: Any) -> None:
        """The buckets the config names. As in infra/terraform, the landing buckets (runs
        pin their generations) and the state bucket (run record history) have object
        versioning; the artifacts bucket does not here: localcloud has no lifecycle rule
        to expire the noncurrent checkpoints and models it would pile up."""
        from google.api_core import exceptions

        assert self.storage is not None
        client = storage_client(self.storage.url, self.project)
        state = config.defaults.state_uri.removeprefix("gs://").split("/", 1)[0]
        versioned = {p.bucket for p in config.pipelines.values()} | {state}
        output = config.defaults.output_uri.removeprefix("gs://").split("/", 1)[0]
        for name in sorted(versioned | {output}):
            bucket = client.bucket(name)
            bucket.versioning_enabled = name in versioned
            try:
                client.create_bucket(bucket)
            except exceptions.Conflict:
                # Made by an earlier localcloud, perhaps before buckets were versioned.
                existing = client.get_bucket(name)
                if name in versioned and not existing.versioning_enabled:
                    existing.versioning_enabled = True
                    existing.patch()


def storage_client(url: str, project: str) -> Any:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage  # type: ignore[attr-defined]

    return storage.Client(
        project=project, credentials=AnonymousCredentials(), client_options={"api_endpoint": url}
    )


def write_env(path: Path, env: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{key}={value}\n" for key, value in sorted(env.items())))
    tmp.replace(path)


def read_env(path: Path) -> dict[str, str]:
    if not path.exists():
        raise LocalCloudError(
            f"localcloud is not running ({path} not found): start it with `retrain local up --detach`"
        )
    env = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            env[key.strip()] = value.strip()
    return env
