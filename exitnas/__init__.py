"""exitnas: search vision-transformer architectures and their early-exit policies together.

A weight-sharing supernet (:mod:`exitnas.supernet`) is trained once over a search space
(:mod:`exitnas.spaces`); sub-networks and their exit rules are then searched without retraining.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from exitnas.deploy.bundle import ExitModel

__version__ = "0.1.0"

__all__ = ["__version__", "load"]


def load(path: str | os.PathLike[str], device: str = "cpu") -> ExitModel:
    """Load an exported bundle (see :func:`exitnas.deploy.bundle.load`); torch is imported here."""
    from exitnas.deploy.bundle import load as load_bundle

    return load_bundle(path, device)
