"""The one error type of the HTTP layer: a status code and a message the client can act on."""


class ApiError(Exception):
    def __init__(self, status: int, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.retry_after_s = retry_after_s  # sent as Retry-After: the condition is expected to pass
