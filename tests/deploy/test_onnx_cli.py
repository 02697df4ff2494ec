"""The command line of ONNX deployment: ``export --format``, ``profile --kit / --import`` and
``profile --runtime onnx``, on the tiny run after a search, with the learned policy fitted."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

import exitnas
from exitnas.cli import build_parser, main
from exitnas.deploy import load_onnx
from exitnas.runs import Run

FAST = ("--repeats", "2", "--warmup", "1", "--passes", "2", "--batch-sizes", "1,4")


def _cli(*argv: str) -> tuple[int, str]:
    args = build_parser().parse_args(list(argv))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = args.handler(args)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def searched(searched_copy):
    """The session's searched run in a database of its own, its policy fitted."""
    study, run, url = searched_copy
    base = ("--study", str(run), "--storage", url)
    assert _cli("policy", "fit", *base, "--estimator", "logistic")[0] == 0
    return study, run, url


def test_export_format_onnx_runs_as_the_torch_bundle(searched, tmp_path: Path) -> None:
    study, run, url = searched
    base = ("export", "--study", str(run), "--storage", url, "--budget-mflops", "1000")
    for rule in ("max_softmax", "learned"):
        both, only = tmp_path / f"{rule}-both", tmp_path / f"{rule}-onnx"
        code, line = _cli(*base, "--rule", rule, "--out", str(both), "--format", "both")
        assert code == 0 and "(safetensors + ONNX)" in line
        assert _cli(*base, "--rule", rule, "--out", str(only), "--format", "onnx")[0] == 0
        assert (both / "weights.safetensors").is_file() and (both / "onnx").is_dir()
        assert not (only / "weights.safetensors").exists()
        assert (only / "exitnas_runtime.py").is_file()
        splits = Run.open(run, url).splits
        images = splits.val.images.numpy()
        want = exitnas.load(both).predict(images)
        got = load_onnx(only).predict(images)
        np.testing.assert_array_equal(got.exits, want.exits)
        np.testing.assert_array_equal(got.labels, want.labels)
        np.testing.assert_array_equal(got.flops, want.flops)
        meta = json.loads((only / "config.json").read_text())
        assert meta["rule"]["rule"] == rule
        # what the bundle states is what the ONNX runtime does on the validation split
        assert float(np.mean(got.labels == splits.val.labels.numpy())) == meta["val_accuracy"]
    nothing = tmp_path / "x"  # an impossible budget: exit code 2, nothing written
    tiny = ("export", "--study", str(run), "--storage", url, "--budget-mflops", "1e-9")
    assert main([*tiny, "--out", str(nothing), "--format", "onnx"]) == 2
    assert not nothing.exists() and not list(tmp_path.glob(".x.*"))


def test_profile_kit_comes_back_and_answers_queries(
    searched, bare_python, tmp_path: Path, capsys
) -> None:
    study, run, url = searched
    base = ("--study", str(run), "--storage", url)
    kit = tmp_path / "kit"
    code, line = _cli("profile", *base, "--device", "edge", "--kit", str(kit), "--configs", "2")
    assert code == 0 and "exitnas_runtime.py profile" in line
    measured = tmp_path / "edge.json"
    result = subprocess.run(
        [bare_python, kit / "exitnas_runtime.py", "profile", kit, "--out", measured]
        + ["--batch-sizes", "1", "32", "--warmup", "1", "--repeats", "2", "--passes", "2"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert _cli("profile", *base, "--device", "edge", "--import", str(measured))[0] == 0
    code, out = _cli("policy", "query", *base, "--device", "edge", "--budget-ms", "1000")
    answer = json.loads(out)
    assert code == 0 and answer["device"] == "edge"
    assert answer["expected"]["latency_ms"] > 0
    assert answer["latency_source"] in ("measured", "measured+predicted")
    assert answer["device_runtime"].startswith("onnxruntime ")
    # a kit profile of another study is refused: one line, exit code 2, nothing stored
    other = json.loads(measured.read_text())
    other["study_key"] = "0" * len(other["study_key"])
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(other))
    capsys.readouterr()
    argv = ["profile", *base, "--device", "edge2", "--import", str(foreign)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "another study" in err
    assert main(["policy", "query", *base, "--device", "edge2", "--budget-ms", "1000"]) == 2


def test_profile_runtime_onnx_measures_here(searched) -> None:
    study, run, url = searched
    base = ("--study", str(run), "--storage", url)
    argv = ("profile", *base, "--device", "ort", "--runtime", "onnx", "--configs", "1", *FAST)
    code, line = _cli(*argv)
    assert code == 0 and "with onnx" in line
    code, out = _cli("policy", "query", *base, "--device", "ort", "--budget-ms", "1000")
    assert code == 0 and json.loads(out)["expected"]["latency_ms"] > 0
