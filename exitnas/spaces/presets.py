"""The published designs exitnas unifies, as named presets of a search space.

Each preset is a small set of sub-network configs of the space with the exit rule its paper
uses, so it runs on the same trained supernet as the searched front and can be compared with
it at equal cost:

- ``ravit`` (RAViT): two or three branches on growing resolutions at one patch size, each
  branch reusing the previous one's class token and prediction, an exit after every branch,
  entropy rule;
- ``cfvit`` (CF-ViT): the largest resolution run coarse (large patches), then fine (small
  patches) re-splitting only the most attended coarse patches, with feature reuse, an exit
  after each, max-softmax rule;
- ``supervit`` (SuperViT): one branch, every token grid x every keep rate, no early exit;
- ``multi_exit_vit`` (Multi-Exit ViT): one branch on the finest grid, an exit at every exit
  layer, all exits of one head type, one config per head type, max-softmax rule.

Example:
    >>> preset = make_preset(study.space, "ravit")
    >>> preset.configs, preset.rule
"""

from __future__ import annotations

from dataclasses import dataclass

from exitnas.errors import ConfigError
from exitnas.spaces.config import BranchConfig, ExitConfig, SubnetConfig
from exitnas.spaces.space import SearchSpace

__all__ = ["PRESETS", "Preset", "make_preset"]

PRESETS = ("ravit", "cfvit", "supervit", "multi_exit_vit")
DESIGNS = {
    "ravit": "RAViT",
    "cfvit": "CF-ViT",
    "supervit": "SuperViT",
    "multi_exit_vit": "Multi-Exit ViT",
}


@dataclass(frozen=True)
class Preset:
    """A published design as configs of one space."""

    name: str  # one of PRESETS
    design: str  # the paper's name for it
    configs: tuple[SubnetConfig, ...]
    rule: str  # the exit rule the design uses


def _last_exit(space: SearchSpace, head: str | None = None) -> tuple[ExitConfig, ...]:
    return (ExitConfig(max(space.exit_layers), head or space.head_types[0]),)


def _ravit(space: SearchSpace) -> tuple[SubnetConfig, ...]:
    configs = []
    for n in (2, 3):
        chains = [
            c
            for c in space.branch_chains
            if len(c) == n
            and len({p for _, p in c}) == 1  # one patch size
            and all(b[0] > a[0] for a, b in zip(c, c[1:], strict=False))  # growing resolution
        ]
        if not chains:
            continue
        chain = max(chains, key=lambda c: [r for r, _ in reversed(c)] + [-c[0][1]])
        keep = max(space.keep_rates)
        branches = tuple(BranchConfig(r, p, _last_exit(space), keep) for r, p in chain)
        configs.append(SubnetConfig(branches, reuse=True))
    if not configs:
        raise ConfigError(
            "preset ravit needs two branches on growing resolutions at one patch size; "
            f"this space has resolutions {space.resolutions} and patch sizes {space.patch_sizes}"
        )
    return tuple(configs)


def _cfvit(space: SearchSpace) -> tuple[SubnetConfig, ...]:
    resolution = space.max_resolution
    patches = sorted((p for p in space.patch_sizes if resolution % p == 0), reverse=True)
    pairs = [
        (coarse, fine)
        for coarse in patches
        for fine in patches
        if fine < coarse and (resolution // fine) % (resolution // coarse) == 0
    ]
    if not pairs or not space.refine_fractions or space.max_branches < 2:
        raise ConfigError(
            "preset cfvit needs two patch sizes at the largest resolution (a coarse grid the "
            f"fine one refines), refine_fractions and max_branches >= 2; this space has patch "
            f"sizes {space.patch_sizes}, refine_fractions {space.refine_fractions}"
        )
    coarse, fine = max(pairs, key=lambda cf: (cf[0] // cf[1], -cf[1]))
    fraction = min(space.refine_fractions, key=lambda f: abs(f - 0.5))  # CF-ViT re-splits ~half
    keep = max(space.keep_rates)
    branches = (
        BranchConfig(resolution, coarse, _last_exit(space), keep),
        BranchConfig(resolution, fine, _last_exit(space), keep, refine_fraction=fraction),
    )
    return (SubnetConfig(branches, reuse=True),)


def _supervit(space: SearchSpace) -> tuple[SubnetConfig, ...]:
    return tuple(
        SubnetConfig((BranchConfig(r, p, _last_exit(space), keep),), reuse=space.reuse[0])
        for r, p in space.branch_options
        for keep in space.keep_rates
    )


def _multi_exit_vit(space: SearchSpace) -> tuple[SubnetConfig, ...]:
    resolution, patch = max(space.branch_options, key=lambda rp: (rp[0] // rp[1], rp[0]))
    keep = max(space.keep_rates)
    return tuple(
        SubnetConfig(
            (
                BranchConfig(
                    resolution,
                    patch,
                    tuple(ExitConfig(layer, head) for layer in space.exit_layers),
                    keep,
                ),
            ),
            reuse=space.reuse[0],
        )
        for head in space.head_types
    )


def make_preset(space: SearchSpace, name: str) -> Preset:
    """The configs and exit rule of preset ``name`` in ``space``.

    Raises:
        ConfigError: an unknown preset, or a space that cannot express it (the message names
            what the preset needs).
    """
    builders = {
        "ravit": (_ravit, "entropy"),
        "cfvit": (_cfvit, "max_softmax"),
        "supervit": (_supervit, "max_softmax"),
        "multi_exit_vit": (_multi_exit_vit, "max_softmax"),
    }
    if name not in builders:
        raise ConfigError(f"preset: {name!r} is not allowed; allowed: {PRESETS}")
    build, rule = builders[name]
    configs = build(space)
    if name in ("ravit", "cfvit") and True not in space.reuse:
        raise ConfigError(f"preset {name} reuses the previous branch; this space has reuse: false")
    for i, config in enumerate(configs):
        space.check(config, f"preset {name} config {i}")
    return Preset(name, DESIGNS[name], configs, rule)
