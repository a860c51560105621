"""Pub/Sub: a gRPC server speaking the subset of google.pubsub.v1 that the official clients
and fake-gcs-server use, with pull, streaming pull and push delivery, persisted on disk."""

from localcloud.pubsub.server import PubSubServer

__all__ = ["PubSubServer"]
