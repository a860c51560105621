"""Long-running operations. Every operation here is done when it is returned, with its
response (or error) packed in it, so clients complete without polling; they are kept
so that GET on an operation name still answers."""

from __future__ import annotations

from typing import Any

from google.cloud import aiplatform_v1
from google.longrunning import operations_pb2
from google.protobuf.message import Message

from localcloud.vertex.state import State
from localcloud.vertex.wire import ApiError, new_id, not_found, now


class OperationService:
    def __init__(self, state: State) -> None:
        self._state = state

    def finish(
        self,
        parent: str,
        metadata: Message,
        response: Message | None = None,
        error: ApiError | None = None,
    ) -> operations_pb2.Operation:
        """Record a done operation under `parent` (the resource it acted on)."""
        _stamp(metadata)
        operation = operations_pb2.Operation(done=True)
        with self._state.lock:
            operation.name = f"{parent}/operations/{new_id(self._state.operations)}"
            operation.metadata.Pack(metadata)
            if error is not None:
                operation.error.code = error.rpc_code
                operation.error.message = error.message
            elif response is not None:
                operation.response.Pack(response)
            self._state.operations[operation.name] = operation
            self._state.save()
        return operation

    def get(self, name: str) -> operations_pb2.Operation:
        with self._state.lock:
            operation = self._state.operations.get(name)
            if operation is None:
                raise not_found(f"Operation {name} not found")
            clone = operations_pb2.Operation()
            clone.CopyFrom(operation)
            return clone


def _stamp(metadata: Any) -> None:
    # Every Vertex operation metadata carries a GenericOperationMetadata.
    generic = aiplatform_v1.GenericOperationMetadata.pb()()
    generic.create_time.CopyFrom(now())
    generic.update_time.CopyFrom(generic.create_time)
    metadata.generic_metadata.CopyFrom(generic)
