"""Exceptions the engine raises for problems the caller can fix."""


class ModelDirectoryError(ValueError):
    """The model directory is missing a file, names an unsupported architecture, or has a tensor
    of the wrong shape. The message names the file or tensor."""


class RequestRejectedError(ValueError):
    """A request cannot be served as given (too long for the context, bad parameters, ...).
    `param` names the offending field when there is one."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param
