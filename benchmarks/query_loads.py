"""What one ``exitnas policy query`` loads: supernet loads, weight hashes and its own wall time.

Runs the command in this process after importing every module it needs (so the time is the
query's work, not Python's imports) and counts the calls to ``load_weights`` (one per supernet
load) and ``file_sha256`` (one per hash of the weights file). Works on this code and, for the
"before" column of benchmarks/RESULTS.md, on commit d2e2571 run with ``PYTHONPATH``.

Example:
    python benchmarks/query_loads.py policy query --study runs/quickstart --device local \\
        --budget-ms 1.0 --quiet > answer.json
"""

from __future__ import annotations

import collections
import importlib
import importlib.util
import sys
import time
from collections.abc import Callable
from typing import Any

BEFORE = (  # the modules of a query before the re-layering (issue 12)
    "exitnas.policies.policy_cli",
    "exitnas.policies.query",
    "exitnas.search.runner",
    "exitnas.search.export",
    "exitnas.policies.costs",
    "exitnas.policies.study_policy",
)
AFTER = (
    "exitnas.jobs.query",
    "exitnas.search.budget",
    "exitnas.runs",
    "exitnas.search.front",
    "exitnas.storage.urls",
    "exitnas.supernet.trained",
    "exitnas.devices.costs",
    "exitnas.exits.policy",
    "exitnas.search.studies",
    "exitnas.search.objective",
)


def counted(module: Any, name: str, counts: collections.Counter) -> None:
    """Replace ``module.name`` by a wrapper that counts its calls (before anyone imports it)."""
    function: Callable[..., Any] = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        counts[name] += 1
        return function(*args, **kwargs)

    setattr(module, name, wrapper)


def main() -> None:
    counts: collections.Counter = collections.Counter()
    import exitnas.supernet.checkpoint as checkpoint

    counted(checkpoint, "load_weights", counts)
    before = importlib.util.find_spec("exitnas.policies") is not None
    if before:
        import exitnas.search.objective as objective  # where the hash lived then

        counted(objective, "file_sha256", counts)
    else:
        counted(checkpoint, "file_sha256", counts)
    for name in BEFORE if before else AFTER:
        importlib.import_module(name)
    import optuna.storages  # noqa: F401
    import sklearn.ensemble  # noqa: F401
    import skops.io  # noqa: F401

    from exitnas.cli import main as cli

    start = time.perf_counter()
    code = cli(sys.argv[1:])
    seconds = time.perf_counter() - start
    print(
        f"{'before' if before else 'after'}: exit {code}, {seconds:.3f} s, "
        f"supernet loads {counts['load_weights']}, weight hashes {counts['file_sha256']}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
