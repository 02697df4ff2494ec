"""Loading an ONNX bundle from exitnas: the runtime, raising exitnas's typed errors.

:mod:`exitnas.deploy.onnx_runtime` imports nothing from exitnas, so its ``BundleError`` cannot be
an :class:`~exitnas.errors.ExitnasError`. :func:`load_onnx` hands the runtime
:class:`OnnxBundleError`, which is both, so the command line exits with code 2 on a tampered
file or wrong images, and Python callers may catch either class.

Example:
    >>> model = load_onnx("bundles/quickstart-onnx", threads=1)
    >>> prediction = model.predict(images)  # uint8 (N, C, H, W)
"""

from __future__ import annotations

import os

from exitnas.deploy import onnx_runtime
from exitnas.deploy.bundle import BundleError
from exitnas.deploy.onnx_runtime import OnnxExitModel

__all__ = ["OnnxBundleError", "load_onnx"]


class OnnxBundleError(BundleError, onnx_runtime.BundleError):
    """An ONNX bundle or profiling kit that is incomplete, tampered with, of an unknown format,
    or fed wrong images."""


def load_onnx(
    bundle_dir: str | os.PathLike[str],
    *,
    threads: int | None = None,
    providers: list[str] | None = None,
) -> OnnxExitModel:
    """Load an ONNX bundle (every file checked against its manifest) with ONNX Runtime.

    Args:
        bundle_dir: a bundle written by :func:`~exitnas.deploy.export_onnx`.
        threads: ONNX Runtime intra-op threads (its default when None).
        providers: execution providers, ``["CPUExecutionProvider"]`` by default.

    Raises:
        OnnxBundleError: a missing or tampered file, an unknown format, an unloadable graph;
            later, from ``predict``, images of the wrong dtype or shape.
    """
    return onnx_runtime.load(
        bundle_dir, threads=threads, providers=providers, error=OnnxBundleError
    )
