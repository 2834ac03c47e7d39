"""The one error type of the HTTP layer: a status code and a message the client can act on."""


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message
