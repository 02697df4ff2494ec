"""Writing bundles: one Pareto point's sub-network, exit rule and policy in one folder.

The format is :mod:`exitnas.deploy.format`'s. A bundle is written into a hidden sibling folder
and renamed into place at the end, so a crash leaves no half-written bundle;
:func:`write_bundle` adds the ONNX form (``--format onnx|both``) the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import exitnas
from exitnas.deploy.format import BUNDLE_FILES, BUNDLE_FORMAT, POLICY_FILE
from exitnas.exits.rules import LEARNED
from exitnas.search.front import ExportError, ParetoPoint
from exitnas.spaces import StudyConfig
from exitnas.spaces._parse import to_dict
from exitnas.supernet import SuperViT
from exitnas.supernet.checkpoint import atomic_write_text, file_sha256, save_weights


def check_out_dir(out_dir: str | Path) -> Path:
    """``out_dir`` as a path, if a bundle may be written there (missing, or an empty folder).

    Raises:
        ExportError: it exists and is not an empty folder (nothing is touched).
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not empty; choose another --out or remove it")
    return out


def export_bundle(
    point: ParetoPoint,
    model: SuperViT,
    study: StudyConfig,
    out_dir: str | Path,
    *,
    weights_hash: str,
    mean: Sequence[float],
    std: Sequence[float],
    policy: bytes | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a deployable bundle of ``point`` to the folder ``out_dir``.

    Args:
        point: the chosen Pareto point.
        model: the trained supernet the study was searched on.
        study: the study file.
        out_dir: bundle folder; must not exist or be empty.
        weights_hash: sha256 of the supernet weights file (recorded for provenance).
        mean, std: the data's per-channel normalisation (``DataSplits.mean`` / ``.std``).
        policy: skops bytes of the learned exit policy (``policy_to_bytes``); required when
            ``point.rule`` is ``learned``.
        extra: more JSON-ready metadata for ``config.json`` (a budget query's answer).

    Returns:
        The bundle folder.

    Raises:
        ExportError: ``out_dir`` exists and is not empty (nothing is touched), or a learned
            rule without its policy.
    """
    if point.rule.rule == LEARNED and policy is None:
        raise ExportError("a point with the learned exit rule needs its policy to be exported")
    out = check_out_dir(out_dir)
    meta = {
        "format": BUNDLE_FORMAT,
        "exitnas_version": exitnas.__version__,
        "study": {"name": study.name, "key": study.key()},
        "space": to_dict(study.space),
        "config": point.config.to_dict(),
        "rule": point.rule.to_dict(),
        "pareto": {"index": point.index, "trial_number": point.trial_number},
        "val_accuracy": point.accuracy,
        "expected_mflops": point.mflops,
        "stage_flops": list(point.stage_flops),
        "exit_fractions": list(point.exit_fractions),
        "normalization": {"mean": [float(m) for m in mean], "std": [float(s) for s in std]},
        "image_size": study.data.image_size,
        "in_chans": study.space.in_chans,
        "supernet_weights_sha256": weights_hash,
    }
    clash = sorted(set(extra or {}) & set(meta))
    if clash:
        raise ValueError(f"extra metadata may not replace {clash}")
    meta.update(extra or {})
    try:
        with staged_folder(out) as tmp:
            subnet = model.extract(point.config)
            save_weights(
                tmp / "weights.safetensors",
                subnet.state_dict(),
                {"format": BUNDLE_FORMAT, "config_key": point.config.key()},
            )
            atomic_write_text(tmp / "config.json", json.dumps(meta, indent=2) + "\n")
            names = list(BUNDLE_FILES)
            if policy is not None:
                (tmp / POLICY_FILE).write_bytes(policy)
                names.append(POLICY_FILE)
            write_manifest(tmp, names)
    except OSError as err:
        raise ExportError(f"cannot write bundle {out}: {err}") from None
    return out


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A hidden sibling folder of ``out`` to write a bundle (or kit) into.

    When the block ends without an error the folder is renamed to ``out`` in one step (which
    fails if ``out`` gained files meanwhile); otherwise it is removed, so a crash or an error
    leaves no half-written folder.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp creates 0700
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_manifest(
    folder: str | Path, names: Sequence[str], extra: dict[str, Any] | None = None
) -> None:
    """Write ``manifest.json`` listing sha256 and size of ``names`` (relative to ``folder``),
    in the format ``exitnas.load`` and the ONNX runtime check."""
    folder = Path(folder)
    files = {
        name: {"sha256": file_sha256(folder / name), "size": (folder / name).stat().st_size}
        for name in sorted(set(names))
    }
    manifest = dict(extra or {}, format=BUNDLE_FORMAT, files=files)
    atomic_write_text(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")


def write_bundle(out: Path, fmt: str, write: Callable[[Path], Path]) -> Path:
    """Write a bundle in ``fmt`` (``--format``) to ``out`` with ``write(folder)``, which writes
    the safetensors bundle.

    ``onnx`` and ``both`` write the safetensors bundle into a hidden sibling first and the
    ONNX bundle from it (:func:`exitnas.deploy.export_onnx`, every stage graph checked against
    torch), so a failed export leaves nothing at ``out``.
    """
    if fmt == "torch":
        return write(out)
    import shutil
    import tempfile

    from exitnas.deploy import export_onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".torch", dir=out.parent))
    try:
        written = write(staging / "bundle")
        return export_onnx(written, out, torch_files=fmt == "both")
    finally:
        shutil.rmtree(staging)
