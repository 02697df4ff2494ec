"""Deployment: ONNX bundles (one graph per stage) and the NumPy/ONNX Runtime early-exit runtime.

ONNX Runtime, onnx and skl2onnx come with the ``onnx`` extra (``pip install 'exitnas[onnx]'``);
they are imported when a name of this package is first used.

Example:
    >>> from exitnas.deploy import export_onnx, load_onnx
    >>> export_onnx("bundles/quickstart", "bundles/quickstart-onnx")
    >>> load_onnx("bundles/quickstart-onnx").predict(images)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from exitnas._lazy import lazy_exports

if TYPE_CHECKING:
    from exitnas.deploy.onnx_bundle import OnnxBundleError, load_onnx
    from exitnas.deploy.onnx_export import export_onnx
    from exitnas.deploy.onnx_profile import (
        measure_onnx_stage_latencies,
        read_kit_profile,
        write_profile_kit,
    )
    from exitnas.deploy.stage_graphs import OnnxExportError, export_stage_graphs, stage_io

__all__ = [
    "OnnxBundleError",
    "OnnxExportError",
    "export_onnx",
    "export_stage_graphs",
    "load_onnx",
    "measure_onnx_stage_latencies",
    "read_kit_profile",
    "stage_io",
    "write_profile_kit",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "exitnas.deploy.onnx_bundle": ("OnnxBundleError", "load_onnx"),
        "exitnas.deploy.onnx_export": ("export_onnx",),
        "exitnas.deploy.onnx_profile": (
            "measure_onnx_stage_latencies",
            "read_kit_profile",
            "write_profile_kit",
        ),
        "exitnas.deploy.stage_graphs": ("OnnxExportError", "export_stage_graphs", "stage_io"),
    },
)
