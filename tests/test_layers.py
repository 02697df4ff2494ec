"""The package's layers: nothing imports upward, and running a bundle needs no search stack.

Each folder of ``exitnas`` is one layer (docs/ARCHITECTURE.md). A module may import its own
package and the layers below it, at the top of the file or inside a function alike.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "exitnas"

# bottom to top; the first four are single modules everything may use
LAYERS = (
    ("errors", "_lazy", "faults", "threads"),
    ("spaces",),
    ("data",),
    ("supernet",),
    ("exits",),
    ("devices",),
    ("storage",),
    ("search",),
    ("deploy",),
    ("runs",),
    ("reports",),
    ("jobs",),
    ("cli",),
)
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(source: str, module: str, package: str) -> list[tuple[int, str]]:
    """Every ``exitnas`` module the ``source`` of ``module`` (in ``package``) imports: (line,
    dotted name), at the top or inside a function, absolute or relative."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return [(line, name) for line, name in found if name.split(".")[0] == "exitnas"]


def _layer(module: str) -> int | None:
    """The layer of a dotted ``exitnas`` module; None for the package itself."""
    parts = module.split(".")
    return None if len(parts) == 1 else LAYER_OF[parts[1]]


def test_every_module_belongs_to_a_layer() -> None:
    tops = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()}
    tops -= {"__init__", "__pycache__", "py"}
    assert tops - set(LAYER_OF) == set(), "add new top-level modules to LAYERS"


def test_nothing_imports_upward() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module(path)
        if module == "exitnas":
            continue  # the package's facade: exitnas.load, lazily
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        own = _layer(module)
        for line, name in _imported(path.read_text(encoding="utf-8"), module, package):
            target = _layer(name)
            if target is not None and own is not None and target > own:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}")
    assert upward == []


def test_the_walker_sees_function_local_and_relative_imports() -> None:
    source = "def f():\n    from exitnas.search import studies\n    from ..jobs import query\n"
    names = [name for _, name in _imported(source, "exitnas.spaces.probe", "exitnas.spaces")]
    assert names == ["exitnas.search", "exitnas.jobs"]
    assert all(_layer(name) > LAYER_OF["spaces"] for name in names)  # would be refused


@pytest.mark.parametrize("rule", ["max_softmax", "learned"])
def test_running_a_bundle_imports_no_search_or_storage(searched_copy, tmp_path, rule) -> None:
    """``exitnas.load`` and ``predict`` import neither Optuna, SQLAlchemy, Alembic nor Ray."""
    from exitnas.jobs.fit import fit_policy
    from exitnas.jobs.query import export_answer, query_budget
    from exitnas.runs import Run
    from exitnas.search.budget import Budget

    study, run_dir, url = searched_copy
    run = Run.open(run_dir, url, progress=False)
    if rule == "learned" and run.store.get_policy(study.name, "learned") is None:
        fit_policy(run, estimator="logistic")
    bundle = tmp_path / "bundle"
    export_answer(query_budget(run, Budget("mflops", 1000.0), rule=rule), bundle)
    images = tmp_path / "images.npy"
    np.save(images, run.splits.val.images[:8].numpy())
    script = (
        "import sys\n"
        "import numpy as np\n"
        "import exitnas\n"
        f"model = exitnas.load({str(bundle)!r})\n"
        f"model.predict(np.load({str(images)!r}))\n"
        "heavy = ('optuna', 'sqlalchemy', 'alembic', 'ray', 'plotly')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
