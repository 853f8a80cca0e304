"""User-facing errors: each carries one line that the CLI prints without a traceback."""


class ExitlatError(Exception):
    """A problem the user can act on; str(err) is a single line."""

    exit_code = 2


class CheckFailed(ExitlatError):
    """A run finished but a check failed (e.g. path verification)."""

    exit_code = 3
