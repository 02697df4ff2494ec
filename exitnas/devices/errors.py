"""The error type of the devices layer, importable without NumPy or torch."""

from __future__ import annotations

from exitnas.errors import ExitnasError

__all__ = ["ProfileError"]


class ProfileError(ExitnasError, ValueError):
    """A device profile file is missing, corrupt, or not a device profile."""
