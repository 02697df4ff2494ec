"""exitnas: search vision-transformer architectures and their early-exit policies together.

A weight-sharing supernet (:mod:`exitnas.supernet`) is trained once over a search space
(:mod:`exitnas.spaces`); sub-networks and their exit rules are then searched without retraining.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
