"""ONNX bundles: a bundle's sub-network as one graph per stage, plus the NumPy/ONNX Runtime runtime.

An ONNX bundle is an ordinary bundle (``exitnas.search.front``) with more files:

- ``onnx/stage_<k>.onnx``: stage k (:mod:`exitnas.deploy.stage_graphs`), dynamic batch axis;
- ``onnx/stages.json``: the stages' inputs, outputs, shapes, dtypes, FLOPs and wiring, the
  policy graph's entry (learned rule), image size and classes;
- ``onnx/policy.onnx``: the learned exit policy's classifier (learned rule only);
- ``exitnas_runtime.py``: :mod:`exitnas.deploy.onnx_runtime`, copied unchanged;
- ``manifest.json``: sha256 and size of every file, the ONNX ones included.

With ``torch_files=False`` the bundle leaves out ``weights.safetensors`` and ``policy.skops``:
it then runs only through the ONNX runtime.

Example:
    >>> export_onnx("bundles/quickstart", "bundles/quickstart-onnx")
    >>> model = load_onnx("bundles/quickstart-onnx")  # or, without exitnas:
    >>> # cd bundles/quickstart-onnx && python exitnas_runtime.py . x.npy --out p.npz
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import exitnas
from exitnas.deploy.format import POLICY_FILE
from exitnas.deploy.stage_graphs import DEFAULT_OPSET, OnnxExportError, export_stage_graphs
from exitnas.deploy.write import check_out_dir, write_manifest
from exitnas.supernet.subnet import ExitViT

__all__ = [
    "ONNX_DIR",
    "POLICY_GRAPH",
    "RUNTIME_FILE",
    "STAGES_FILE",
    "export_onnx",
    "runtime_source",
    "write_onnx_files",
]

ONNX_DIR = "onnx"
STAGES_FILE = "onnx/stages.json"
POLICY_GRAPH = "onnx/policy.onnx"
RUNTIME_FILE = "exitnas_runtime.py"
STAGES_FORMAT = 1  # version of onnx/stages.json (the runtime's RUNTIME_FORMAT)
_TORCH_ONLY = ("weights.safetensors", POLICY_FILE)
_EXTRA_HINT = "ONNX export needs the onnx extra: pip install 'exitnas[onnx]'"


def runtime_source() -> Path:
    """The runtime file copied into bundles and kits (``exitnas/deploy/onnx_runtime.py``)."""
    return Path(__file__).with_name("onnx_runtime.py")


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise OnnxExportError(_EXTRA_HINT) from None


def write_onnx_files(
    model: ExitViT,
    folder: str | Path,
    *,
    image_size: int,
    policy: Any = None,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
) -> list[str]:
    """Write the stage graphs, ``onnx/stages.json``, the policy graph and the runtime.

    Args:
        model: the bundle's sub-network.
        folder: the bundle folder being written.
        image_size: side of the images the bundle takes (its ``config.json``'s).
        policy: the learned :class:`~exitnas.policies.LearnedExitPolicy`, if the rule is learned.
        opset: ONNX opset of the stage graphs.
        check: compare every stage graph with torch on the traced inputs.

    Returns:
        The files written, relative to ``folder``.
    """
    _require_onnx()
    folder = Path(folder)
    stages = export_stage_graphs(model, image_size, folder / ONNX_DIR, opset=opset, check=check)
    names = [entry["file"] for entry in stages]
    policy_entry = None
    if policy is not None:
        from exitnas.deploy.policy_graph import export_policy_graph

        policy_entry = export_policy_graph(policy, folder / POLICY_GRAPH)
        if "constant" not in policy_entry:
            policy_entry["file"] = POLICY_GRAPH
            names.append(POLICY_GRAPH)
    layout = {
        "format": STAGES_FORMAT,
        "exitnas_version": exitnas.__version__,
        "opset": opset,
        "config_key": model.config.key(),
        "image_size": image_size,
        "in_chans": model.space.in_chans,
        "num_classes": model.space.num_classes,
        "batch_axis": "batch",
        "stages": stages,
        "policy": policy_entry,
    }
    (folder / STAGES_FILE).write_text(json.dumps(layout, indent=2) + "\n", encoding="utf-8")
    shutil.copyfile(runtime_source(), folder / RUNTIME_FILE)
    return [*names, STAGES_FILE, RUNTIME_FILE]


def export_onnx(
    bundle_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    torch_files: bool = True,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
) -> Path:
    """Write an ONNX bundle of the bundle ``bundle_dir``.

    Args:
        bundle_dir: a bundle written by ``exitnas export`` (checked against its manifest).
        out_dir: the new bundle folder (missing or empty); None adds the ONNX files to
            ``bundle_dir`` itself (written beside it, then swapped in).
        torch_files: keep ``weights.safetensors`` and ``policy.skops`` (the bundle then also
            runs through ``exitnas.load``); False writes an ONNX-only bundle.
        opset: ONNX opset of the stage graphs.
        check: compare every stage graph with torch on the traced inputs.

    Returns:
        The ONNX bundle folder.

    Raises:
        BundleError: ``bundle_dir`` is not a valid bundle.
        ExportError: ``out_dir`` exists and is not empty (nothing is touched).
        OnnxExportError: the onnx extra is missing, or a stage or the policy does not export.
    """
    from exitnas.deploy.bundle import load

    _require_onnx()
    source = Path(bundle_dir)
    target = source if out_dir is None else Path(out_dir)
    in_place = target.resolve() == source.resolve()
    out = source if in_place else check_out_dir(target)
    bundle = load(source)  # verifies every file
    manifest = json.loads((source / "manifest.json").read_text(encoding="utf-8"))
    keep = [
        name
        for name in manifest["files"]
        if name.split("/")[0] != ONNX_DIR
        and name != RUNTIME_FILE
        and (torch_files or name not in _TORCH_ONLY)
    ]
    policy = bundle.policy.policy if bundle.policy is not None else None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    old = tmp.with_suffix(".old")
    try:
        for name in keep:
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, tmp / name)
        written = write_onnx_files(
            bundle.model,
            tmp,
            image_size=int(bundle.meta["image_size"]),
            policy=policy,
            opset=opset,
            check=check,
        )
        extra = {k: v for k, v in manifest.items() if k not in ("format", "files")}
        write_manifest(tmp, keep + written, extra)
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        if in_place:
            os.replace(out, old)
        os.replace(tmp, out)  # atomic; fails if ``out`` gained files meanwhile
    except OSError as err:
        if in_place and old.exists() and not out.exists():
            os.replace(old, out)
        raise OnnxExportError(f"cannot write ONNX bundle {out}: {err}") from None
    finally:
        for leftover in (tmp, old):
            if leftover.exists():
                shutil.rmtree(leftover)
    return out
