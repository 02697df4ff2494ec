"""Per-stage latency profiles and the stage latency model."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from exitnas.devices.errors import ProfileError
from exitnas.devices.latency import StageLatencyModel
from exitnas.devices.profile import (
    DeviceProfile,
    RuntimeOverhead,
    StageFeatures,
    StageTiming,
    fit_overhead,
    measure_stage_latencies,
    stage_features,
)
from exitnas.errors import ExitnasError
from exitnas.spaces import SearchSpace, SubnetConfig
from exitnas.supernet import SuperViT
from exitnas.supernet.cascade import CascadeState, plan_stages

BATCH_SIZES = (1, 8)


@pytest.fixture(scope="module")
def measured() -> tuple[SearchSpace, list[SubnetConfig], list[StageTiming]]:
    """Timings of three sampled configs of the tiny space."""
    from exitnas.supernet.registry import exitnas_tiny

    space = exitnas_tiny()
    net = SuperViT(space).eval()
    rng = np.random.default_rng(42)
    configs = [space.sample(rng) for _ in range(3)]
    images = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    timings = []
    for config in configs:
        timings += measure_stage_latencies(
            net.extract(config), images, batch_sizes=BATCH_SIZES, warmup=1, repeats=3, threads=1
        )
    return space, configs, timings


def test_timings_cover_every_stage_and_batch_size(measured) -> None:
    _, configs, timings = measured
    expected = {
        (config.key(), stage, bs)
        for config in configs
        for stage in range(len(plan_stages(config)))
        for bs in BATCH_SIZES
    }
    assert {(t.config_key, t.stage, t.batch_size) for t in timings} == expected
    assert len(timings) == len(expected)
    for t in timings:
        assert 0 < t.p10_ms <= t.median_ms <= t.p90_ms
        assert t.flops > 0 and t.blocks >= 1 and t.tokens >= 2


def test_features_match_the_running_model(space: SearchSpace, rng: np.random.Generator) -> None:
    net = SuperViT(space).eval()
    for _ in range(5):
        config = space.sample(rng)
        model = net.extract(config)
        state = CascadeState(images=torch.randn(2, 1, 16, 16))
        features = stage_features(space, config, batch_size=2)
        assert [f.flops for f in features] == list(model.count_flops())
        with torch.inference_mode():
            for stage, feats in zip(plan_stages(config), features, strict=True):
                assert feats.opens_branch == (stage.start == 0)
                if stage.start > 0:
                    assert state.tokens is not None and state.tokens.shape[1] == feats.tokens
                state = model.run_stage(stage, state)


def test_threads_and_mode_are_restored(space: SearchSpace, rng: np.random.Generator) -> None:
    model = SuperViT(space).extract(space.smallest()).train()
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    images = torch.randn(2, 1, 16, 16)
    measure_stage_latencies(model, images, batch_sizes=(1,), warmup=0, repeats=1, threads=target)
    assert torch.get_num_threads() == before
    assert model.training


def test_bad_arguments_fail_loudly(space: SearchSpace) -> None:
    model = SuperViT(space).extract(space.smallest())
    with pytest.raises(ValueError, match="repeats"):
        measure_stage_latencies(model, torch.randn(1, 1, 16, 16), repeats=0)
    with pytest.raises(ValueError, match="batch_sizes"):
        measure_stage_latencies(model, torch.randn(1, 1, 16, 16), batch_sizes=(0,))


def test_profile_round_trip_and_overwrite(measured, tmp_path) -> None:
    _, _, timings = measured
    profile = DeviceProfile.create(
        timings, device="cpu", study_key="abc", weights_hash="def", threads=1
    )
    assert DeviceProfile.from_json(profile.to_json()) == profile
    path = tmp_path / "profiles" / "cpu.json"
    profile.save(path)
    assert DeviceProfile.load(path) == profile
    assert [p.name for p in path.parent.iterdir()] == ["cpu.json"]  # no temporaries left
    with pytest.raises(ProfileError, match="exists"):
        profile.save(path)
    other = replace(profile, device="cpu-2")
    other.save(path, overwrite=True)
    assert DeviceProfile.load(path).device == "cpu-2"


@pytest.mark.parametrize(
    "text", ["{not json", "[1, 2]", '{"format": "something else"}', "", "\x00\x01"]
)
def test_corrupt_profile_is_a_typed_error(tmp_path, text: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ProfileError, match="bad.json") as info:
        DeviceProfile.load(path)
    assert isinstance(info.value, ExitnasError) and isinstance(info.value, ValueError)


def test_incomplete_or_missing_profile(measured, tmp_path) -> None:
    with pytest.raises(ProfileError, match="missing.json"):
        DeviceProfile.load(tmp_path / "missing.json")
    text = DeviceProfile.create(measured[2][:1], device="cpu", study_key="k").to_json()
    path = tmp_path / "cut.json"
    path.write_text(text.replace('"median_ms"', '"median"'))
    with pytest.raises(ProfileError, match="cut.json"):
        DeviceProfile.load(path)
    path.write_text(text.replace('"version": 2', '"version": 99'))
    with pytest.raises(ProfileError, match="version"):
        DeviceProfile.load(path)


def _synthetic(
    space: SearchSpace, rng: np.random.Generator, n_configs: int = 40
) -> list[StageTiming]:
    """Stages of sampled configs timed by a known linear law with 2% noise."""
    heads = {h: 0.02 * i for i, h in enumerate(space.head_types)}
    timings = []
    for _ in range(n_configs):
        config = space.sample(rng)
        for bs in (1, 8, 32):
            for f in stage_features(space, config, bs):
                ms = (
                    0.05
                    + 0.03 * f.blocks
                    + 20.0 * f.flops * bs / 1e9
                    + 0.5 * f.tokens**2 * f.blocks * bs / 1e6
                    + 0.1 * f.opens_branch
                    + heads[f.head]
                ) * rng.lognormal(0.0, 0.02)
                timings.append(StageTiming(**vars(f), median_ms=ms, p10_ms=ms, p90_ms=ms))
    return timings


def test_latency_model_recovers_a_linear_law(space: SearchSpace, rng: np.random.Generator) -> None:
    timings = _synthetic(space, rng)
    model = StageLatencyModel(random_state=0)
    result = model.evaluate(timings, test_fraction=0.3, random_state=0)
    assert result["mdape"] < 0.05
    assert result["n_test"] > 0 and result["n_train"] + result["n_test"] == len(timings)
    assert not hasattr(model, "regressor_")  # evaluate fits a clone
    fitted = model.fit(timings)
    assert fitted is model
    features: list[StageFeatures] = stage_features(space, space.largest(), batch_size=4)
    pred = model.predict(features)
    assert pred.shape == (len(features),) and np.all(pred > 0)


def test_estimator_contract(space: SearchSpace, rng: np.random.Generator) -> None:
    model = StageLatencyModel(method="boosting", n_estimators=20, random_state=3)
    assert model.get_params() == {"method": "boosting", "n_estimators": 20, "random_state": 3}
    copy = clone(model)
    assert copy.get_params() == model.get_params() and copy is not model
    timings = _synthetic(space, rng, n_configs=5)
    with pytest.raises(NotFittedError):
        model.predict(timings)
    model.fit(timings)
    assert model.n_features_in_ > 0
    assert np.all(model.predict(timings) > 0)
    assert np.isfinite(model.score(timings, [t.median_ms for t in timings]))
    with pytest.raises(ValueError, match="unknown method"):
        StageLatencyModel(method="magic").fit(timings)


def test_overhead_fit_recovers_fixed_and_per_stage_costs() -> None:
    residuals = [(n, 0.05 + 0.02 * n) for n in (1, 2, 3, 5)]
    overhead = fit_overhead(1, residuals, policy_ms=0.3)
    assert (overhead.fixed_ms, overhead.stage_ms) == pytest.approx((0.05, 0.02))
    assert overhead.policy_ms == 0.3
    # never negative: a falling residual is all fixed cost, one stage count all per stage
    assert fit_overhead(1, [(1, 0.3), (4, 0.1)]).stage_ms == 0.0
    same = fit_overhead(1, [(2, 0.2), (2, 0.4)])
    assert (same.fixed_ms, same.stage_ms) == (0.0, pytest.approx(0.15))
    assert fit_overhead(1, [(1, -0.1)], policy_ms=-1.0) == RuntimeOverhead(1, 0.0, 0.0, 0.0)


def test_overheads_are_measured_and_priced_into_stage_ms(measured) -> None:
    """predict's cost beyond the stages is measured, kept in the profile, and DeviceCosts
    adds it: per stage, the fixed cost on the first, the policy's on every decision."""
    from exitnas.deploy.overheads import measure_overheads
    from exitnas.devices.costs import DeviceCosts

    space, configs, timings = measured
    net = SuperViT(space).eval()
    images = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8)
    models = [net.extract(c) for c in configs]
    overheads = measure_overheads(
        models, images, (0.5,), (0.25,), timings, batch_sizes=BATCH_SIZES, repeats=2, threads=1
    )
    assert [o.batch_size for o in overheads] == list(BATCH_SIZES)
    assert all(o.fixed_ms >= 0 and o.stage_ms >= 0 and o.policy_ms > 0 for o in overheads)
    profile = DeviceProfile.create(
        timings, device="cpu", study_key="k", threads=1, overheads=overheads
    )
    assert DeviceProfile.from_json(profile.to_json()) == profile
    bare = DeviceCosts(replace(profile, overheads=()))
    costs = DeviceCosts(profile)
    config = configs[0]
    one = overheads[0]
    base = bare.stage_ms(space, config)[0]
    expected = base + one.stage_ms
    expected[0] += one.fixed_ms
    np.testing.assert_allclose(costs.stage_ms(space, config)[0], expected)
    learned = costs.rule_stage_ms(space, config, "learned")
    np.testing.assert_allclose(learned[:-1], expected[:-1] + one.policy_ms)
    assert learned[-1] == pytest.approx(expected[-1])  # the last exit decides nothing
    np.testing.assert_allclose(costs.rule_stage_ms(space, config, "entropy"), expected)


def test_a_profile_older_than_overheads_still_loads(measured) -> None:
    profile = DeviceProfile.create(measured[2][:2], device="cpu", study_key="k")
    document = json.loads(profile.to_json())
    del document["overheads"], document["runtime"]
    old = DeviceProfile.from_json(json.dumps(document))
    assert old.overheads == () and old.runtime == "torch" and old.timings == profile.timings
