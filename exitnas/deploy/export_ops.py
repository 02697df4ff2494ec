"""What the TorchScript ONNX exporter cannot export from the cascade, written another way.

:func:`~exitnas.deploy.stage_graphs.export_stage_graphs` traces each stage inside
:func:`export_context`, which registers two symbolics for the duration of the export:

- ``aten::argsort`` (token keeping, refinement: ``torch.argsort(..., stable=True)``, whose
  ``stable`` overload the exporter's own symbolic reads as an ``out=`` argument) as ONNX
  ``TopK``, whose ties go to the lower index, which is what a stable sort does;
- ``aten::adaptive_avg_pool2d`` to a size that does not divide the input (the ResMLP and Mixer
  heads pool every grid to one size, e.g. 3x3 to 2x2) as two matrix products with
  :func:`pool_matrix`.

Antialiased bilinear resizing has no symbolic either; the stage graphs' runner resizes by two
matrix products with :func:`resize_matrix`, weights taken from torch itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

__all__ = ["export_context", "pool_matrix", "resize_matrix"]


def resize_matrix(size: int, resolution: int) -> torch.Tensor:
    """``(resolution, size)`` weights of torch's antialiased bilinear resize along one axis.

    ``R @ x @ R.T`` resizes a ``size x size`` map as ``F.interpolate(x, (resolution,
    resolution), mode="bilinear", align_corners=False, antialias=True)`` does (it is separable
    and its weights sum to one).
    """
    basis = torch.zeros(size, 1, size, size, dtype=torch.float64)
    basis[torch.arange(size), 0, torch.arange(size), :] = 1.0  # image k: row k all ones
    out = F.interpolate(
        basis, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True
    )
    return out[:, 0, :, 0].T.float().contiguous()


def _argsort_symbolic(g, self, *args):
    """ONNX ``TopK`` for ``aten::argsort``, both overloads (``dim, descending`` and
    ``stable, dim, descending``); TopK orders ties by index, as a stable sort does."""
    from torch.onnx import symbolic_helper

    dim, descending = args[-2:]
    dim = symbolic_helper._get_const(dim, "i", "dim")
    descending = symbolic_helper._get_const(descending, "b", "descending")
    size = g.op(
        "Gather",
        g.op("Shape", self),
        g.op("Constant", value_t=torch.tensor([dim], dtype=torch.int64)),
        axis_i=0,
    )
    _, indices = g.op(
        "TopK", self, size, axis_i=dim, largest_i=int(descending), sorted_i=1, outputs=2
    )
    return indices


def pool_matrix(size: int, out: int) -> torch.Tensor:
    """``(out, size)`` weights of adaptive average pooling along one axis: row i averages
    ``floor(i * size / out) .. ceil((i + 1) * size / out)``, as ``F.adaptive_avg_pool2d``."""
    matrix = torch.zeros(out, size)
    for i in range(out):
        start, end = (i * size) // out, -(-((i + 1) * size) // out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def _adaptive_avg_pool2d_symbolic(g, self, output_size):
    """``P_h @ x @ P_w.T`` for ``aten::adaptive_avg_pool2d`` (any sizes, static spatial dims)."""
    from torch.onnx import symbolic_helper

    sizes = symbolic_helper._get_tensor_sizes(self)
    out = symbolic_helper._parse_arg(output_size, "is")
    if not sizes or sizes[-1] is None or sizes[-2] is None:
        return symbolic_helper._unimplemented("adaptive_avg_pool2d", "unknown spatial size", self)
    out_h, out_w = (out[0], out[-1]) if len(out) else (sizes[-2], sizes[-1])
    rows = g.op("Constant", value_t=pool_matrix(sizes[-2], out_h))
    cols = g.op("Constant", value_t=pool_matrix(sizes[-1], out_w).T.contiguous())
    return g.op("MatMul", g.op("MatMul", rows, self), cols)


_SYMBOLICS = {
    "aten::argsort": _argsort_symbolic,
    "aten::adaptive_avg_pool2d": _adaptive_avg_pool2d_symbolic,
}


@contextmanager
def export_context(opset: int) -> Iterator[None]:
    """Inside: this module's symbolics registered for ``opset``, the exporter's warnings
    silenced, no autograd."""
    for name, symbolic in _SYMBOLICS.items():
        torch.onnx.register_custom_op_symbolic(name, symbolic, opset)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", message=".*Removing mutation from node.*")
            yield
    finally:
        for name in _SYMBOLICS:
            torch.onnx.unregister_custom_op_symbolic(name, opset)
