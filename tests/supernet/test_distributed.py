"""torchrun: two training processes (gloo, CPU) match one process, and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch
import yaml

from exitnas.supernet.checkpoint import load_weights


def test_two_processes_match_one_and_resume(study, tmp_path: Path) -> None:
    training = replace(study.training, epochs=1, batch_size=64, checkpoint_every=100)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(replace(study, training=training).to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = ["-m", "exitnas.cli", "train", str(path), "--quiet", "--out"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    torchrun += ["--nproc_per_node", "2", *train]

    one = subprocess.run([sys.executable, *train, str(tmp_path / "one")], env=env)
    assert one.returncode == 0
    ddp = tmp_path / "two"
    stopped = subprocess.run([*torchrun, str(ddp), "--stop-at-step", "10"], env=env)
    assert stopped.returncode == 0
    state = json.loads((ddp / "supernet.json").read_text())["training"]
    assert (state["complete"], state["step"]) == (False, 10)
    assert sorted(p.name for p in ddp.iterdir()) == ["checkpoint.safetensors", "supernet.json"]
    resumed = subprocess.run([*torchrun, str(ddp)], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("supernet trained") == 1  # rank 0 reports
    assert json.loads((ddp / "supernet.json").read_text())["training"]["complete"] is True
    assert not (ddp / "checkpoint.safetensors").exists()

    a = load_weights(tmp_path / "one" / "supernet.safetensors")[0]
    b = load_weights(ddp / "supernet.safetensors")[0]
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-4, rtol=1e-3, msg=f"{name}: {worst}")
