"""The recipe ladder: where the supernet loses accuracy against a plain ViT, and what wins it back.

Every rung trains on the same training images, batches, schedule and seed, and scores the same
probe sub-networks on the validation split (issue: training recipe):

- ``a``: the plain timm ViT (benchmarks/plain_vit.py), trained alone;
- ``b``: the supernet trained on the standalone configuration alone (its last exit);
- ``c``: that configuration with an exit at every candidate layer, equal weights;
- ``d``: the sandwich as it was before the recipe (largest + smallest + 2 random sub-networks,
  the largest cascade the teacher, every exit weighted equally, heads trained jointly, students
  on the teacher alone from step 0, uniform sampling);
- ``e``-``j``: one recipe change each on top of ``d``;
- ``k``: every change together; ``l``: the same with the largest cascade as the teacher;
- ``m``-``o``: ``k`` with one more change each: no distillation (the study's defaults), no
  largest cascade, one random sub-network;
- ``p``: ``m`` with the standalone path trained alone for the first half of the epochs;
- ``w``: warm start: the supernet starts from rung ``a``'s ViT (``train_supernet(init=...)``)
  and trains ``--warm-epochs`` with the defaults; ``x``: rung ``a``'s ViT trained as long alone.

Probes (last exit, validation accuracy): the standalone configuration; each preset's main
configuration (RAViT: its longest cascade, CF-ViT: coarse-to-fine, SuperViT: the finest grid at
the lowest keep rate, Multi-Exit ViT: linear heads); the smallest configuration; the largest
cascade. Supernet rungs train through ``train_supernet`` into ``OUT/<rung>/``, so a stopped
ladder resumes where it stopped; a rung that finished is not trained again.

    # subset mode: rungs a-o took about 80 min on 2 cores in three processes of one thread
    # (benchmarks/RESULTS.md, "The training recipe"); w and x need rung a first
    python benchmarks/recipe_ladder.py studies/cifar10.yaml --train 5000 --epochs 4 \\
        --out runs/ladder --threads 1 --rungs a k e l c b
    # the full schedule:
    python benchmarks/recipe_ladder.py studies/cifar10.yaml --out runs/ladder-full
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from plain_vit import load_plain_vit, save_plain_vit, train_plain_vit

from exitnas.data import DataSplits, ImageSplit
from exitnas.search.objective import load_validation
from exitnas.spaces import SearchSpace, StudyConfig, SubnetConfig, load_study
from exitnas.spaces.presets import make_preset
from exitnas.supernet import load_supernet, train_supernet
from exitnas.supernet.evaluate import exit_accuracies, predict_exits

# the training section before the recipe (exitnas 0.x up to this ladder)
BEFORE = {
    "sandwich": ("largest", "smallest"),
    "teacher": "largest",
    "random_subnets": 2,
    "sampling": "uniform",
    "exit_weights": "equal",
    "head_training": "joint",
    "kd_ratio": 1.0,
    "distill_start_epochs": 0.0,
    "keep_warmup_epochs": 0.0,
}
ALONE = {
    **BEFORE,
    "sandwich": ("standalone",),
    "teacher": "standalone",
    "random_subnets": 0,
    "keep_warmup_epochs": 0.0,
}
# every change together
ALL = {
    "sandwich": ("standalone", "largest", "smallest"),
    "teacher": "standalone",
    "random_subnets": 2,
    "sampling": "search",
    "exit_weights": "depth",
    "head_training": "detached",
    "kd_ratio": 0.5,
    "distill_start_epochs": 1.0,
    "keep_warmup_epochs": 1.0,
}
RUNGS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "a": ("plain timm ViT, trained alone", None),
    "b": ("supernet, standalone config alone (last exit)", {**ALONE, "exit_weights": "last"}),
    "c": ("standalone config, exits at every candidate layer", ALONE),
    "d": ("sandwich before the recipe", BEFORE),
    "e": (
        "d + standalone on labels every step, the teacher",
        {**BEFORE, "sandwich": ("standalone", "largest", "smallest"), "teacher": "standalone"},
    ),
    "f": ("d + exit weights by depth", {**BEFORE, "exit_weights": "depth"}),
    "g": ("d + heads on detached features", {**BEFORE, "head_training": "detached"}),
    "h": (
        "d + students 0.5 labels / 0.5 teacher after epoch 1",
        {**BEFORE, "kd_ratio": 0.5, "distill_start_epochs": 1.0},
    ),
    "i": ("d + keep rates warm up over epoch 1", {**BEFORE, "keep_warmup_epochs": 1.0}),
    "j": ("d + sampling as the search", {**BEFORE, "sampling": "search"}),
    "k": ("all changes together", ALL),
    "l": ("k, the largest cascade the teacher", {**ALL, "teacher": "largest"}),
    # beyond k: what else the standalone path gives up to its neighbours
    "m": ("k, students on labels alone: the defaults", {**ALL, "kd_ratio": 0.0}),
    "n": ("k without the largest cascade", {**ALL, "sandwich": ("standalone", "smallest")}),
    "o": ("k with one random sub-network", {**ALL, "random_subnets": 1}),
    # the defaults, the standalone path trained alone for the first part of the epochs
    # (`standalone_share`: that part, as a share of the rung's epochs)
    "p": (
        "m, the first half of the epochs the standalone path alone",
        {**ALL, "kd_ratio": 0.0, "standalone_share": 0.5},
    ),
    "q": (
        "m, the first two thirds of the epochs the standalone path alone",
        {**ALL, "kd_ratio": 0.0, "standalone_share": 2 / 3},
    ),
    "r": (
        "p, the teacher (standalone) path's loss x 4 in the sandwich",
        {**ALL, "kd_ratio": 0.0, "standalone_share": 0.5, "teacher_weight": 4.0},
    ),
    # warm start (--warm-epochs more, a fresh schedule): from rung a's ViT
    "w": ("warm start: rung a's ViT + the defaults (supernet)", {}),
    "x": ("rung a's ViT trained alone as long as w", None),
}
WARM = ("w", "x")


def probes(space: SearchSpace) -> dict[str, SubnetConfig]:
    """The sub-networks every rung is scored on (only their last exits are read)."""

    def last_exit_only(config: SubnetConfig) -> SubnetConfig:
        *first, branch = config.branches
        return replace(config, branches=(*first, replace(branch, exits=branch.exits[-1:])))

    supervit = make_preset(space, "supervit").configs
    finest = max(c.branches[0].grid for c in supervit)
    found = {
        "standalone": last_exit_only(space.standalone()),
        "ravit": make_preset(space, "ravit").configs[-1],
        "cfvit": make_preset(space, "cfvit").configs[0],
        "supervit": min(
            (c for c in supervit if c.branches[0].grid == finest),
            key=lambda c: c.branches[0].keep_rate,
        ),
        "multi_exit_vit": last_exit_only(make_preset(space, "multi_exit_vit").configs[0]),
        "smallest": space.smallest(),
        "largest": space.largest(),
    }
    for config in found.values():
        space.check(config)
    return found


def subset(splits: DataSplits, n: int | None, seed: int) -> DataSplits:
    """The first ``n`` of a seeded permutation of the training split (all of it if None)."""
    if n is None or n >= len(splits.train):
        return splits
    rows = torch.from_numpy(np.random.default_rng([seed, 11]).permutation(len(splits.train))[:n])
    train = ImageSplit(splits.train.images[rows], splits.train.labels[rows])
    return replace(splits, train=train)


def run_rung(
    rung: str,
    study: StudyConfig,
    splits: DataSplits,
    out: Path,
    progress: bool,
    warm_epochs: int = 2,
    test: bool = False,
) -> dict[str, Any]:
    """Train one rung into ``out/<rung>`` (or read its finished result) and score its probes.

    Scores are validation accuracies; with ``test`` also test accuracies (reports only).
    """
    description, overrides = RUNGS[rung]
    folder = out / rung
    result_path = folder / "ladder.json"
    if result_path.is_file():
        done = json.loads(result_path.read_text())
        if not test or "test_accuracy" in done:
            return done
    splits_scored = {"val": splits.val, **({"test": splits.test} if test else {})}
    init = out / "a" / "vit.safetensors" if rung in WARM else None
    if init is not None and not init.is_file():
        raise SystemExit(f"rung {rung} starts from rung a's ViT: run rung a first ({init})")
    if rung in WARM:
        study = study.with_overrides(epochs=warm_epochs)
    folder.mkdir(parents=True, exist_ok=True)
    if overrides is None:
        epochs = study.training.epochs
        saved = folder / "vit.safetensors"
        if result_path.is_file() and saved.is_file():  # finished before: score it again
            model, seconds = load_plain_vit(saved, study.space), done["train_seconds"]
        else:
            model, seconds = train_plain_vit(study, splits, epochs, progress=progress, init=init)
            save_plain_vit(saved, model, study.space)
        scores = {
            split: {
                "standalone": exit_accuracies(
                    _plain_logits(model, data.images, splits.mean, splits.std), data.labels
                )[0]
            }
            for split, data in splits_scored.items()
        }
    else:
        settings = dict(overrides)
        if "standalone_share" in settings:
            share = settings.pop("standalone_share")
            settings["standalone_epochs"] = share * study.training.epochs
        trained = replace(study, training=replace(study.training, **settings))
        started = time.perf_counter()
        summary = train_supernet(trained, splits, folder, progress=progress, init=init)
        seconds = summary.seconds or time.perf_counter() - started
        model, _ = load_supernet(folder, trained)
        scores = {
            split: {
                name: exit_accuracies(
                    predict_exits(model, data.images, splits.mean, splits.std, config=config),
                    data.labels,
                )[-1]
                for name, config in probes(study.space).items()
            }
            for split, data in splits_scored.items()
        }
    result = {
        "rung": rung,
        "description": description,
        "overrides": overrides,
        "train_images": len(splits.train),
        "epochs": study.training.epochs,
        "train_seconds": round(seconds, 1),
        **{
            f"{split}_accuracy": {k: round(v, 4) for k, v in found.items()}
            for split, found in scores.items()
        },
    }
    result_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


@torch.no_grad()
def _plain_logits(model, images, mean, std, batch: int = 500) -> np.ndarray:
    from exitnas.supernet.batches import normalize

    chunks = [
        model(normalize(images[i : i + batch], mean, std)) for i in range(0, len(images), batch)
    ]
    return torch.cat(chunks)[None].numpy()


def table(results: list[dict[str, Any]], split: str = "val") -> str:
    """The ladder as a markdown table (``split`` accuracy of each probe's last exit).

    Rungs are described as this script defines them; a rung trained with other settings than
    it now names is marked.
    """
    names = ["standalone", "ravit", "cfvit", "supervit", "multi_exit_vit", "smallest", "largest"]
    lines = [
        "| rung | recipe | train s | " + " | ".join(names) + " |",
        "|---|---|---:|" + "---:|" * len(names),
    ]
    for r in results:
        if f"{split}_accuracy" not in r:
            continue
        description, overrides = RUNGS.get(r["rung"], (r["description"], r["overrides"]))
        if _plain(overrides) != _plain(r["overrides"]):
            description += " (trained with other settings: see its ladder.json)"
        scores = r[f"{split}_accuracy"]
        cells = [f"{scores[n]:.4f}" if n in scores else "" for n in names]
        lines.append(
            f"| {r['rung']} | {description} | {r['train_seconds']:.0f} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def _plain(overrides: dict[str, Any] | None) -> Any:
    return json.loads(json.dumps(overrides))  # tuples as lists, as stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path)
    parser.add_argument("--data", help="overrides data.path")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, help="train on this many training images only")
    parser.add_argument("--epochs", type=int, help="override training.epochs")
    parser.add_argument(
        "--warm-epochs", type=int, default=2, help="epochs of the warm-start rungs w and x"
    )
    parser.add_argument("--rungs", nargs="+", choices=sorted(RUNGS), default=sorted(RUNGS))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--test", action="store_true", help="also score every probe on the test split (reports)"
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    study = load_study(args.study)
    # the rungs start from no standalone phase (rung p sets one), at any --epochs
    study = replace(study, training=replace(study.training, standalone_epochs=0.0))
    study = study.with_overrides(epochs=args.epochs)
    study = study.with_data_path(args.data or None)
    splits = subset(load_validation(study), args.train, study.seed)
    results = []
    for rung in args.rungs:
        results.append(
            run_rung(rung, study, splits, args.out, not args.quiet, args.warm_epochs, args.test)
        )
        print(json.dumps(results[-1]), flush=True)
    done = [
        json.loads(p.read_text()) for p in sorted(args.out.glob("*/ladder.json")) if p.is_file()
    ]
    text = "Validation accuracy\n\n" + table(done)
    if any("test_accuracy" in r for r in done):
        text += "\n\nTest accuracy\n\n" + table(done, "test")
    (args.out / "ladder.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
