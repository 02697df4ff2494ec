"""The error raised for bad data arguments, paths and files."""

from __future__ import annotations

from exitnas.errors import ExitnasError

__all__ = ["DataError"]


class DataError(ExitnasError, ValueError):
    """A data set name, path, file or split argument is invalid.

    The message names what is wrong (the path, the archive member, the value) and what is
    allowed, on one line.
    """
