"""Search spaces, sub-network configs and study files."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from exitnas.errors import ConfigError
from exitnas.spaces import (
    BackboneSpace,
    BranchConfig,
    ExitConfig,
    SearchSpace,
    StudyConfig,
    SubnetConfig,
    load_study,
)

STUDIES = Path(__file__).parents[2] / "studies"


def branch(resolution=16, patch=4, layers=(2,), head="linear", **kwargs) -> BranchConfig:
    return BranchConfig(resolution, patch, tuple(ExitConfig(x, head) for x in layers), **kwargs)


def test_sampled_configs_are_valid_and_cover_the_space(space: SearchSpace, rng) -> None:
    configs = [space.sample(rng) for _ in range(300)]
    for config in configs:
        space.check(config)
    assert {len(c.branches) for c in configs} == {1, 2, 3}
    assert {e.head for c in configs for _, e in c.exits} == set(space.head_types)
    assert {b.refine_fraction for c in configs for b in c.branches} == {None, 0.5, 1.0}
    assert {b.keep_rate for c in configs for b in c.branches} == {0.5, 1.0}
    assert {c.reuse for c in configs} == {True, False}


def test_sampling_is_reproducible(space: SearchSpace) -> None:
    first = [space.sample(np.random.default_rng(3)) for _ in range(5)]
    again = [space.sample(np.random.default_rng(3)) for _ in range(5)]
    assert first == again


def test_largest_and_smallest(space: SearchSpace) -> None:
    largest, smallest = space.largest(), space.smallest()
    assert [(b.resolution, b.patch_size) for b in largest.branches] == [(8, 4), (16, 4), (16, 2)]
    assert all(len(b.exits) == len(space.exit_layers) for b in largest.branches)
    assert len(smallest.branches) == 1 and smallest.branches[0].grid == 2
    space.check(largest)
    space.check(smallest)


def test_config_round_trips_and_hashes(space: SearchSpace, rng) -> None:
    config = space.sample(rng)
    assert SubnetConfig.from_json(config.to_json()) == config
    assert SubnetConfig.from_dict(config.to_dict()).key() == config.key()
    assert hash(config) == hash(SubnetConfig.from_json(config.to_json()))
    assert len({space.sample(rng).key() for _ in range(50)}) > 40


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: branch(patch=3), "patch_size: 3 does not divide resolution 16"),
        (lambda: branch(layers=(3, 2)), "strictly increasing"),
        (lambda: branch(keep_rate=1.5), "keep_rate"),
        (lambda: ExitConfig(2, "conv"), "allowed values"),
        (lambda: SubnetConfig((branch(16, 4), branch(8, 4))), "token grids must grow"),
        (lambda: SubnetConfig((branch(8, 2, refine_fraction=0.5),)), "nothing to refine"),
        (
            lambda: SubnetConfig((branch(12, 4), branch(16, 4, refine_fraction=0.5))),
            "not a multiple",
        ),
    ],
)
def test_invalid_configs_name_the_field(build, message) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


def test_space_check_names_field_and_allowed_values(space: SearchSpace) -> None:
    config = SubnetConfig((branch(16, 4, layers=(1,)),))
    expected = r"branches\[0\].exits\[0\].layer: 1 .* allowed: \[2, 3, 4\]"
    with pytest.raises(ConfigError, match=expected):
        space.check(config)
    with pytest.raises(ConfigError, match=r"resolution: 32 .*allowed: \[8, 16\]"):
        space.check(SubnetConfig((branch(32, 4),)))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"exit_layers": (2, 5)}, r"exit_layers: 5 is not allowed; allowed: 1..4"),
        ({"resolutions": (16, 8)}, "strictly increasing"),
        ({"resolutions": (7, 16)}, r"resolutions: no patch size in \[2, 4\] divides 7"),
        ({"head_types": ("linear", "transformer")}, "transformer"),
        ({"keep_rates": (0.0,)}, r"allowed: \(0, 1\]"),
        ({"max_branches": 4}, "allowed: 1, 2, 3"),
        ({"patch_sizes": (2, 3, 4)}, r"patch_sizes: 3 divides none of the resolutions"),
        ({"exit_layers": (4, 2)}, "exit_layers: must be increasing"),
        ({"keep_layers": ()}, "need keep_layers"),
    ],
)
def test_invalid_spaces(space: SearchSpace, changes, message) -> None:
    with pytest.raises(ConfigError, match=message):
        replace(space, **changes)


def test_backbone_heads_must_divide_width() -> None:
    with pytest.raises(ConfigError, match="num_heads: 5 does not divide embed_dim 32"):
        BackboneSpace(embed_dim=32, num_heads=5)


@pytest.mark.parametrize("name", ["quickstart.yaml", "cifar10.yaml"])
def test_shipped_studies_load(name: str) -> None:
    study = load_study(STUDIES / name)
    assert StudyConfig.from_dict(study.to_dict()) == study
    study.space.check(study.space.largest())


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def quickstart() -> dict:
    return yaml.safe_load((STUDIES / "quickstart.yaml").read_text())


def test_unknown_key_names_the_allowed_keys(tmp_path: Path) -> None:
    data = quickstart()
    data["space"]["backbone"]["embed_dm"] = 64
    with pytest.raises(ConfigError) as err:
        load_study(write(tmp_path, data))
    text = str(err.value)
    assert "study.space.backbone: unknown key 'embed_dm'" in text
    assert "embed_dim" in text and "\n" not in text


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["space"].update(exit_layers=[2, 9]), r"study.space.exit_layers: 9"),
        (lambda d: d["space"].update(patch_sizes=[3]), r"space.patch_sizes: 3 divides none"),
        (lambda d: d["data"].update(dataset="mnist"), r"study.data.dataset: 'mnist'"),
        (lambda d: d["training"].update(epochs="ten"), r"study.training.epochs: expected an"),
        (lambda d: d.pop("space"), r"missing key 'space'"),
        (lambda d: d["data"].update(image_size=8), r"smaller than the largest branch"),
        (lambda d: d.update(name=".."), r"study.name: '..' must be"),
        (lambda d: d.update(seed=-1), r"study.seed: -1 must not be negative"),
        (lambda d: d["training"].update(device="gpu"), r"training.device: 'gpu' is not a torch"),
        (lambda d: d["training"].update(min_lr=1.0), r"training.min_lr: 1.0 must not exceed"),
        (lambda d: d["training"].update(random_subnets=-1), r"random_subnets: -1 must not be"),
        (lambda d: d["training"].update(sandwich=["huge"]), r"training.sandwich\[0\]: 'huge'"),
        (lambda d: d["training"].update(sandwich=["largest"]), r"teacher: 'standalone' is not"),
        (lambda d: d["training"].update(head_training="frozen"), r"head_training: 'frozen'"),
        (lambda d: d["training"].update(kd_ratio=1.5), r"training.kd_ratio: 1.5 must be in"),
        (
            lambda d: d["training"].update(epochs=2, standalone_epochs=2),
            r"standalone_epochs: 2.0 leaves no epoch for the sandwich; allowed: less than epochs",
        ),
        (
            lambda d: d["training"].update(teacher_weight=0),
            r"training.teacher_weight: 0.0 must be a positive number",
        ),
        (
            lambda d: d["search"].update(seeds=["standalone", "vit"]),
            r"search.seeds\[1\]: 'vit' is not allowed; allowed values: \['standalone', 'ravit'",
        ),
        (lambda d: d["training"].update(weight_decay=-1), r"weight_decay: -1.0 must not be neg"),
    ],
)
def test_study_errors(tmp_path: Path, edit, message) -> None:
    data = quickstart()
    edit(data)
    with pytest.raises(ConfigError, match=message):
        load_study(write(tmp_path, data))


def test_missing_and_malformed_study_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="study file not found"):
        load_study(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_study(bad)


def test_study_key_ignores_where_data_lives(study: StudyConfig) -> None:
    moved = replace(study, data=replace(study.data, path="/elsewhere"))
    assert moved.key() == study.key()
    assert study.with_overrides(epochs=3).key() != study.key()


def test_a_field_added_later_keeps_older_keys_at_its_default(study: StudyConfig) -> None:
    older = study.to_dict()  # what a run trained before teacher_weight existed hashed
    older.pop("search")
    for name in ("path", "download"):
        older["data"].pop(name)
    for name in ("device", "num_threads", "checkpoint_every", "teacher_weight"):
        older["training"].pop(name)
    text = json.dumps(older, sort_keys=True, separators=(",", ":"))
    assert study.key() == hashlib.sha256(text.encode()).hexdigest()[:16]
    heavier = replace(study, training=replace(study.training, teacher_weight=4.0))
    assert heavier.key() != study.key()
