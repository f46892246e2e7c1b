"""The project's error base class.

`JowaError` marks a failure the user can act on: bad parameters, a missing or corrupt input file, an
output in the way, an unreachable data source. The `jowa` command prints such an error in one line
naming the file, key or value, and exits with status 1. Any other exception is a bug and keeps its
traceback. Each module defines its own subclass (also deriving from the matching built-in error, so
callers that catch `ValueError` or `FileNotFoundError` keep working).
"""

from __future__ import annotations


class JowaError(Exception):
    """A failure caused by input or environment, reported to the user without a traceback."""


class MissingInputError(JowaError, FileNotFoundError):
    """An input file or directory a stage needs does not exist."""


class OutputExistsError(JowaError, FileExistsError):
    """A stage's output already exists and would be overwritten."""
