"""The ``exitnas`` command line: one module per subcommand, option helpers in :mod:`.options`.

No module here holds library code: each handler parses its options, calls one function of
:mod:`exitnas.jobs` (or of the layers below) and prints. Building the parser imports no torch,
Optuna, SQLAlchemy, scikit-learn or plotly.
"""

from __future__ import annotations

from exitnas.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
