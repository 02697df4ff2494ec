"""One ONNX graph per stage of an extracted sub-network, with a dynamic batch axis.

A stage (:func:`~exitnas.supernet.cascade.plan_stages`) runs the backbone from the previous exit
(or a new branch's embedding) up to the next exit, then that exit's head. Its graph takes and
returns the :class:`~exitnas.supernet.cascade.CascadeState` carried between stages as flat,
batch-first tensors, so a runtime can drop the samples that exited before the next stage:

=============  ===========  ===============  =======  ==============================================
state          input name   output name      dtype    shape and meaning
=============  ===========  ===============  =======  ==============================================
``images``     images       (never)          float32  (B, C, S, S) normalised images at image size S
``tokens``     tokens       tokens_out       float32  (B, 1 + N, D) the branch's tokens, class first
``cell_index`` cell_index   cell_index_out   int64    (B, G*G) token covering each grid cell
``cell_attn``  cell_attn    cell_attn_out    float32  (B, G*G) class attention per cell (refinement)
``logits``     prev_logits  logits           float32  (B, K) the exit's logits
``prior``      prior        prior_out        float32  (B, K) previous branch's reused prediction
=============  ===========  ===============  =======  ==============================================

A stage reads what it needs (:func:`stage_io`): the first stage of a branch reads the images,
plus the previous branch's ``tokens`` and ``logits`` when it reuses them, its ``cell_attn`` when
it refines, and its ``cell_index`` for feature reuse; a later stage of a branch reads
``tokens``, ``cell_index`` and (reuse) ``prior``. The exporter drops an input the graph never
uses (``cell_index`` before a head that ignores the grid, say), so ``onnx/stages.json`` lists
the inputs each graph really takes. Every input comes from the images or from the previous
stage's outputs; N, G and K are fixed per stage, only the batch axis varies.

Four things make the TorchScript exporter fail on the eager cascade, and the export works
around each without changing the model (the first three with :mod:`exitnas.deploy.export_ops`):

- antialiased bilinear resizing (``F.interpolate(..., antialias=True)``, the branch
  resolutions below the image size) has no ONNX symbolic: it is a fixed linear map, exported as
  two matrix products with the resize weights taken from torch itself;
- ``torch.argsort(..., stable=True)`` (token keeping, refinement) hits a bug in the exporter's
  ``argsort`` symbolic (the ``stable`` overload is read as an ``out=`` argument): a symbolic
  registered for the duration of the export emits ONNX ``TopK``, whose ties go to the lower
  index, which is what a stable sort does;
- adaptive average pooling to a size that does not divide the input (the ResMLP and Mixer
  heads pool every grid to one size, e.g. 3x3 to 2x2) has no ONNX symbolic either: it is a
  fixed linear map too, exported as two matrix products;
- the cascade's Python control flow (which blocks keep tokens, which branch refines) depends
  only on the config, so tracing one stage at a time fixes it into each graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from exitnas.deploy.export_ops import export_context, resize_matrix
from exitnas.errors import ExitnasError
from exitnas.spaces import SubnetConfig
from exitnas.supernet.cascade import CascadeRunner, CascadeState, Stage, plan_stages
from exitnas.supernet.flops import count_flops
from exitnas.supernet.subnet import BranchEmbed, ExitViT

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "STATE_KEYS",
    "OnnxExportError",
    "StageIO",
    "StageModule",
    "export_stage_graphs",
    "stage_io",
]

DEFAULT_OPSET = 18  # ScatterElements with reduction (16), TopK ties to the lower index
STATE_KEYS = ("images", "tokens", "cell_index", "cell_attn", "logits", "prior")
INPUT_NAMES = {key: "prev_logits" if key == "logits" else key for key in STATE_KEYS}
OUTPUT_NAMES = {key: "logits" if key == "logits" else f"{key}_out" for key in STATE_KEYS}
BATCH_AXIS = "batch"
_TRACE_BATCH = 3  # batch size the graphs are traced (and checked) at


class OnnxExportError(ExitnasError):
    """A sub-network, bundle or policy that cannot be exported to ONNX, or a graph that does not
    reproduce the model."""


@dataclass(frozen=True)
class StageIO:
    """The state keys one stage reads and writes (a subset of :data:`STATE_KEYS`, in order)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def stage_io(config: SubnetConfig) -> tuple[StageIO, ...]:
    """What every stage of ``config`` reads and writes, in cascade order.

    Every input of stage k+1 other than the images is an output of stage k; every stage also
    outputs its ``logits``.
    """
    stages = plan_stages(config)
    reads = []
    for stage in stages:
        branch = config.branches[stage.branch]
        reuse = config.reuse and stage.branch > 0
        keys = set()
        if stage.start == 0:
            keys.add("images")
            if reuse:
                keys |= {"tokens", "logits"}
            if branch.refine_fraction is not None:
                keys.add("cell_attn")
                if reuse:
                    keys.add("cell_index")
        else:
            keys |= {"tokens", "cell_index"} | ({"prior"} if reuse else set())
        reads.append(tuple(k for k in STATE_KEYS if k in keys))
    ios = []
    for k, inputs in enumerate(reads):
        following = set(reads[k + 1]) if k + 1 < len(reads) else set()
        writes = {"logits"} | (following - {"images"})
        ios.append(StageIO(inputs, tuple(key for key in STATE_KEYS if key in writes)))
    return tuple(ios)


class _GraphRunner(CascadeRunner):
    """An :class:`ExitViT`'s parts run by the shared cascade code, resizing by matrix products."""

    def __init__(self, model: ExitViT, image_size: int):
        super().__init__()
        self.model = model
        self.cls_token = model.cls_token
        self.keep_layers = model.keep_layers
        self.image_size = image_size
        for b, branch in enumerate(model.config.branches):
            if branch.resolution != image_size:
                self.register_buffer(f"resize{b}", resize_matrix(image_size, branch.resolution))

    def run_config(self) -> SubnetConfig:
        return self.model.config

    def embed(self, branch: int, images: torch.Tensor) -> torch.Tensor:
        embed: BranchEmbed = self.model.embeds[branch]  # type: ignore[assignment]
        if embed.resolution != self.image_size:
            resize: torch.Tensor = getattr(self, f"resize{branch}")  # (R, S)
            images = resize @ images @ resize.T  # (B, c, R, R)
        return embed.proj(images).flatten(2).transpose(1, 2) + embed.pos_embed  # (B, G*G, C)

    def block(self, index: int):
        return self.model.block(index)

    def head(self, branch: int, exit_: int):
        return self.model.head(branch, exit_)

    def reuse(self, branch: int):
        return self.model.reuse(branch)


class StageModule(nn.Module):
    """One stage as a module of flat tensors: ``forward(*inputs) -> outputs``, both in the order
    of :attr:`io` (state keys, see the module docstring for the graph names)."""

    def __init__(self, runner: CascadeRunner, stage: Stage, io: StageIO):
        super().__init__()
        self.runner, self.stage, self.io = runner, stage, io

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values: dict[str, Any] = dict.fromkeys(STATE_KEYS)
        values.update(zip(self.io.inputs, inputs, strict=True))
        state = self.runner.run_stage(self.stage, CascadeState(**values))
        return tuple(getattr(state, key) for key in self.io.outputs)


def _tensor_entry(name: str, key: str, value: torch.Tensor) -> dict[str, Any]:
    return {
        "name": name,
        "state": key,
        "dtype": str(value.dtype).removeprefix("torch."),
        "shape": [BATCH_AXIS, *value.shape[1:]],
    }


def export_stage_graphs(
    model: ExitViT,
    image_size: int,
    out_dir: str | Path,
    *,
    prefix: str = "onnx",
    opset: int = DEFAULT_OPSET,
    check: bool = True,
) -> list[dict[str, Any]]:
    """Write ``stage_<k>.onnx`` for every stage of ``model`` into ``out_dir``.

    Args:
        model: an extracted sub-network (put in eval mode).
        image_size: side of the (square) images the graphs take, as in the bundle.
        out_dir: folder for the graphs (created).
        prefix: folder of the graphs relative to the bundle root, for the ``file`` entries.
        opset: ONNX opset (17 or later).
        check: run every graph with ONNX Runtime on the traced inputs and require the torch
            outputs (logits within 1e-4, indices equal).

    Returns:
        One JSON-ready entry per stage (``onnx/stages.json``'s ``stages``): ``index``, ``file``,
        ``branch``, ``exit``, ``start``/``end`` layers, ``head``, ``flops``,
        ``cumulative_flops`` and ``inputs``/``outputs`` (``name``, ``state``, ``dtype``, ``shape``
        with ``"batch"`` first, and where each comes from or goes to).

    Raises:
        OnnxExportError: the exporter fails, or (``check``) a graph does not reproduce torch.
    """
    if opset < 17:
        raise OnnxExportError(f"opset {opset} is too old; use 17 or later")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    config = model.config
    runner = _GraphRunner(model, image_size).eval()
    flops = count_flops(model.space, config)
    cumulative = np.cumsum(flops).tolist()
    generator = torch.Generator().manual_seed(0)
    chans = model.space.in_chans
    images = torch.randn(_TRACE_BATCH, chans, image_size, image_size, generator=generator)
    state = CascadeState(images=images)
    entries: list[dict[str, Any]] = []
    ios = stage_io(config)
    with export_context(opset):
        for k, (stage, io) in enumerate(zip(plan_stages(config), ios, strict=True)):
            module = StageModule(runner, stage, io).eval()
            inputs = tuple(getattr(state, key) for key in io.inputs)
            state = runner.run_stage(stage, state)
            outputs = tuple(getattr(state, key) for key in io.outputs)
            out_names = [OUTPUT_NAMES[key] for key in io.outputs]
            path = out / f"stage_{k}.onnx"
            try:
                _export_stage(module, inputs, path, opset)
            except Exception as err:  # the exporter raises many types; name the stage
                raise OnnxExportError(
                    f"stage {k} of config {config.key()} does not export to ONNX: "
                    f"{type(err).__name__}: {str(err).strip().splitlines()[0]}"
                ) from err
            taken = _graph_inputs(path, io, inputs)
            if check:
                _check_graph(path, taken, out_names, outputs, k)
            file = f"{prefix}/{path.name}" if prefix else path.name
            produced = list(zip(out_names, io.outputs, outputs, strict=True))
            cost = (int(flops[k]), int(cumulative[k]))
            entries.append(_stage_entry(k, stage, config, file, cost, taken, produced))
    _link_outputs(entries)
    return entries


def _export_stage(
    module: StageModule, inputs: tuple[torch.Tensor, ...], path: Path, opset: int
) -> None:
    """Trace ``module`` on ``inputs`` into the ONNX file ``path``, batch axis dynamic."""
    in_names = [INPUT_NAMES[key] for key in module.io.inputs]
    out_names = [OUTPUT_NAMES[key] for key in module.io.outputs]
    torch.onnx.export(
        module,
        inputs,
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=in_names,
        output_names=out_names,
        dynamic_axes={n: {0: BATCH_AXIS} for n in in_names + out_names},
    )


def _graph_inputs(
    path: Path, io: StageIO, inputs: tuple[torch.Tensor, ...]
) -> list[tuple[str, str, torch.Tensor]]:
    """The inputs the graph at ``path`` takes, as ``(graph name, state key, traced value)``.

    The exporter drops inputs the graph does not use (a head that ignores ``cell_index``,
    say): the graph lists what it takes.
    """
    import onnx

    used = {value.name for value in onnx.load(str(path), load_external_data=False).graph.input}
    in_names = [INPUT_NAMES[key] for key in io.inputs]
    return [
        (name, key, value)
        for name, key, value in zip(in_names, io.inputs, inputs, strict=True)
        if name in used
    ]


def _stage_entry(
    k: int,
    stage: Stage,
    config: SubnetConfig,
    file: str,
    cost: tuple[int, int],
    taken: list[tuple[str, str, torch.Tensor]],
    produced: list[tuple[str, str, torch.Tensor]],
) -> dict[str, Any]:
    """Stage ``k``'s entry of ``onnx/stages.json`` (its outputs' ``feeds`` set later); ``cost``
    is its FLOPs and the cumulative FLOPs up to it, ``taken`` and ``produced`` its inputs and
    outputs as ``(graph name, state key, traced value)``."""
    flops, cumulative = cost
    return {
        "index": k,
        "file": file,
        "branch": stage.branch,
        "exit": stage.exit,
        "start": stage.start,
        "end": stage.end,
        "head": config.branches[stage.branch].exits[stage.exit].head,
        "opens_branch": stage.start == 0,
        "flops": flops,
        "cumulative_flops": cumulative,
        "inputs": [
            dict(_tensor_entry(name, key, value), source=_source(k, key))
            for name, key, value in taken
        ],
        "outputs": [_tensor_entry(name, key, value) for name, key, value in produced],
    }


def _link_outputs(entries: list[dict[str, Any]]) -> None:
    """Set every output's ``feeds``: the next stage's input it becomes (none for the last)."""
    for k, entry in enumerate(entries[:-1]):
        following = {i["state"]: i["name"] for i in entries[k + 1]["inputs"]}
        for output in entry["outputs"]:
            key = output["state"]
            output["feeds"] = [f"stage_{k + 1}.{following[key]}"] if key in following else []
    if entries:
        for output in entries[-1]["outputs"]:
            output["feeds"] = []


def _source(k: int, key: str) -> str:
    """Where stage ``k``'s input of state ``key`` comes from."""
    return "images" if key == "images" else f"stage_{k - 1}.{OUTPUT_NAMES[key]}"


def _check_graph(path: Path, taken, out_names, outputs, k: int) -> None:
    """Run the graph with ONNX Runtime on the ``taken`` inputs ``(name, key, value)`` and
    compare with torch's ``outputs``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {name: value.numpy() for name, _, value in taken}
    for name, want, got in zip(out_names, outputs, session.run(out_names, feed), strict=True):
        want = want.numpy()
        if want.shape != got.shape or want.dtype != got.dtype:
            raise OnnxExportError(
                f"stage {k}: ONNX output {name} is {got.dtype} {got.shape}, torch gives "
                f"{want.dtype} {want.shape}"
            )
        if want.dtype == np.int64:
            same = np.array_equal(want, got)
        else:
            same = bool(np.allclose(want, got, rtol=1e-4, atol=1e-4))
        if not same:
            raise OnnxExportError(
                f"stage {k}: ONNX output {name} differs from torch's (largest difference "
                f"{np.abs(want.astype(np.float64) - got).max():.3g}); ties among equally "
                "attended cells broken differently (refinement after token keeping) do this"
            )
