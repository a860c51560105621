"""One exception root for the trainer and the serving container."""


class TrainerError(Exception):
    """Anything the trainer or the server reports as a clear one-line message."""


class DataError(TrainerError):
    """The training data is missing, empty or malformed; the message names file, column, row."""


class StorageError(TrainerError):
    """Reading or writing a local path or a gs:// object failed."""


class ReplicaError(TrainerError):
    """The replica environment (MASTER_ADDR, RANK, CLUSTER_SPEC, ...) is inconsistent."""


class ModelError(TrainerError):
    """A model directory is incomplete or unreadable."""


class BadRequest(TrainerError):
    """A prediction request that the client must fix (answered with HTTP 4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
