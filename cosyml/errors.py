"""User-facing errors.

Every mistake a user can make (a wrong path, a missing file in a model directory, a bad parameter)
raises :class:`CosymlError` with one line that names the file or key, what is wrong and what to do.
The CLI prints that line and exits with status 2; no traceback reaches the user.
"""

from __future__ import annotations


class CosymlError(Exception):
    """A user mistake or bad input, reported as a single line."""

    def __init__(self, message: str) -> None:
        super().__init__(message.strip().splitlines()[0] if message.strip() else "unknown error")
        self.message = str(self)


class ModelDirError(CosymlError):
    """A model directory is missing a file or holds a file that does not match the official format."""


class ConfigError(CosymlError):
    """params.yaml or a command-line override names an unknown key or holds a bad value."""


class InputError(CosymlError):
    """An input folder or file cannot be used (missing, unreadable, wrong layout)."""
