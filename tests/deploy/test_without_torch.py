"""The runtime script and the profiling kit in a Python that has only NumPy and ONNX Runtime."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

import exitnas
from exitnas.deploy import (
    measure_onnx_stage_latencies,
    read_kit_profile,
    write_profile_kit,
)
from exitnas.deploy.onnx_profile import PROFILER_FILE, profiler_source
from exitnas.devices.errors import ProfileError
from exitnas.devices.profile import DeviceProfile, StageTiming
from exitnas.spaces import BranchConfig, ExitConfig, SubnetConfig


def _tiny_config() -> SubnetConfig:
    return SubnetConfig(
        (
            BranchConfig(8, 4, (ExitConfig(2, "cnn_add"),), 0.5),
            BranchConfig(16, 4, (ExitConfig(3, "mixer"),), 1.0, 0.5),
        )
    )


def test_script_predicts_without_torch(bare_python, make_bundles, deploy_images, tmp_path) -> None:
    images = deploy_images[0]
    _, bundle = make_bundles(_tiny_config(), "entropy")
    np.save(tmp_path / "images.npy", images.numpy())
    command = [bare_python, bundle / "exitnas_runtime.py", bundle, tmp_path / "images.npy"]
    result = subprocess.run(
        [*command, "--out", tmp_path / "pred.npz", "--threads", "1"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    want = exitnas.load(bundle).predict(images)
    with np.load(tmp_path / "pred.npz") as pred:
        assert set(pred.files) == {"labels", "exits", "flops"}
        np.testing.assert_array_equal(pred["exits"], want.exits)
        np.testing.assert_array_equal(pred["labels"], want.labels)
        np.testing.assert_array_equal(pred["flops"], want.flops)
        assert pred["flops"].dtype == np.int64
    np.save(tmp_path / "small.npy", images.numpy()[:, :, :8, :8])
    result = subprocess.run(
        [*command[:3], tmp_path / "small.npy", "--out", tmp_path / "p.npz"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: images: expected uint8 (N, 1, 16, 16)")
    graph = bundle / "onnx" / "stage_0.onnx"
    graph.write_bytes(graph.read_bytes() + b"\0")
    result = subprocess.run([*command, "--out", tmp_path / "p.npz"], capture_output=True, text=True)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "stage_0.onnx does not match manifest.json" in result.stderr
    assert not (tmp_path / "p.npz").exists()


def test_profiling_kit_runs_without_torch(bare_python, supernet, tmp_path) -> None:
    rng = np.random.default_rng(3)
    configs = [_tiny_config(), supernet.space.sample(rng)]
    models = [supernet.extract(c) for c in configs]
    kit = write_profile_kit(models, tmp_path / "kit", study_key="abc", image_size=16)
    out = tmp_path / "cpu.json"
    result = subprocess.run(
        [bare_python, kit / "exitnas_runtime.py", "profile", kit, "--out", out]
        + ["--batch-sizes", "1", "4", "--warmup", "1", "--repeats", "2", "--passes", "2"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    profile = read_kit_profile(out, study_key="abc")
    assert profile.device.startswith("onnxruntime ") and "CPUExecutionProvider" in profile.device
    assert profile.host.threads == 1
    stages = sum(c.num_exits for c in configs)
    assert len(profile.timings) == 2 * stages
    assert {t.batch_size for t in profile.timings} == {1, 4}
    assert {t.config_key for t in profile.timings} == {c.key() for c in configs}
    assert all(t.median_ms > 0 for t in profile.timings)
    document = json.loads(out.read_text())
    assert document["runtime_detail"]["name"] == "onnxruntime"
    assert profile.runtime.startswith("onnxruntime ") and profile.runtime == profile.device
    # the runtime's cost beyond the stages, and the stand-in policy's per decision
    assert [o.batch_size for o in profile.overheads] == [1, 4]
    assert all(o.fixed_ms >= 0 and o.stage_ms >= 0 and o.policy_ms > 0 for o in profile.overheads)
    with pytest.raises(ProfileError, match="profiles study abc, not this study"):
        read_kit_profile(out, study_key="other")
    again = subprocess.run(
        [bare_python, kit / "exitnas_runtime.py", "profile", kit, "--out", out],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 2 and "exists" in again.stderr  # never replaced
    (kit / "kit.json").write_text((kit / "kit.json").read_text().replace("abc", "abd"))
    tampered = subprocess.run(
        [bare_python, kit / "exitnas_runtime.py", "profile", kit, "--out", tmp_path / "x.json"],
        capture_output=True,
        text=True,
    )
    assert tampered.returncode == 2 and "kit.json does not match manifest.json" in tampered.stderr


def test_kit_carries_the_profiler_beside_the_runtime(bare_python, supernet, tmp_path) -> None:
    model = supernet.extract(_tiny_config())
    kit = write_profile_kit([model], tmp_path / "kit", study_key="abc", image_size=16)
    files = json.loads((kit / "manifest.json").read_text())["files"]
    assert {"exitnas_runtime.py", PROFILER_FILE} <= set(files)
    assert (kit / PROFILER_FILE).read_bytes() == profiler_source().read_bytes()
    (kit / PROFILER_FILE).unlink()  # the runtime alone predicts, but cannot profile
    result = subprocess.run(
        [bare_python, kit / "exitnas_runtime.py", "profile", kit, "--out", tmp_path / "x.json"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "needs exitnas_profiler.py" in result.stderr


def test_measure_with_onnx_here(supernet) -> None:
    model = supernet.extract(_tiny_config())
    timings, overheads, runtime = measure_onnx_stage_latencies(
        [model], image_size=16, batch_sizes=(2,), warmup=0, repeats=1, passes=1
    )
    assert [t.stage for t in timings] == [0, 1]
    assert all(isinstance(t, StageTiming) and t.batch_size == 2 for t in timings)
    assert [o.batch_size for o in overheads] == [2] and runtime.startswith("onnxruntime ")
    profile = DeviceProfile.create(
        timings, device="onnx", study_key="k", threads=1, overheads=overheads, runtime=runtime
    )
    assert DeviceProfile.from_json(profile.to_json()) == profile
