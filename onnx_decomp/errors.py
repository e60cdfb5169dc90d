"""The one family of exceptions the library raises for problems a user can fix."""


class DecompError(Exception):
    """Base: the CLI prints the message on one line and exits non-zero."""

    exit_code = 2


class InvalidModelError(DecompError):
    """The input is not a readable, valid ONNX model (or its external data is unreadable)."""


class UnsupportedConstructError(DecompError):
    """The model uses something this tool cannot handle as asked."""


class ValidationError(DecompError):
    """The rewritten model does not reproduce the original within tolerance in ONNX Runtime; ``report`` (a
    report object with ``format()``) says by how much."""

    exit_code = 1

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report
