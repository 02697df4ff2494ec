"""Bundles of the tiny supernet, exported as torch bundles and as ONNX bundles."""

from __future__ import annotations

import importlib.metadata as metadata
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from exitnas.deploy.onnx_export import export_onnx
from exitnas.deploy.write import export_bundle
from exitnas.exits.rules import LEARNED, ExitRule, confidences, softmax
from exitnas.search.front import ParetoPoint
from exitnas.spaces import DataConfig, SearchConfig, StudyConfig, SubnetConfig, TrainingConfig
from exitnas.supernet import SuperViT, count_flops
from exitnas.supernet.evaluate import predict_exits
from exitnas.supernet.registry import exitnas_tiny

NUM_IMAGES = 96


@pytest.fixture(scope="session")
def deploy_study() -> StudyConfig:
    return StudyConfig(
        name="tiny",
        space=exitnas_tiny(),
        data=DataConfig(image_size=16, val_fraction=0.1),
        training=TrainingConfig(epochs=1, batch_size=32),
        search=SearchConfig(seeds=()),
        seed=7,
    )


@pytest.fixture(scope="session")
def supernet(deploy_study: StudyConfig) -> SuperViT:
    """A randomly initialised tiny supernet, weights scaled up so that exits disagree."""
    torch.manual_seed(0)  # SuperViT's initialisers read torch's global generator
    net = SuperViT(deploy_study.space).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.mul_(3.0)
        net.pos_embed.mul_(3.0)
    return net


@pytest.fixture(scope="session")
def deploy_images(digits) -> tuple[torch.Tensor, tuple[float, ...], tuple[float, ...]]:
    """uint8 validation digits ``(N, 1, 16, 16)`` and the data's mean and std."""
    return digits.val.images[:NUM_IMAGES], tuple(digits.mean), tuple(digits.std)


def midpoint_thresholds(scores: np.ndarray, quantile: float = 0.4) -> tuple[float, ...]:
    """Per-exit thresholds halfway between two neighbouring distinct scores (none sits on a
    score, so float noise cannot move a sample across), about ``quantile`` of each exit's."""
    thresholds = []
    for row in scores[:-1]:
        values = np.unique(row)
        if len(values) < 2:
            thresholds.append(float(values[0]))
            continue
        i = min(max(int(quantile * len(values)), 0), len(values) - 2)
        thresholds.append(float((values[i] + values[i + 1]) / 2))
    return tuple(thresholds)


BundleMaker = Callable[..., tuple[Path, Path]]


@pytest.fixture
def make_bundles(supernet, deploy_study, deploy_images, tmp_path) -> BundleMaker:
    """``make(config, rule, policy=None, thresholds=None, **onnx_kw)`` -> (torch bundle, ONNX
    bundle); thresholds default to midpoints of the torch model's own scores."""

    def make(
        config: SubnetConfig,
        rule: str = "max_softmax",
        policy=None,
        thresholds: tuple[float, ...] | None = None,
        **onnx_kw,
    ) -> tuple[Path, Path]:
        images, mean, std = deploy_images
        if thresholds is None:
            logits = predict_exits(supernet.extract(config), images, mean, std)
            if rule == LEARNED:
                scores = policy.scores(logits)
            else:
                scores = confidences(softmax(logits), rule)
            thresholds = midpoint_thresholds(scores)
        point = ParetoPoint(
            index=0,
            trial_number=0,
            config=config,
            rule=ExitRule(rule, thresholds),
            accuracy=0.5,
            mflops=1.0,
            exit_fractions=(1.0 / config.num_exits,) * config.num_exits,
            stage_flops=count_flops(deploy_study.space, config),
        )
        blob = None
        if policy is not None:
            from exitnas.exits.policy import policy_to_bytes

            blob = policy_to_bytes(policy, deployed_only=True)
        name = f"{config.key()}-{rule}-{len(list(tmp_path.iterdir()))}"
        bundle = export_bundle(
            point,
            supernet,
            deploy_study,
            tmp_path / name,
            weights_hash="0" * 64,
            mean=mean,
            std=std,
            policy=blob,
        )
        return bundle, export_onnx(bundle, tmp_path / f"{name}-onnx", **onnx_kw)

    return make


def _closure(names: list[str]) -> set[str]:
    """Distributions ``names`` need at run time (extras left out), themselves included."""
    seen: set[str] = set()
    while names:
        name = names.pop()
        if name in seen:
            continue
        seen.add(name)
        for requirement in metadata.distribution(name).requires or []:
            if "extra ==" not in requirement:
                names.append(re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0))
    return seen


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> Path:
    """A virtual environment's python that imports numpy and onnxruntime and nothing else of
    this environment (links to the installed packages: no download)."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip())
    for name in _closure(["numpy", "onnxruntime"]):
        dist = metadata.distribution(name)
        tops = {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}
        for top in tops:
            target = site / top
            if not target.exists() and not top.endswith(".dist-info"):
                target.symlink_to(Path(dist.locate_file(top)))
    check = "import numpy, onnxruntime\ntry:\n import torch\nexcept ImportError:\n print('bare')"
    result = subprocess.run([python, "-c", check], capture_output=True, text=True)
    assert result.stdout.strip() == "bare", result.stderr
    return python
