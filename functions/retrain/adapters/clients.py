"""Client construction for Google Cloud and for localcloud, in one place.

Against emulators (an emulator host set, or an `http://` Vertex endpoint) the clients use
anonymous credentials and, for Vertex, the REST transport: localcloud needs no account.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from retrain.settings import Settings


def storage_client(settings: Settings, project: str) -> Any:
    from google.cloud import storage  # type: ignore[attr-defined]

    if settings.storage_emulator:
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project or "local", credentials=AnonymousCredentials())
    return storage.Client(project=project or None)


def vertex_client_kwargs(settings: Settings, region: str) -> dict[str, Any]:
    """Keyword arguments for any `aiplatform_v1.*ServiceClient`."""
    endpoint = settings.vertex_endpoint
    if endpoint and endpoint.startswith("http://"):
        from google.auth.credentials import AnonymousCredentials

        return {
            "transport": "rest",
            "credentials": AnonymousCredentials(),
            "client_options": {"api_endpoint": endpoint},
        }
    return {"client_options": {"api_endpoint": endpoint or f"{region}-aiplatform.googleapis.com"}}


class VertexAdapter:
    """Base of the Vertex AI adapters: one location, GAPIC clients built on first use
    (importing `aiplatform_v1` costs about a second; paths that never call Vertex skip it)."""

    def __init__(self, project: str, region: str, client_kwargs: Mapping[str, Any]):
        self._parent = f"projects/{project}/locations/{region}"
        self._client_kwargs = dict(client_kwargs)
        self._clients: dict[str, Any] = {}

    def _vertex(self, name: str) -> Any:
        """The `aiplatform_v1.<name>` client of this adapter."""
        if name not in self._clients:
            from google.cloud import aiplatform_v1

            self._clients[name] = getattr(aiplatform_v1, name)(**self._client_kwargs)
        return self._clients[name]
