"""Lazy public names of a package (PEP 562), so that importing it stays cheap.

A package's ``__init__`` lists its public names and the module each lives in; a name is
imported on first use (``exitnas.search.run_search``, ``from exitnas.search import
run_search``). Importing ``exitnas.jobs.query`` therefore runs no import of torch,
Optuna, SQLAlchemy or scikit-learn, and ``exitnas --help`` starts in a fraction of a second.
Type checkers read the same names from imports under ``if TYPE_CHECKING:`` in the package.

Example:
    __getattr__, __dir__ = lazy_exports(__name__, {"exitnas.search.runner": ("run_search",)})
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, Iterable[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module ``__getattr__`` and ``__dir__`` serving ``exports`` lazily.

    Args:
        package: the package's ``__name__``.
        exports: module name -> public names defined (or re-exported) there.

    Returns:
        ``(__getattr__, __dir__)`` to assign in the package's ``__init__``.
    """
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # once: later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *where})

    return __getattr__, __dir__
