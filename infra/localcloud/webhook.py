"""A local webhook receiver: where localcloud's notifications go when the webhook URL a
pipeline names is not set. Every POST is kept as one JSON line (and answered 200), so
`make demo` shows what a Slack or Google Chat channel would have received."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from localcloud.procs import free_port


class WebhookSink:
    def __init__(self, path: Path, port: int = 0, host: str = "127.0.0.1"):
        self.path = path
        self.host = host
        self.port = port
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/webhook"

    def start(self) -> WebhookSink:
        self.port = self.port or free_port(self.host)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        sink = self

        class Handler(BaseHTTPRequestHandler):
            # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's
            # algorithm and the client's delayed ACK add ~40 ms to every response.
            disable_nagle_algorithm = True

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    sink._keep(json.loads(body or b"null"))
                    status = 200
                except json.JSONDecodeError:
                    status = 400
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, name="webhook-sink", daemon=True
        ).start()
        return self

    def _keep(self, message: Any) -> None:
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(message) + "\n")

    def received(self) -> list[Any]:
        if not self.path.exists():
            return []
        with self._lock, self.path.open(encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
