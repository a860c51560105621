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

        # The endpoint is passed, not only left to the library's reading of the process
        # environment: the CLI builds clients for an environment read from a file.
        return storage.Client(
            project=project or "local",
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": settings.storage_emulator},
        )
    return storage.Client(project=project or None)


def publisher_client() -> Any:
    """A Pub/Sub PublisherClient; PUBSUB_EMULATOR_HOST makes it talk to the emulator,
    anonymously (the library reads it from the process environment)."""
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]

    return pubsub_v1.PublisherClient()


def logging_rest_client(settings: Settings, project: str) -> Any | None:
    """The high-level Cloud Logging client over REST, for an `http://` LOGGING_API_ENDPOINT
    (anonymously); None when the settings select gRPC (`logging_gapic_client`)."""
    endpoint = settings.logging_endpoint
    if settings.logging_emulator or not endpoint or not endpoint.startswith("http://"):
        return None
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import logging as gcl

    return gcl.Client(
        project=project or "local",
        credentials=AnonymousCredentials(),
        _use_grpc=False,
        client_options={"api_endpoint": endpoint},
    )


def logging_gapic_client(settings: Settings) -> Any:
    """The GAPIC `LoggingServiceV2Client` (the call the high-level client makes underneath):
    production, a LOGGING_API_ENDPOINT, or a plaintext gRPC emulator (LOGGING_EMULATOR_HOST)."""
    from google.cloud.logging_v2.services.logging_service_v2 import LoggingServiceV2Client

    if settings.logging_emulator:
        import grpc
        from google.cloud.logging_v2.services.logging_service_v2.transports import (
            LoggingServiceV2GrpcTransport,
        )

        # The GAPIC transport always wraps its channel in TLS; the emulator is plaintext.
        channel = grpc.insecure_channel(settings.logging_emulator)
        return LoggingServiceV2Client(transport=LoggingServiceV2GrpcTransport(channel=channel))
    if settings.logging_endpoint:
        return LoggingServiceV2Client(client_options={"api_endpoint": settings.logging_endpoint})
    return LoggingServiceV2Client()


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
