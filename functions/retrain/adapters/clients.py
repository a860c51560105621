"""Client construction for Google Cloud and for localcloud, in one place.

Against emulators (an emulator host set, or an `http://` endpoint) the clients use
anonymous credentials: localcloud needs no account. Vertex AI and Cloud Logging speak
gRPC, as in production, when VERTEX_EMULATOR_HOST / LOGGING_EMULATOR_HOST name a plaintext
emulator; an `http://` VERTEX_API_ENDPOINT / LOGGING_API_ENDPOINT selects REST.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from retrain.settings import Settings


def storage_client(settings: Settings, project: str) -> Any:
    from google.cloud import storage  # type: ignore[attr-defined]

    if settings.storage_emulator:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project or "local", credentials=AnonymousCredentials())
    return storage.Client(project=project or None)


@dataclass(frozen=True)
class VertexConnection:
    """How to reach Vertex AI: production (gRPC, default credentials), a plaintext gRPC
    emulator (VERTEX_EMULATOR_HOST), or a REST endpoint (an `http://` VERTEX_API_ENDPOINT).
    Against an emulator the clients use anonymous credentials."""

    endpoint: str
    transport: str = "grpc"  # "grpc" | "rest"
    emulated: bool = False

    def client(self, name: str) -> Any:
        """A new `aiplatform_v1.<name>` client (e.g. "JobServiceClient") on this connection."""
        from google.cloud import aiplatform_v1

        client_class = getattr(aiplatform_v1, name)
        if not self.emulated:
            return client_class(client_options={"api_endpoint": self.endpoint})
        if self.transport == "rest":
            from google.auth.credentials import AnonymousCredentials

            return client_class(
                transport="rest",
                credentials=AnonymousCredentials(),
                client_options={"api_endpoint": self.endpoint},
            )
        import grpc

        # The GAPIC gRPC transport always wraps its channel in TLS; an emulator speaks
        # plaintext, so the channel is built here (as the Pub/Sub client does for
        # PUBSUB_EMULATOR_HOST) and carries no credentials at all.
        channel = grpc.insecure_channel(self.endpoint, options=GRPC_CHANNEL_OPTIONS)
        return client_class(transport=client_class.get_transport_class("grpc")(channel=channel))


# Vertex answers messages of up to 100 MiB; the GAPIC transports raise the 4 MiB default too.
GRPC_CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
)


def vertex_connection(settings: Settings, region: str) -> VertexConnection:
    """VERTEX_EMULATOR_HOST wins over VERTEX_API_ENDPOINT, as the DESIGN's contract says."""
    if settings.vertex_emulator:
        return VertexConnection(settings.vertex_emulator, "grpc", emulated=True)
    endpoint = settings.vertex_endpoint
    if endpoint and endpoint.startswith("http://"):
        return VertexConnection(endpoint, "rest", emulated=True)
    return VertexConnection(endpoint or f"{region}-aiplatform.googleapis.com")


class VertexAdapter:
    """Base of the Vertex AI adapters: one location, GAPIC clients built on first use
    (importing `aiplatform_v1` costs about a second; paths that never call Vertex skip it)."""

    def __init__(self, project: str, region: str, connection: VertexConnection):
        self._parent = f"projects/{project}/locations/{region}"
        self._connection = connection
        self._clients: dict[str, Any] = {}

    def _vertex(self, name: str) -> Any:
        """The `aiplatform_v1.<name>` client of this adapter."""
        if name not in self._clients:
            self._clients[name] = self._connection.client(name)
        return self._clients[name]
