"""PubSubServer: the local Pub/Sub emulator as one object to start and stop."""

from __future__ import annotations

from concurrent import futures
from pathlib import Path
from types import TracebackType

import grpc

from localcloud.errors import LocalCloudError
from localcloud.procs import free_port, port_is_open
from localcloud.pubsub.broker import Broker
from localcloud.pubsub.push import PushDelivery
from localcloud.pubsub.service import PubSubService
from localcloud.pubsub.store import Store

STATE_FILE = "pubsub.sqlite3"
# Each open StreamingPull holds a worker for its lifetime; leave room for unary calls.
GRPC_WORKERS = 64
# Pub/Sub messages may be up to 10 MB; a publish batch carries several.
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class PubSubServer:
    """A gRPC server for google.pubsub.v1 whose state lives under `state_dir`.

    `host_port` is the value for PUBSUB_EMULATOR_HOST.
    """

    def __init__(self, state_dir: Path, port: int = 0, host: str = "127.0.0.1") -> None:
        self.state_dir = state_dir
        self.port = port
        self.host = host
        self._server: grpc.Server | None = None
        self._broker: Broker | None = None
        self._push: PushDelivery | None = None

    @property
    def host_port(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> PubSubServer:
        if self._server is not None:
            raise LocalCloudError(f"the Pub/Sub server on {self.host_port} is already running")
        if not self.port:
            self.port = free_port(self.host)
        elif port_is_open(self.host, self.port):
            raise LocalCloudError(
                f"port {self.port} is taken; stop what uses it or pick another port for Pub/Sub"
            )
        broker = Broker(Store(self.state_dir / STATE_FILE))
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=GRPC_WORKERS, thread_name_prefix="pubsub"),
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        server.add_generic_rpc_handlers(PubSubService(broker).handlers())
        if server.add_insecure_port(self.host_port) == 0:
            broker.close()
            raise LocalCloudError(f"the Pub/Sub server could not listen on {self.host_port}")
        server.start()
        self._server, self._broker = server, broker
        self._push = PushDelivery(broker)
        self._push.start()
        return self

    @property
    def running(self) -> bool:
        return self._server is not None

    def restart(self) -> None:
        """Serve again on the same port from the same state: topics, subscriptions and every
        message not yet acknowledged come back from disk and are delivered."""
        self.stop()
        self.start()

    def stop(self) -> None:
        """Stop serving. Unacknowledged messages stay on disk for the next start."""
        if self._push is not None:
            self._push.stop()
            self._push = None
        if self._broker is not None:
            self._broker.wake()
        if self._server is not None:
            # Close the broker first so open streams and pulls end instead of waiting.
            if self._broker is not None:
                self._broker.close()
            self._server.stop(grace=1).wait()
            self._server = None
        self._broker = None

    def __enter__(self) -> PubSubServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
