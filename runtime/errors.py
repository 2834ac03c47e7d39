"""Error types of the serving runtime."""


class UnknownTaskError(KeyError):
    """A request names a task id that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown task"


class InvalidTaskIdError(ValueError):
    """A task id is not a valid name (ids are names, never paths)."""


class StoreError(RuntimeError):
    """The adapter store cannot be read or written."""


class AdapterSourceError(ValueError):
    """A registration names its adapter file by a source (an s3:// URL) that cannot be read."""


class HostCopyLostError(RuntimeError):
    """A version whose tensors left host memory cannot be read back: the store replaced or removed it since."""


class NonFiniteOutputError(RuntimeError):
    """A task's adapter made Inf or NaN outputs: finite weights large enough to overflow."""


class InferenceFailedError(RuntimeError):
    """Serving a row failed for a reason of the service's own, not the request's."""


class BackboneNotReadyError(RuntimeError):
    """No serving replica has loaded the backbone yet, so an upload cannot be validated against it."""


class DeadlineExceededError(TimeoutError):
    """A request's deadline passed before its answer: its rows are dropped, never computed late."""


class ServiceBusyError(RuntimeError):
    """The service cannot serve this request in time now (its queues, or the pixels in flight, are full; no
    replica answers): refused at once, to be retried after `retry_after_s`."""

    retry_after_s = 1  # the queue a full replica holds drains in about this long

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s
