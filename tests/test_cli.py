"""The command line: the quickstart with a tiny budget, bad input, kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from exitnas.cli import main
from exitnas.faults import KILL_ENV
from exitnas.supernet.checkpoint import load_weights

ROOT = Path(__file__).parents[1]
QUICKSTART = ROOT / "studies" / "quickstart.yaml"


def test_train_quickstart_with_a_tiny_budget(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", str(QUICKSTART), "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    assert "supernet trained" in capsys.readouterr().out
    assert (out / "supernet.safetensors").is_file()
    description = json.loads((out / "supernet.json").read_text())
    assert description["study"]["name"] == "quickstart"
    assert description["study"]["training"]["epochs"] == 1
    assert description["training"]["complete"] is True
    assert description["supernet"]["heads"] == 3 * 3 * 8  # branches x exit layers x head types


def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "exitnas.cli", *args], capture_output=True, text=True, **kwargs
    )


def test_bad_study_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    data = yaml.safe_load(QUICKSTART.read_text())
    data["space"]["patch_sizes"] = [3]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = run_cli("train", str(bad), "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "space.patch_sizes: 3 divides none of the resolutions" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "missing.yaml"], "study file not found: missing.yaml"),
        (["train", str(QUICKSTART), "--epochs", "0"], "epochs: 0 must be at least 1"),
    ],
)
def test_user_errors_exit_2(args, message, capsys) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_out_that_is_a_file_exits_2_and_is_kept(tmp_path: Path, capsys) -> None:
    out = tmp_path / "taken"
    out.write_text("precious")
    assert main(["train", str(QUICKSTART), "--out", str(out)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert out.read_text() == "precious"


def test_missing_data_path_exits_2(tmp_path: Path, capsys) -> None:
    study = tmp_path / "folder.yaml"
    data = yaml.safe_load((ROOT / "studies" / "cifar10.yaml").read_text())
    study.write_text(yaml.safe_dump(data))
    assert main(["train", str(study), "--data", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err


TRAIN_ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def train_command(path: Path, *extra: str) -> list[str]:
    """``exitnas train PATH --quiet [extra] --out`` (the folder goes last)."""
    return [sys.executable, "-m", "exitnas.cli", "train", str(path), "--quiet", *extra, "--out"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """``weights(path, *extra)``: the weights of an uninterrupted ``exitnas train`` of that
    study file, trained once per module (the kill tests compare resumed runs with it)."""
    runs: dict[tuple, dict] = {}

    def weights(path: Path, *extra: str) -> dict:
        key = (path.read_text(), extra)
        if key not in runs:
            out = tmp_path_factory.mktemp("straight")
            command = [*train_command(path, *extra), str(out)]
            assert subprocess.run(command, env=TRAIN_ENV).returncode == 0
            runs[key] = load_weights(out / "supernet.safetensors")[0]
        return runs[key]

    return weights


def test_kill_9_then_resume_matches_an_uninterrupted_run(
    study, tmp_path: Path, uninterrupted
) -> None:
    """SIGKILL with the second checkpoint written to its temporary file but not renamed (the
    ``checkpoint-temp-written`` kill point): the first checkpoint is intact, and running the same
    command again finishes the schedule with an uninterrupted run's weights."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study.to_dict()))
    killed = tmp_path / "killed"
    command = [*train_command(path, "--epochs", "1"), str(killed)]
    kill = {**TRAIN_ENV, KILL_ENV: "checkpoint-temp-written:2"}
    assert subprocess.run(command, env=kill).returncode == -signal.SIGKILL
    assert len(list(killed.glob(".checkpoint.safetensors.*.tmp"))) == 1  # written, not renamed
    _, meta = load_weights(killed / "checkpoint.safetensors")  # the first one, whole
    assert meta["step"] == study.training.checkpoint_every
    description = json.loads((killed / "supernet.json").read_text())
    assert description["training"]["complete"] is False
    assert subprocess.run(command, env=TRAIN_ENV).returncode == 0
    assert not list(killed.glob(".*.tmp"))
    a = uninterrupted(path, "--epochs", "1")
    b = load_weights(killed / "supernet.safetensors")[0]
    for name in a:
        torch.testing.assert_close(b[name], a[name])


def test_kill_9_at_random_points_every_resume_completes(
    study, tmp_path: Path, uninterrupted
) -> None:
    """Three SIGKILLs at random moments of one run (seeded): after each the folder holds a
    readable checkpoint or none (never a torn file), and the resumed run ends with the weights of
    an uninterrupted one."""
    import random

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study.to_dict()))
    killed = tmp_path / "killed"
    env = TRAIN_ENV
    command = train_command(path)
    draw = random.Random(20261122)
    steps = []
    for _ in range(3):
        started = time.time()
        process = subprocess.Popen([*command, str(killed)], env=env)
        checkpoint = killed / "checkpoint.safetensors"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if checkpoint.exists() and checkpoint.stat().st_mtime > started:
                break  # training under way in this process: kill at a random moment after
            time.sleep(0.02)
        time.sleep(draw.uniform(0.0, 1.0))
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        if (killed / "checkpoint.safetensors").exists():
            _, meta = load_weights(killed / "checkpoint.safetensors")  # never torn
            steps.append(int(meta["step"]))
        assert process.returncode == -signal.SIGKILL, "training ended before the kill"
    assert steps == sorted(steps) and steps, "no checkpoint was reached before the kills"
    assert subprocess.run([*command, str(killed)], env=env).returncode == 0
    assert not list(killed.glob("*.tmp*"))
    a = uninterrupted(path)
    b = load_weights(killed / "supernet.safetensors")[0]
    for name in a:
        torch.testing.assert_close(b[name], a[name])


def test_search_cli_adds_trials_and_resumes(trained_run, tmp_path: Path, capsys) -> None:
    study, run = trained_run
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study.to_dict()))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["search", str(path), "--run", str(run), "--storage", url, "--quiet"]
    assert main([*args, "--trials", "4", "--sampler", "random"]) == 0
    assert "+4 trials (4 complete)" in capsys.readouterr().out
    assert main([*args, "--trials", "3"]) == 0
    assert "+3 trials (7 complete)" in capsys.readouterr().out


def test_search_cli_bad_storage_exits_2(trained_run, tmp_path: Path, capsys) -> None:
    study, run = trained_run
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study.to_dict()))
    code = main(["search", str(path), "--run", str(run), "--storage", "nosuch://", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot open storage 'nosuch://'" in err and err.count("\n") == 1


HEAVY = ("torch", "timm", "optuna", "sqlalchemy", "plotly", "sklearn", "ray", "skops")


def test_start_up_imports_no_heavy_library(tmp_path: Path) -> None:
    """``exitnas --help`` and a study file's mistake import none of the heavy libraries (they
    cost seconds): the parser is built from light modules, and a study is read first."""
    data = yaml.safe_load(QUICKSTART.read_text())
    data["training"]["epochz"] = data["training"].pop("epochs")
    bad = tmp_path / "typo.yaml"
    bad.write_text(yaml.safe_dump(data))
    script = (
        "import sys\n"
        "import exitnas.cli\n"
        "exitnas.cli.build_parser()\n"
        "for command in ('train', 'search', 'run'):\n"
        f"    assert exitnas.cli.main([command, {str(bad)!r}]) == 2\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert result.stderr.count("unknown key 'epochz'") == 3


@pytest.mark.parametrize(
    "package", ["data", "deploy", "devices", "exits", "reports", "search", "storage", "supernet"]
)
def test_lazy_packages_serve_every_public_name(package: str) -> None:
    import importlib

    module = importlib.import_module(f"exitnas.{package}")
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError):
        module.no_such_name  # noqa: B018


INTERRUPT_ON_THIRD_TRIAL = """
import sys

from exitnas.search import objective

calls = []
evaluate = objective.SearchObjective.__call__


def interrupted(self, trial):
    calls.append(trial.number)
    if len(calls) == 3:
        raise KeyboardInterrupt  # as Ctrl-C would, in the middle of a trial
    return evaluate(self, trial)


objective.SearchObjective.__call__ = interrupted
from exitnas.cli import main

sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_during_search_is_one_line_and_resumes(trained_run, tmp_path: Path) -> None:
    import optuna

    study, run = trained_run
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study.to_dict()))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    args = ["search", str(path), "--run", str(run), "--storage", url, "--quiet"]
    result = subprocess.run(
        [sys.executable, "-c", INTERRUPT_ON_THIRD_TRIAL, *args, "--trials", "5"],
        capture_output=True,
        text=True,
        env=TRAIN_ENV,
    )
    assert result.returncode == 130, result.stderr
    assert result.stderr.splitlines() == [
        "exitnas: search interrupted at trial 2; run it again with --until 5 instead of "
        "--trials to resume"
    ]
    states = [t.state for t in optuna.load_study(study_name="tiny", storage=url).trials]
    assert states == [optuna.trial.TrialState.COMPLETE] * 2 + [optuna.trial.TrialState.FAIL]
    assert main([*args, "--until", "5"]) == 0  # the hint's command finishes the study
    states = [t.state for t in optuna.load_study(study_name="tiny", storage=url).trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 5
    assert optuna.trial.TrialState.RUNNING not in states


def test_ctrl_c_during_the_search_of_exitnas_run_is_one_line(trained_run, tmp_path) -> None:
    import shutil

    study, trained = trained_run
    run = tmp_path / "run"
    shutil.copytree(trained, run)  # trained already: exitnas run goes on with the search
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(study.to_dict()))
    args = ["run", str(path), "--out", str(run), "--trials", "5", "--quiet"]
    result = subprocess.run(
        [sys.executable, "-c", INTERRUPT_ON_THIRD_TRIAL, *args],
        capture_output=True,
        text=True,
        env=TRAIN_ENV,
    )
    assert result.returncode == 130, result.stderr
    assert result.stderr.splitlines() == [
        "exitnas: search interrupted at trial 2; run the same command again to resume"
    ]
