"""exitnas ONNX runtime: an exported bundle's stage graphs run with real batched early exit.

This one file needs only Python 3.10+, NumPy and ONNX Runtime (no PyTorch, no exitnas). It sits in
the exitnas package as ``exitnas/deploy/onnx_runtime.py`` and is copied unchanged into every ONNX
bundle as ``exitnas_runtime.py``, so a target device needs nothing but the bundle folder. A
profiling kit carries it too, beside ``exitnas_profiler.py``
(:mod:`exitnas.deploy.onnx_kit_runtime`), which its ``profile`` command runs.

A bundle holds ``config.json`` (image size, normalisation, exit rule), ``onnx/stages.json`` (the
stage graphs, their inputs and outputs, FLOPs), ``onnx/stage_<k>.onnx``, ``onnx/policy.onnx`` for
the learned exit rule, and ``manifest.json`` (sha256 and size of every file). :func:`load` checks
every file against the manifest before anything runs.

:meth:`OnnxExitModel.predict` does what ``exitnas.load(bundle).predict`` does: it checks the
images (uint8 ``(N, C, H, W)`` at the bundle's image size), normalises them, and runs the stages
in cascade order; after each stage the samples whose confidence (or learned policy score) reaches
that exit's threshold leave the batch, and only the others run the next stage.

Usage:
    python exitnas_runtime.py BUNDLE IMAGES.npy --out PRED.npz [--batch-size 256] [--threads N]
    python exitnas_runtime.py profile KIT --out PROFILE.json [--batch-sizes 1 32] [--threads N]

Example:
    >>> import exitnas_runtime
    >>> model = exitnas_runtime.load("bundles/quickstart", threads=1)
    >>> prediction = model.predict(images)  # uint8 (N, C, H, W)
    >>> prediction.labels, prediction.exits, prediction.flops
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

__all__ = [
    "FEATURES",
    "BundleError",
    "OnnxExitModel",
    "Prediction",
    "confidences",
    "exit_features",
    "load",
    "main",
    "session_options",
    "softmax",
    "verify_files",
]

RUNTIME_FORMAT = 1  # version of onnx/stages.json and kit.json this runtime reads
BUNDLE_FORMAT = 1  # version of manifest.json and config.json
MANIFEST = "manifest.json"
CONFIG = "config.json"
STAGES = "onnx/stages.json"
RULES = ("max_softmax", "entropy", "margin")
LEARNED = "learned"
# A learned policy's score computed by ONNX Runtime differs from scikit-learn's by a few ulps
# (another summation order); calibrated thresholds often equal a score exactly, so a sample
# exits when its score reaches the threshold less this.
SCORE_TOLERANCE = 1e-10
# Columns of exit_features, as in exitnas.exits.learned.FEATURES.
FEATURES = (
    "max_probability",
    "margin",
    "entropy_confidence",
    "agrees_with_previous",
    "agreement_fraction",
    "previous_max_probability",
    "exit_position",
    "ensemble_probability",
    "previous_class_probability",
)
_DTYPES = {"float32": np.float32, "int64": np.int64, "float64": np.float64}


class BundleError(Exception):
    """A bundle or kit that is incomplete, tampered with, of an unknown format, or fed wrong
    images. The script prints its message on one line and exits with code 2."""


@dataclass(frozen=True)
class Prediction:
    """What early exit decided for each sample."""

    labels: np.ndarray  # (N,) predicted class
    exits: np.ndarray  # (N,) index of the exit taken, in cascade order
    flops: np.ndarray  # (N,) int64 analytic FLOPs spent on the sample (stages 1..exit)
    logits: np.ndarray  # (N, K) float32 logits of the exit taken


# -- files ----------------------------------------------------------------------------------


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path, error: type[Exception] = BundleError) -> dict[str, Any]:
    """A JSON object from ``path``; ``error`` names the file when it is missing or unreadable."""
    if not path.is_file():
        raise error(f"{path.parent} is not an exitnas bundle (missing {path.name})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise error(f"{path} is unreadable: {err}") from None
    if not isinstance(data, dict):
        raise error(f"{path} is not a JSON object")
    return data


def verify_files(
    folder: str | os.PathLike[str],
    required: tuple[str, ...] = (),
    error: type[Exception] = BundleError,
) -> dict[str, Any]:
    """Check every file ``manifest.json`` lists against its size and sha256.

    Args:
        folder: the bundle (or kit) folder.
        required: files the manifest must list.
        error: exception class raised.

    Returns:
        The manifest's ``files`` table.

    Raises:
        error: no manifest, an unknown format, a required file not listed, or a missing,
            modified or corrupt file.
    """
    folder = Path(folder)
    manifest = read_json(folder / MANIFEST, error)
    if manifest.get("format") != BUNDLE_FORMAT:
        raise error(
            f"{folder / MANIFEST}: format {manifest.get('format')!r} is not supported; this "
            f"runtime reads format {BUNDLE_FORMAT}"
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise error(f"{folder / MANIFEST} has no files table")
    for name in required:
        if name not in files:
            raise error(f"{folder / MANIFEST} does not list {name}")
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            raise error(f"{path} is missing from the bundle")
        if (
            not isinstance(entry, dict)
            or path.stat().st_size != entry.get("size")
            or file_sha256(path) != entry.get("sha256")
        ):
            raise error(f"{path} does not match manifest.json (modified or corrupt)")
    return files


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """ONNX Runtime options: ``threads`` intra-op threads (ORT's default when None), one
    inter-op thread, sequential execution, all graph optimisations."""
    options = ort.SessionOptions()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    return options


# -- exit rules (as exitnas.exits.rules and exitnas.exits.learned) ----------------------


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, computed in float64 for stable confidences."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def confidences(probs: np.ndarray, rule: str) -> np.ndarray:
    """Confidence in [0, 1] of every exit's prediction: ``(E, N, K)`` -> ``(E, N)``."""
    if rule == "max_softmax":
        return probs.max(axis=-1)
    if rule == "margin":
        top2 = np.partition(probs, -2, axis=-1)[..., -2:]
        return top2[..., 1] - top2[..., 0]
    if rule == "entropy":
        entropy = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(axis=-1)
        return np.clip(1.0 - entropy / np.log(probs.shape[-1]), 0.0, 1.0)
    raise ValueError(f"rule: {rule!r} is not allowed; allowed: {RULES}")


def exit_features(logits: np.ndarray, num_exits: int | None = None) -> np.ndarray:
    """Per (exit, sample) features of the exits' predictions, columns named by FEATURES.

    Args:
        logits: ``(E, N, K)`` logits of the first ``E`` exits.
        num_exits: exits of the whole configuration (default ``E``).

    Returns:
        ``(E, N, F)`` float64 features.
    """
    logits = np.asarray(logits, dtype=np.float64)
    num_given = logits.shape[0]
    num_exits = num_given if num_exits is None else num_exits
    probs = softmax(logits)  # (E, N, K)
    max_prob = confidences(probs, "max_softmax")  # (E, N)
    preds = probs.argmax(axis=-1)  # (E, N)

    agrees_previous = np.zeros_like(max_prob)
    agrees_previous[1:] = preds[1:] == preds[:-1]

    same = preds[:, None, :] == preds[None, :, :]  # (E, E, N): exit i agrees with exit j
    earlier = np.tril(np.ones((num_given, num_given), dtype=bool), k=-1)  # j < i
    agreeing = (same & earlier[:, :, None]).sum(axis=1)  # (E, N)
    agreement_fraction = agreeing / np.maximum(np.arange(num_given), 1)[:, None]

    previous_max = np.zeros_like(max_prob)
    previous_max[1:] = np.maximum.accumulate(max_prob, axis=0)[:-1]

    position = np.arange(num_given, dtype=np.float64) / max(num_exits - 1, 1)
    position = np.broadcast_to(position[:, None], max_prob.shape)

    of_class = np.take_along_axis(probs[None], preds[:, None, :, None], axis=-1)[..., 0]
    upto = np.tril(np.ones((num_given, num_given)))  # j <= i
    ensemble = (of_class * upto[:, :, None]).sum(axis=1) / upto.sum(axis=1)[:, None]
    previous_of_class = np.zeros_like(max_prob)
    previous_of_class[1:] = of_class[np.arange(1, num_given), np.arange(num_given - 1)]

    columns = (
        max_prob,
        confidences(probs, "margin"),
        confidences(probs, "entropy"),
        agrees_previous,
        agreement_fraction,
        previous_max,
        position,
        ensemble,
        previous_of_class,
    )
    return np.stack(columns, axis=-1)  # (E, N, F)


# -- the model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageGraph:
    """One stage's ONNX session and the state it reads and writes."""

    index: int
    session: ort.InferenceSession
    inputs: tuple[tuple[str, str, Any], ...]  # (graph input name, state key, numpy dtype)
    outputs: tuple[tuple[str, str], ...]  # (graph output name, state key)
    flops: int  # analytic FLOPs per image of the stage

    def run(self, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the stage on ``state`` (arrays by state key); returns its outputs by state key."""
        feed = {name: np.ascontiguousarray(state[key], dtype) for name, key, dtype in self.inputs}
        values = self.session.run([name for name, _ in self.outputs], feed)
        return {key: value for (_, key), value in zip(self.outputs, values, strict=True)}


class OnnxExitModel:
    """A loaded ONNX bundle: stage graphs, exit rule, optional learned policy, metadata.

    Built by :func:`load`; ``meta`` is the bundle's ``config.json`` and ``layout`` its
    ``onnx/stages.json``.
    """

    def __init__(
        self,
        folder: Path,
        meta: dict[str, Any],
        layout: dict[str, Any],
        stages: list[StageGraph],
        policy: ort.InferenceSession | None,
        error: type[Exception] = BundleError,
    ):
        self.folder, self.meta, self.layout, self.stages = folder, meta, layout, stages
        self.error = error
        self.image_size, self.in_chans = int(meta["image_size"]), int(meta["in_chans"])
        norm = meta["normalization"]
        shape = (1, -1, 1, 1)
        self.mean = np.asarray(norm["mean"], np.float32).reshape(shape)
        self.std = np.asarray(norm["std"], np.float32).reshape(shape)
        rule = meta["rule"]
        self.rule = str(rule["rule"])
        self.thresholds = np.array(
            [np.inf if t is None else float(t) for t in rule["thresholds"]], np.float64
        )
        if self.rule not in (*RULES, LEARNED):
            raise error(f"{folder}: exit rule {self.rule!r} is not one of {(*RULES, LEARNED)}")
        if len(self.thresholds) != len(stages) - 1:
            raise error(f"{folder}: {len(stages)} exits need {len(stages) - 1} thresholds")
        self.policy = policy
        self.policy_info: dict[str, Any] = layout.get("policy") or {}
        if self.rule == LEARNED and policy is None and "constant" not in self.policy_info:
            raise error(f"{folder}: the learned exit rule needs onnx/policy.onnx")
        self.cumulative_flops = np.cumsum([s.flops for s in stages]).astype(np.int64)

    @property
    def num_exits(self) -> int:
        return len(self.stages)

    def check_images(self, images: Any) -> np.ndarray:
        """``images`` as a uint8 array ``(N, C, H, W)`` at the bundle's size, or ``error``."""
        array = np.asarray(images)
        size, chans = self.image_size, self.in_chans
        got = (str(array.dtype), *array.shape[1:])
        if array.ndim != 4 or got != ("uint8", chans, size, size):
            raise self.error(
                f"images: expected uint8 (N, {chans}, {size}, {size}), got "
                f"{array.dtype} {tuple(array.shape)}"
            )
        return array

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """uint8 images to float32, per-channel standardised (as exitnas's ``normalize``)."""
        return (images.astype(np.float32) / np.float32(255.0) - self.mean) / self.std

    def run_stage(self, k: int, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run stage ``k`` on ``state`` (arrays by state key, batch first); returns its outputs
        by state key (``logits`` always). What a profiler times."""
        return self.stages[k].run(state)

    def stage_states(self, images: np.ndarray) -> list[dict[str, np.ndarray]]:
        """The state entering every stage when all of uint8 ``images`` run every stage."""
        state = {"images": self.normalize(self.check_images(images))}
        states = []
        for stage in self.stages:
            states.append(dict(state))
            state.update(stage.run(state))
        return states

    def logits(self, images: Any, batch_size: int = 256) -> np.ndarray:
        """Logits of every exit, no early exit: ``(E, N, K)`` float32."""
        images = self.check_images(images)
        chunks = []
        for start in range(0, len(images), batch_size):
            state = {"images": self.normalize(images[start : start + batch_size])}
            rows = []
            for stage in self.stages:
                state.update(stage.run(state))
                rows.append(state["logits"])
            chunks.append(np.stack(rows))
        return np.concatenate(chunks, axis=1)

    def predict(self, images: Any, batch_size: int = 256) -> Prediction:
        """Classify uint8 ``images`` ``(N, C, H, W)`` with real early exit.

        Each batch runs stage by stage; after a stage, the samples whose confidence (or
        learned policy score) reaches that exit's threshold leave the batch (the last exit
        takes all that remain), so later stages run on fewer samples.
        """
        images = self.check_images(images)
        n, last = len(images), self.num_exits - 1
        labels, exits = np.zeros(n, np.int64), np.zeros(n, np.int64)
        taken: np.ndarray | None = None
        for start in range(0, n, batch_size):
            state = {"images": self.normalize(images[start : start + batch_size])}
            rows = np.arange(start, start + len(state["images"]))
            history: list[np.ndarray] = []  # earlier exits' logits of the rows (learned rule)
            for k, stage in enumerate(self.stages):
                state.update(stage.run(state))
                logits = state["logits"]  # (B, K)
                if taken is None:
                    taken = np.zeros((n, logits.shape[1]), np.float32)
                if k == last:
                    leave = np.ones(len(rows), dtype=bool)
                else:
                    leave = self._leaves(k, logits, history)
                labels[rows[leave]] = logits[leave].argmax(-1)
                exits[rows[leave]] = k
                taken[rows[leave]] = logits[leave]
                stay = ~leave
                rows = rows[stay]
                if len(rows) == 0:
                    break
                history = [h[stay] for h in history]
                state = {key: value[stay] for key, value in state.items()}
        if taken is None:
            taken = np.zeros((0, int(self.layout["num_classes"])), np.float32)
        return Prediction(labels, exits, self.cumulative_flops[exits], taken)

    def _leaves(self, k: int, logits: np.ndarray, history: list[np.ndarray]) -> np.ndarray:
        """Which samples leave at exit ``k`` (not the last); appends to ``history``."""
        threshold = self.thresholds[k]
        if self.rule != LEARNED:
            return confidences(softmax(logits[None]), self.rule)[0] >= threshold
        history.append(logits)
        return self.policy_scores(np.stack(history)) >= threshold - SCORE_TOLERANCE

    def policy_scores(self, logits: np.ndarray) -> np.ndarray:
        """The learned policy's score ``(N,)`` of the last of the exits given ``(k, N, K)``
        (not the configuration's last exit)."""
        return policy_scores(self.policy, self.policy_info, logits, self.num_exits)


def policy_scores(
    session: ort.InferenceSession | None,
    info: dict[str, Any],
    logits: np.ndarray,
    num_exits: int,
) -> np.ndarray:
    """A learned policy's score ``(N,)`` of the last of the exits given ``(k, N, K)``.

    Args:
        session: the policy graph (None for a constant policy).
        info: its ``policy`` entry of ``onnx/stages.json`` (or ``kit.json``).
        logits: the logits of exits 1..k of N samples.
        num_exits: exits of the configuration.
    """
    if "constant" in info:
        return np.full(logits.shape[1], float(info["constant"]))
    assert session is not None
    features = exit_features(logits, num_exits)[-1]  # (N, F)
    name = info.get("input", "features")
    output = info.get("output", "probabilities")
    probs = session.run([output], {name: features})[0]
    return np.asarray(probs, np.float64)[:, int(info.get("positive_column", 1))]


def _stage_graph(
    folder: Path,
    entry: dict[str, Any],
    options: ort.SessionOptions,
    providers: list[str],
    error: type[Exception],
) -> StageGraph:
    try:
        session = ort.InferenceSession(str(folder / entry["file"]), options, providers=providers)
        inputs = tuple(
            (str(i["name"]), str(i["state"]), _DTYPES[str(i["dtype"])]) for i in entry["inputs"]
        )
        outputs = tuple((str(o["name"]), str(o["state"])) for o in entry["outputs"])
        return StageGraph(int(entry["index"]), session, inputs, outputs, int(entry["flops"]))
    except (KeyError, TypeError, ValueError) as err:
        raise error(f"{folder / STAGES}: stage entry is invalid ({err!r})") from None
    except Exception as err:  # onnxruntime raises its own exception types
        raise error(f"{folder / entry['file']} is not a loadable ONNX graph: {err}") from None


def load(
    bundle_dir: str | os.PathLike[str],
    *,
    threads: int | None = None,
    providers: list[str] | None = None,
    error: type[Exception] = BundleError,
) -> OnnxExitModel:
    """Load an ONNX bundle, checking every file against its manifest first.

    Args:
        bundle_dir: the bundle folder (written by ``exitnas export --format onnx``).
        threads: ONNX Runtime intra-op threads (its default when None).
        providers: execution providers, ``["CPUExecutionProvider"]`` by default.
        error: exception class raised (exitnas passes an ExitnasError subclass).

    Raises:
        error: a missing or tampered file, an unknown format, or an unloadable graph.
    """
    folder = Path(bundle_dir)
    files = verify_files(folder, (CONFIG, STAGES), error)
    meta = read_json(folder / CONFIG, error)
    layout = read_json(folder / STAGES, error)
    if layout.get("format") != RUNTIME_FORMAT:
        raise error(
            f"{folder / STAGES}: format {layout.get('format')!r} is not supported; this "
            f"runtime reads format {RUNTIME_FORMAT}"
        )
    providers = list(providers or ["CPUExecutionProvider"])
    options = session_options(threads)
    try:
        entries = list(layout["stages"])
        for entry in entries:
            if entry["file"] not in files:
                raise error(f"{folder / MANIFEST} does not list {entry['file']}")
        policy_info = layout.get("policy") or {}
        policy_file = policy_info.get("file")
        if policy_file is not None and policy_file not in files:
            raise error(f"{folder / MANIFEST} does not list {policy_file}")
    except (KeyError, TypeError) as err:
        raise error(f"{folder / STAGES} is incomplete ({err!r})") from None
    stages = [_stage_graph(folder, entry, options, providers, error) for entry in entries]
    policy = None
    if policy_file is not None:
        try:
            policy = ort.InferenceSession(str(folder / policy_file), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise error(f"{folder / policy_file} is not a loadable ONNX graph: {err}") from None
    try:
        return OnnxExitModel(folder, meta, layout, stages, policy, error)
    except (KeyError, TypeError, ValueError) as err:
        raise error(f"{folder / CONFIG} is incomplete ({err!r})") from None


# -- command line ---------------------------------------------------------------------------


def _predict_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="exitnas_runtime.py",
        description="Classify uint8 (N, C, H, W) images with an exitnas ONNX bundle.",
    )
    parser.add_argument("bundle", help="the bundle folder")
    parser.add_argument("images", help=".npy file of uint8 images (N, C, H, W)")
    parser.add_argument("--out", required=True, help=".npz to write: labels, exits, flops")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    args = parser.parse_args(argv)
    model = load(args.bundle, threads=args.threads)
    try:
        images = np.load(args.images, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise BundleError(f"cannot read images {args.images}: {err}") from None
    prediction = model.predict(images, batch_size=args.batch_size)
    np.savez(args.out, labels=prediction.labels, exits=prediction.exits, flops=prediction.flops)
    counts = np.bincount(prediction.exits, minlength=model.num_exits).tolist()
    print(f"{len(prediction.labels)} images; exits taken per stage: {counts}")
    return 0


def _profiler() -> Any:
    """The kit's profiler: ``exitnas_profiler.py`` beside this file in a kit,
    :mod:`exitnas.deploy.onnx_kit_runtime` in exitnas."""
    if __package__:
        from . import onnx_kit_runtime

        return onnx_kit_runtime
    try:
        import exitnas_profiler
    except ModuleNotFoundError as err:
        if err.name != "exitnas_profiler":
            raise
        raise BundleError(
            "profile needs exitnas_profiler.py beside exitnas_runtime.py (a kit written by "
            "exitnas profile --kit)"
        ) from None
    return exitnas_profiler


def main(argv: list[str] | None = None) -> int:
    """Entry point of the script; returns the exit code (2 for a bad bundle, kit or input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["profile"]:
            # run as a script, this module is __main__ and the profiler imports its own copy
            # of exitnas_runtime: it raises this module's BundleError, caught below
            return _profiler().profile_main(argv[1:], error=BundleError)
        return _predict_main(argv)
    except BundleError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
