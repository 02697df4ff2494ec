"""Typed errors of exitnas.

Every error a user can cause (a bad study file, a missing path, a corrupt checkpoint) is an
:class:`ExitnasError`. The command line prints its message on one line and exits with code 2;
Python callers catch the typed subclass they care about.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "ExitnasError"]


class ExitnasError(Exception):
    """Base class of every error caused by user input."""


class ConfigError(ExitnasError, ValueError):
    """A study file, search space or sub-network config is invalid.

    The message names the offending field (a dotted path such as ``space.exit_layers``) and the
    values it allows.
    """


class CheckpointError(ExitnasError):
    """A checkpoint or weights file is missing, corrupt, or belongs to another study."""
