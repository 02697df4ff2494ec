"""Study files: one YAML file names the data, the search space and the training budget."""

from __future__ import annotations

import hashlib
import json
import math
import os
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from exitnas.errors import ConfigError
from exitnas.spaces._parse import from_dict, to_dict
from exitnas.spaces.presets import make_preset
from exitnas.spaces.space import SearchSpace

__all__ = [
    "DATASETS",
    "DataConfig",
    "SearchConfig",
    "StudyConfig",
    "TrainingConfig",
    "load_study",
]

DATASETS = ("digits", "cifar10", "folder")  # exitnas.data.load_splits reads each of them


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how the validation split is carved."""

    dataset: str = "digits"  # digits (built in) | cifar10 | folder (class-per-folder tree or tar)
    path: str | None = None  # data location for cifar10/folder; `--data` on the CLI overrides it
    image_size: int = 16  # images are resized once to this size (the largest branch resolution)
    val_fraction: float = 0.1  # share of the training data held out for search and calibration
    download: bool = False  # cifar10 without a path: let torchvision download it

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset: {self.dataset!r} is not allowed; allowed: {DATASETS}")
        if self.image_size < 1:
            raise ConfigError(f"image_size: {self.image_size} must be positive")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction: {self.val_fraction} must be in (0, 1)")


SandwichPath = Literal["standalone", "largest", "smallest"]
Sampling = Literal["search", "uniform"]
ExitWeights = Literal["equal", "depth", "last"]
HeadTraining = Literal["joint", "detached"]
SANDWICH_PATHS: tuple[str, ...] = typing.get_args(SandwichPath)
# designs whose configs a new search evaluates first: the plain ViT and the presets
SeedDesign = Literal["standalone", "ravit", "cfvit", "supervit", "multi_exit_vit"]
# training fields added after runs were trained without them, and their defaults
_ADDED_LATER = {"teacher_weight": 1.0}


@dataclass(frozen=True)
class TrainingConfig:
    """How the supernet is trained once (sandwich rule with in-place distillation)."""

    epochs: int = 30  # passes over the training split
    batch_size: int = 64  # images per step
    lr: float = 1e-3  # peak AdamW learning rate (timm optimizer factory)
    min_lr: float = 1e-5  # end of the cosine schedule
    warmup_epochs: float = 1.0  # linear warm-up, in epochs (stepped per update)
    weight_decay: float = 0.05
    label_smoothing: float = 0.1  # for the hard-label losses
    # -- the recipe (exitnas.supernet.recipe; benchmarks/recipe_ladder.py measures each part) --
    # sub-networks trained every step besides the random ones: `standalone` (one branch on the
    # finest grid at full depth, an exit at every exit layer), `largest` (the longest cascade of
    # the largest grids), `smallest` (the cheapest config)
    sandwich: tuple[SandwichPath, ...] = ("standalone", "largest", "smallest")
    # the first epochs train the standalone path alone, the sandwich after (once-for-all trains
    # the full network before shrinking it); the keep-rate warm-up starts with the sandwich
    standalone_epochs: float = 0.0
    teacher: SandwichPath = "standalone"  # learns from labels alone; the others distil from it
    # the teacher path's loss weight in a sandwich step, against 1 for every other path: AdamW
    # normalises the summed gradient, so with n other paths the teacher steers w / (w + n) of it
    teacher_weight: float = 1.0
    random_subnets: int = 2  # random sub-networks per step, drawn as `sampling` says
    sampling: Sampling = "search"  # search: as the search's random trials
    # how the exits of one sub-network share its loss: equal (mean), depth (exit i of n weighs
    # i/n, PABEE), last (only the last exit)
    exit_weights: ExitWeights = "depth"
    # joint: a sub-network's heads train through the backbone; detached: only each sub-network's
    # last exit trains the backbone, and every head type at every exit layer it passes trains
    # on detached features (LGViT, DeeBERT)
    head_training: HeadTraining = "detached"
    # students' loss: (1 - kd_ratio) x labels + kd_ratio x teacher (OFA's kd_ratio). 0 by default:
    # on the recipe ladder, distilling from the co-trained teacher cost the students accuracy
    # (benchmarks/RESULTS.md, "The training recipe")
    kd_ratio: float = 0.0
    distill_start_epochs: float = 1.0  # students learn from labels alone before this epoch
    distill_temperature: float = 1.0  # in-place distillation temperature
    keep_warmup_epochs: float = 1.0  # keep rates fall linearly from 1.0 over these epochs (EViT)
    crop_padding: int = 0  # random-crop augmentation: pad by this many pixels, crop back
    hflip: bool = False  # random horizontal flips (off for digits, on for natural images)
    checkpoint_every: int = 100  # steps between checkpoints (also written at every epoch end)
    # torch's intra-op threads (--threads overrides it); 0: automatic, OMP_NUM_THREADS if set,
    # else the CPUs shared among the running exitnas processes (exitnas.threads)
    num_threads: int = 0
    device: str = "cpu"  # torch device, e.g. cpu or cuda

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: {getattr(self, name)} must be at least 1")
        if self.standalone_epochs >= self.epochs:
            raise ConfigError(
                f"standalone_epochs: {self.standalone_epochs} leaves no epoch for the sandwich; "
                f"allowed: less than epochs ({self.epochs})"
            )
        if self.random_subnets < 0:
            raise ConfigError(f"random_subnets: {self.random_subnets} must not be negative")
        for path in self.sandwich:
            if path not in SANDWICH_PATHS:
                raise ConfigError(f"sandwich: {path!r} is not allowed; allowed: {SANDWICH_PATHS}")
        if len(set(self.sandwich)) != len(self.sandwich):
            raise ConfigError(f"sandwich: duplicate values in {list(self.sandwich)}")
        if self.teacher not in self.sandwich:
            raise ConfigError(
                f"teacher: {self.teacher!r} is not trained every step; allowed: the sandwich "
                f"{list(self.sandwich)}"
            )
        choices = {"sampling": Sampling, "exit_weights": ExitWeights, "head_training": HeadTraining}
        for name, literal in choices.items():
            allowed = typing.get_args(literal)
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"{name}: {getattr(self, name)!r} is not allowed; allowed: {allowed}"
                )
        if not (math.isfinite(self.teacher_weight) and self.teacher_weight > 0):
            raise ConfigError(f"teacher_weight: {self.teacher_weight} must be a positive number")
        if not 0.0 <= self.kd_ratio <= 1.0:
            raise ConfigError(f"kd_ratio: {self.kd_ratio} must be in [0, 1]")
        for name in (
            "min_lr",
            "warmup_epochs",
            "weight_decay",
            "distill_start_epochs",
            "keep_warmup_epochs",
            "standalone_epochs",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: {getattr(self, name)} must not be negative")
        if self.min_lr > self.lr:
            raise ConfigError(f"min_lr: {self.min_lr} must not exceed lr {self.lr}")
        try:
            if self.device != "cpu":  # torch only where a study asks for another device
                import torch

                torch.device(self.device)
        except RuntimeError:
            raise ConfigError(
                f"device: {self.device!r} is not a torch device; e.g. cpu, cuda, cuda:1, mps"
            ) from None
        for name in ("lr", "distill_temperature"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: {getattr(self, name)} must be positive")
        if self.crop_padding < 0 or self.num_threads < 0:
            raise ConfigError("crop_padding and num_threads must not be negative")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing: {self.label_smoothing} must be in [0, 1)")


SAMPLERS = ("nsga2", "tpe", "random")
EXIT_RULES = ("max_softmax", "entropy", "margin")


@dataclass(frozen=True)
class SearchConfig:
    """How the multi-objective search over sub-networks and exit thresholds runs."""

    sampler: str = "nsga2"  # nsga2 (default) | tpe (multi-objective) | random
    rules: tuple[str, ...] = ("max_softmax",)  # exit rules searched over (categorical if > 1)
    trials: int = 500  # trials added by one `exitnas search` (--trials overrides)
    population_size: int = 50  # NSGA-II generation size
    storage: str | None = None  # SQLAlchemy URL; default sqlite:///runs/<name>/study.db
    budget_mflops: float | None = None  # `exitnas run`'s bundle: expected MFLOPs per image
    budget_ms: float | None = None  # ... or expected ms per image on the profiled machine
    heartbeat_seconds: int = 10  # a trial whose worker is silent 2x this long is failed, retried
    # designs a new study evaluates first (Optuna's enqueue_trial), then the sampler takes
    # over: null (default) = the plain ViT's config and every preset the space can make; []
    # = none
    seeds: tuple[SeedDesign, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("budget_mflops", "budget_ms"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name}: {value} must be a positive number")
        if self.budget_mflops is not None and self.budget_ms is not None:
            raise ConfigError("budget_mflops and budget_ms: give at most one of them")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler: {self.sampler!r} is not allowed; allowed: {SAMPLERS}")
        if not self.rules:
            raise ConfigError(f"rules: needs at least one of {EXIT_RULES}")
        for rule in self.rules:
            if rule not in EXIT_RULES:
                raise ConfigError(f"rules: {rule!r} is not allowed; allowed: {EXIT_RULES}")
        if self.heartbeat_seconds < 1:
            raise ConfigError(f"heartbeat_seconds: {self.heartbeat_seconds} must be at least 1")
        if self.trials < 1 or self.population_size < 2:
            raise ConfigError("trials must be at least 1 and population_size at least 2")


@dataclass(frozen=True)
class StudyConfig:
    """A whole study: data, space and training budget, under one name and seed."""

    name: str  # runs go to runs/<name>/ by default
    space: SearchSpace
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    seed: int = 0  # every random choice of the study derives from it

    def __post_init__(self) -> None:
        if (
            not self.name
            or self.name.startswith(".")
            or not all(c.isalnum() or c in "-_." for c in self.name)
        ):
            raise ConfigError(
                f"name: {self.name!r} must be letters, digits, '-', '_' or '.', "
                "not starting with '.'"
            )
        if self.seed < 0:
            raise ConfigError(f"seed: {self.seed} must not be negative")
        if self.data.image_size < self.space.max_resolution:
            raise ConfigError(
                f"data.image_size: {self.data.image_size} is smaller than the largest branch "
                f"resolution {self.space.max_resolution}; use at least that"
            )
        for design in self.search.seeds or ():
            if design != "standalone":
                try:
                    make_preset(self.space, design)
                except ConfigError as err:
                    raise ConfigError(f"search.seeds: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "study") -> StudyConfig:
        return from_dict(cls, data, where)

    def key(self) -> str:
        """Stable hash of everything that shapes the trained weights.

        Checkpoints record it to refuse resuming a different study. Where the data lives,
        which device or thread count runs the training, how often it checkpoints and how the
        search runs are left out: moving the data or resuming on another machine is allowed.
        """
        text = json.dumps(self._key_fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def key_differences(self, other: StudyConfig, limit: int = 3) -> str:
        """What makes ``other``'s key differ from this one's, e.g. ``space.backbone.embed_dim:
        32 here, 48 there`` (at most ``limit`` fields)."""
        changes = _differences(self._key_fields(), other._key_fields(), "")
        more = f" and {len(changes) - limit} more" if len(changes) > limit else ""
        return "; ".join(changes[:limit]) + more

    def _key_fields(self) -> dict[str, Any]:
        data = self.to_dict()
        data.pop("search")
        for name in ("path", "download"):
            data["data"].pop(name)
        for name in ("device", "num_threads", "checkpoint_every"):
            data["training"].pop(name)
        for name, default in _ADDED_LATER.items():  # at its default, a run trained before the
            if data["training"][name] == default:  # field existed keeps its key
                data["training"].pop(name)
        return data

    def with_overrides(self, **training: Any) -> StudyConfig:
        """A copy with some training fields replaced (``None`` values are ignored)."""
        changes = {k: v for k, v in training.items() if v is not None}
        if not changes:
            return self
        try:
            return replace(self, training=replace(self.training, **changes))
        except ConfigError as err:
            raise ConfigError(f"training.{err}") from None

    def with_data_path(self, path: str | os.PathLike | None) -> StudyConfig:
        """A copy whose images live at ``path`` (``--data``); itself when ``path`` is None.
        The data's path is not part of :meth:`key`: a moved data set is the same study."""
        if path is None:
            return self
        return replace(self, data=replace(self.data, path=str(path)))


def load_study(path: str | os.PathLike) -> StudyConfig:
    """Read and validate a study YAML file.

    Raises:
        ConfigError: the file is missing, is not valid YAML, or any field is invalid; the
            message names the file and the field.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot be read as a UTF-8 text file ({err})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from None
    try:
        return StudyConfig.from_dict(data, where="study")
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def _differences(a: Any, b: Any, where: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for name in sorted(set(a) | set(b)):
            found += _differences(a.get(name), b.get(name), f"{where}.{name}" if where else name)
        return found
    return [] if a == b else [f"{where}: {a!r} here, {b!r} there"]
