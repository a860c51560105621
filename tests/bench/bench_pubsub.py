"""Throughput of the local Pub/Sub server: publishing alone vs publish → push delivered.

Both phases run against the same server in the same run, with the official client:
1. publish N messages to a topic with one pull subscription nobody reads, until every
   publish future has resolved;
2. publish N messages to a topic with one push subscription to a local HTTP receiver,
   until the receiver has accepted all N.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from google.cloud import pubsub_v1

from localcloud.pubsub import PubSubServer

N = 2000
PROJECT = "bench-project"
_DEADLINE_S = 300.0


class _Receiver:
    """Counts the distinct message ids pushed to it and answers 204 to each."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.done = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                # The id sits in the JSON; a substring search keeps the receiver cheap.
                start = body.index(b'"messageId": "') + len(b'"messageId": "')
                message_id = body[start : body.index(b'"', start)].decode()
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with lock:
                    receiver.ids.add(message_id)
                    if len(receiver.ids) >= N:
                        receiver.done.set()

            def log_message(self, *args: object) -> None:
                pass

        lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/push"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def _emulator_env(host_port: str) -> Iterator[None]:
    previous = os.environ.get("PUBSUB_EMULATOR_HOST")
    os.environ["PUBSUB_EMULATOR_HOST"] = host_port
    try:
        yield
    finally:
        if previous is None:
            del os.environ["PUBSUB_EMULATOR_HOST"]
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = previous


def _publish_all(publisher: pubsub_v1.PublisherClient, topic: str) -> float:
    started = time.perf_counter()
    futures = [publisher.publish(topic, f"message {i}".encode(), n=str(i)) for i in range(N)]
    for future in futures:
        future.result(timeout=_DEADLINE_S)
    return time.perf_counter() - started


def _publish_and_deliver(publisher: pubsub_v1.PublisherClient, topic: str) -> float:
    receiver = _Receiver()
    subscriber = pubsub_v1.SubscriberClient()
    try:
        subscriber.create_subscription(
            request={
                "name": f"projects/{PROJECT}/subscriptions/bench-push",
                "topic": topic,
                "push_config": {"push_endpoint": receiver.url},
            }
        )
        started = time.perf_counter()
        futures = [publisher.publish(topic, f"message {i}".encode(), n=str(i)) for i in range(N)]
        for future in futures:
            future.result(timeout=_DEADLINE_S)
        if not receiver.done.wait(timeout=_DEADLINE_S):
            raise RuntimeError(f"only {len(receiver.ids)} of {N} messages were pushed")
        return time.perf_counter() - started
    finally:
        subscriber.close()
        receiver.close()


def run() -> str:
    with (
        tempfile.TemporaryDirectory() as state,
        PubSubServer(Path(state)) as server,
        _emulator_env(server.host_port),
    ):
        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
        for name in ("bench-publish", "bench-push"):
            publisher.create_topic(name=f"projects/{PROJECT}/topics/{name}")
        subscriber.create_subscription(
            name=f"projects/{PROJECT}/subscriptions/bench-unread",
            topic=f"projects/{PROJECT}/topics/bench-publish",
        )
        subscriber.close()
        publish_s = _publish_all(publisher, f"projects/{PROJECT}/topics/bench-publish")
        pushed_s = _publish_and_deliver(publisher, f"projects/{PROJECT}/topics/bench-push")
    publish_rate = N / publish_s
    push_rate = N / pushed_s
    return (
        "## Pub/Sub server throughput\n\n"
        f"{N} messages published with the official client (default batching) to the local "
        "server, one subscription per topic, state persisted in sqlite. Same server, same run.\n\n"
        "| phase | seconds | messages/s |\n"
        "|---|---:|---:|\n"
        f"| publish only (all futures resolved) | {publish_s:.2f} | {publish_rate:,.0f} |\n"
        f"| publish → push delivered (local HTTP receiver, 204) | {pushed_s:.2f} "
        f"| {push_rate:,.0f} |\n\n"
        f"Push-delivered rate / publish-only rate: **{push_rate / publish_rate:.2f}**.\n"
    )


if __name__ == "__main__":
    print(run())
