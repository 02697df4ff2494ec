"""On-device profiling with ONNX Runtime: a kit to carry to the device, and the same here.

A *profiling kit* is a folder a device needs only Python, NumPy and ONNX Runtime to run:

- ``configs/<i>-<key>/``: one ONNX bundle per configuration (stage graphs, ``config.json``
  with no exit rule worth running, its own manifest);
- ``kit.json``: the study's key, the supernet weights' hash, the image size and, for every
  configuration, its stages' descriptive features (``exitnas.devices.profile.StageFeatures``
  without the batch size), which the device copies into its timings;
- ``exitnas_runtime.py``: the runtime; ``python exitnas_runtime.py profile KIT --out P.json``
  times every stage at the requested batch sizes (warm-up, interleaved passes, fixed threads)
  and writes a device profile that ``exitnas profile --import`` reads;
- ``exitnas_profiler.py``: what that command runs (:mod:`exitnas.deploy.onnx_kit_runtime`,
  copied unchanged; it imports the runtime beside it);
- ``manifest.json``: sha256 and size of every file.

Example:
    >>> models = [supernet.extract(c) for c in configs]
    >>> write_profile_kit(models, "kit", study_key=study.key(), image_size=32)
    >>> # on the device: python kit/exitnas_runtime.py profile kit --out cpu.json
    >>> profile = read_kit_profile("cpu.json", study_key=study.key())
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import exitnas
from exitnas.deploy.format import BUNDLE_FORMAT
from exitnas.deploy.onnx_export import RUNTIME_FILE, runtime_source, write_onnx_files
from exitnas.deploy.overheads import standin_policy
from exitnas.deploy.policy_graph import export_policy_graph
from exitnas.deploy.stage_graphs import DEFAULT_OPSET, OnnxExportError
from exitnas.deploy.write import check_out_dir, staged_folder, write_manifest
from exitnas.devices.errors import ProfileError
from exitnas.devices.profile import DeviceProfile, RuntimeOverhead, StageTiming, stage_features
from exitnas.spaces._parse import to_dict
from exitnas.supernet.subnet import ExitViT

__all__ = [
    "KIT_FILE",
    "PROFILER_FILE",
    "measure_onnx_stage_latencies",
    "onnx_device",
    "profiler_source",
    "read_kit_profile",
    "write_profile_kit",
]

KIT_FILE = "kit.json"
KIT_POLICY = "policy.onnx"  # a stand-in learned policy, timed per exit decision
KIT_FORMAT = "exitnas.profile_kit"  # the profiler's KIT_FORMAT
KIT_VERSION = 1
PROFILER_FILE = "exitnas_profiler.py"


def profiler_source() -> Path:
    """The profiler copied into kits (``exitnas/deploy/onnx_kit_runtime.py``)."""
    return Path(__file__).with_name("onnx_kit_runtime.py")


def onnx_device(provider: str = "CPUExecutionProvider") -> str:
    """The device name a profile measured with ONNX Runtime carries (as the kit script's)."""
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__} {provider}"


def write_profile_kit(
    models: Sequence[ExitViT],
    out_dir: str | os.PathLike[str],
    *,
    study_key: str,
    image_size: int,
    weights_hash: str = "",
    opset: int = DEFAULT_OPSET,
    progress: Callable[[], None] | None = None,
) -> Path:
    """Write a profiling kit for the sub-networks ``models`` of one study.

    Args:
        models: extracted sub-networks (the study's Pareto configurations and sampled ones).
        out_dir: the kit folder; must not exist or be empty.
        study_key: ``StudyConfig.key()`` of the study (a profile of another study is refused
            at import).
        image_size: side of the study's images.
        weights_hash: sha256 of the supernet weights (provenance).
        opset: ONNX opset of the stage graphs.
        progress: called after each configuration is written.

    Returns:
        The kit folder.

    Raises:
        ExportError: ``out_dir`` exists and is not empty.
        OnnxExportError: a configuration does not export, or the onnx extra is missing.
    """
    if not models:
        raise OnnxExportError("a profiling kit needs at least one configuration")
    out = check_out_dir(Path(out_dir))
    try:
        with staged_folder(out) as tmp:
            names: list[str] = []
            configs: list[dict[str, Any]] = []
            for i, model in enumerate(models):
                folder = f"configs/{i:03d}-{model.config.key()}"
                written = _write_config(model, tmp / folder, image_size, opset)
                names += [f"{folder}/{name}" for name in written]
                configs.append(_config_entry(model, folder))
                if progress is not None:
                    progress()
            # a stand-in learned policy of the default estimator: its cost per exit decision
            num_classes = models[0].space.num_classes
            policy = export_policy_graph(standin_policy(num_classes).policy, tmp / KIT_POLICY)
            if "constant" not in policy:
                policy["file"] = KIT_POLICY
                names.append(KIT_POLICY)
            kit = {
                "format": KIT_FORMAT,
                "version": KIT_VERSION,
                "exitnas_version": exitnas.__version__,
                "study_key": study_key,
                "weights_hash": weights_hash,
                "image_size": image_size,
                "in_chans": models[0].space.in_chans,
                "num_classes": num_classes,
                "policy": policy,
                "configs": configs,
            }
            (tmp / KIT_FILE).write_text(json.dumps(kit, indent=2) + "\n", encoding="utf-8")
            shutil.copyfile(runtime_source(), tmp / RUNTIME_FILE)
            shutil.copyfile(profiler_source(), tmp / PROFILER_FILE)
            write_manifest(tmp, [*names, KIT_FILE, RUNTIME_FILE, PROFILER_FILE])
    except OSError as err:
        raise OnnxExportError(f"cannot write profiling kit {out}: {err}") from None
    return out


def _config_entry(model: ExitViT, folder: str) -> dict[str, Any]:
    """``kit.json``'s entry of one configuration: its key, folder, config and its stages'
    features (without the batch size, which the device sets)."""
    stages = []
    for features in stage_features(model.space, model.config):
        row = asdict(features)
        del row["batch_size"]  # the device sets it
        stages.append(row)
    return {
        "key": model.config.key(),
        "folder": folder,
        "config": model.config.to_dict(),
        "stages": stages,
    }


def _write_config(model: ExitViT, folder: Path, image_size: int, opset: int) -> list[str]:
    """One configuration of a kit as an ONNX bundle (no weights, a never-exiting rule)."""
    folder.mkdir(parents=True)
    names = write_onnx_files(model, folder, image_size=image_size, opset=opset, check=False)
    meta = {
        "format": BUNDLE_FORMAT,
        "exitnas_version": exitnas.__version__,
        "space": to_dict(model.space),
        "config": model.config.to_dict(),
        "rule": {"rule": "max_softmax", "thresholds": [None] * (model.config.num_exits - 1)},
        "normalization": {
            "mean": [0.0] * model.space.in_chans,
            "std": [1.0] * model.space.in_chans,
        },
        "image_size": image_size,
        "in_chans": model.space.in_chans,
    }
    (folder / "config.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    names.append("config.json")
    write_manifest(folder, names)
    return [*names, "manifest.json"]


def read_kit_profile(
    path: str | os.PathLike[str], *, study_key: str, weights_hash: str | None = None
) -> DeviceProfile:
    """Read a profile written by a kit (or any device profile) and check it is this study's.

    Args:
        path: the profile JSON.
        study_key: the study's key; a profile of another study is refused.
        weights_hash: the supernet weights' hash, checked when given and the profile has one.

    Raises:
        ProfileError: unreadable, not a device profile, or of another study or supernet.
    """
    profile = DeviceProfile.load(path)
    if profile.study_key != study_key:
        raise ProfileError(
            f"{path} profiles study {profile.study_key}, not this study ({study_key}); write a "
            "kit from this study with exitnas profile --kit"
        )
    if weights_hash and profile.weights_hash and profile.weights_hash != weights_hash:
        raise ProfileError(f"{path} was measured on other supernet weights; write a new kit")
    return profile


def measure_onnx_stage_latencies(
    models: Sequence[ExitViT],
    *,
    image_size: int,
    batch_sizes: Sequence[int] = (1, 32),
    warmup: int = 3,
    repeats: int = 10,
    passes: int = 2,
    threads: int = 1,
    provider: str = "CPUExecutionProvider",
) -> tuple[list[StageTiming], tuple[RuntimeOverhead, ...], str]:
    """Time every stage of ``models`` with ONNX Runtime on this machine, as a kit would.

    The models go through a temporary kit and the profiler's ``profile_kit``: the same graphs,
    warm-up, interleaved passes and thread count as on a device.

    Args:
        models: extracted sub-networks.
        image_size: side of the study's images.
        batch_sizes: batch sizes to time.
        warmup: untimed runs of every stage first, per batch size and pass.
        repeats: timed runs of every (stage, batch size); at least ``passes``.
        passes: interleaved passes over the models.
        threads: ONNX Runtime intra-op threads.
        provider: execution provider.


    Returns:
        ``(timings, overheads, runtime)``: one
        :class:`~exitnas.devices.profile.StageTiming` per (model, batch size, stage), the
        runtime's :class:`~exitnas.devices.profile.RuntimeOverhead` per batch size, and the
        runtime's name; pass them to ``DeviceProfile.create(..., overheads=overheads,
        runtime=runtime, threads=threads)``.
    """
    from exitnas.deploy.onnx_bundle import OnnxBundleError
    from exitnas.deploy.onnx_kit_runtime import profile_kit

    with tempfile.TemporaryDirectory(prefix="exitnas-onnx-profile-") as tmp:
        kit = write_profile_kit(models, Path(tmp) / "kit", study_key="", image_size=image_size)
        profile = profile_kit(
            kit,
            batch_sizes=tuple(batch_sizes),
            warmup=warmup,
            repeats=repeats,
            passes=passes,
            threads=threads,
            providers=[provider],
            error=OnnxBundleError,
        )
    timings = [StageTiming(**timing) for timing in profile["timings"]]
    overheads = tuple(RuntimeOverhead(**o) for o in profile["overheads"])
    return timings, overheads, str(profile["runtime"])
