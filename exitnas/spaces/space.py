"""The search space: what a study may choose from, and how to sample from it."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np

from exitnas.errors import ConfigError
from exitnas.spaces.config import HEAD_TYPES, BranchConfig, ExitConfig, SubnetConfig

__all__ = ["BackboneSpace", "SearchSpace"]


@dataclass(frozen=True)
class BackboneSpace:
    """Dimensions of the shared ViT backbone (the maxima every sub-network runs within).

    Width (``embed_dim``, ``num_heads``, ``mlp_ratio``) is shared by every sub-network; depth is
    elastic: a branch runs blocks 1..L of ``depth`` shared blocks, L being its last exit layer.
    """

    embed_dim: int = 192  # token width
    depth: int = 12  # number of shared transformer blocks
    num_heads: int = 3  # attention heads per block; must divide embed_dim
    mlp_ratio: float = 4.0  # hidden width of each block's MLP, relative to embed_dim
    qkv_bias: bool = True  # bias on the query/key/value projection (timm's default for ViT)
    drop_path_rate: float = 0.0  # stochastic depth rate of the last block during training

    def __post_init__(self) -> None:
        for name in ("embed_dim", "depth", "num_heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: {getattr(self, name)} must be at least 1")
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"num_heads: {self.num_heads} does not divide embed_dim {self.embed_dim}; "
                f"allowed: {[h for h in range(1, self.embed_dim + 1) if self.embed_dim % h == 0]}"
            )
        if self.mlp_ratio <= 0:
            raise ConfigError(f"mlp_ratio: {self.mlp_ratio} must be positive")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError(f"drop_path_rate: {self.drop_path_rate} must be in [0, 1)")


@dataclass(frozen=True)
class SearchSpace:
    """Every choice a sub-network config may make, plus the data shape it runs on."""

    backbone: BackboneSpace
    num_classes: int  # classes of the data set
    in_chans: int  # image channels (1 for the built-in digits, 3 for CIFAR-10)
    resolutions: tuple[int, ...]  # candidate branch input resolutions in pixels, increasing
    patch_sizes: tuple[int, ...]  # candidate patch sizes; each branch's must divide its resolution
    exit_layers: tuple[int, ...]  # candidate exit layers (1..depth) of every branch
    max_branches: int = 3  # 1 to 3 branches per sub-network
    keep_rates: tuple[float, ...] = (1.0,)  # candidate token keep rates, in (0, 1]
    keep_layers: tuple[int, ...] = ()  # blocks (1-based) after whose attention tokens are kept
    head_types: tuple[str, ...] = HEAD_TYPES  # candidate exit head types
    refine_fractions: tuple[float, ...] = ()  # CF-ViT re-split fractions; () disables refinement
    reuse: tuple[bool, ...] = (True,)  # whether branches reuse the branch before them

    def __post_init__(self) -> None:
        depth = self.backbone.depth
        if self.num_classes < 2:
            raise ConfigError(f"num_classes: {self.num_classes} must be at least 2")
        if self.in_chans < 1:
            raise ConfigError(f"in_chans: {self.in_chans} must be at least 1")
        _check_choices("resolutions", self.resolutions, lambda r: r >= 1, "positive integers")
        if list(self.resolutions) != sorted(set(self.resolutions)):
            raise ConfigError(f"resolutions: must be strictly increasing, got {self.resolutions}")
        _check_choices("patch_sizes", self.patch_sizes, lambda p: p >= 1, "positive integers")
        if list(self.patch_sizes) != sorted(self.patch_sizes):
            raise ConfigError(f"patch_sizes: must be increasing, got {self.patch_sizes}")
        for patch in self.patch_sizes:
            if not any(r % patch == 0 for r in self.resolutions):
                fits = sorted({p for r in self.resolutions for p in range(1, r + 1) if r % p == 0})
                raise ConfigError(
                    f"patch_sizes: {patch} divides none of the resolutions "
                    f"{list(self.resolutions)}; allowed: {fits}"
                )
        for resolution in self.resolutions:
            if not any(resolution % p == 0 for p in self.patch_sizes):
                raise ConfigError(
                    f"resolutions: no patch size in {list(self.patch_sizes)} divides {resolution}"
                )
        _check_choices("exit_layers", self.exit_layers, lambda x: 1 <= x <= depth, f"1..{depth}")
        if list(self.exit_layers) != sorted(self.exit_layers):
            raise ConfigError(f"exit_layers: must be increasing, got {self.exit_layers}")
        if not 1 <= self.max_branches <= 3:
            raise ConfigError(f"max_branches: {self.max_branches} not allowed; allowed: 1, 2, 3")
        _check_choices("keep_rates", self.keep_rates, lambda k: 0.0 < k <= 1.0, "(0, 1]")
        _check_choices(
            "keep_layers", self.keep_layers, lambda x: 1 <= x <= depth, f"1..{depth}", empty=True
        )
        if list(self.keep_layers) != sorted(self.keep_layers):
            raise ConfigError(f"keep_layers: must be increasing, got {self.keep_layers}")
        if not self.keep_layers and self.keep_rates != (1.0,):
            raise ConfigError(
                f"keep_rates: {self.keep_rates} need keep_layers (the blocks after which tokens "
                "are kept); with no keep_layers the only allowed keep rate is [1.0]"
            )
        _check_choices("head_types", self.head_types, lambda h: h in HEAD_TYPES, str(HEAD_TYPES))
        _check_choices(
            "refine_fractions", self.refine_fractions, lambda f: 0.0 < f <= 1.0, "(0, 1]", True
        )
        _check_choices("reuse", self.reuse, lambda r: isinstance(r, bool), "true, false")

    # -- derived facts --------------------------------------------------------------------

    @cached_property
    def branch_options(self) -> tuple[tuple[int, int], ...]:
        """Every allowed ``(resolution, patch_size)`` pair, ordered by grid then resolution."""
        pairs = [(r, p) for r in self.resolutions for p in self.patch_sizes if r % p == 0]
        return tuple(sorted(pairs, key=lambda rp: (rp[0] // rp[1], rp[0])))

    @cached_property
    def branch_chains(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        """Every allowed sequence of branches: grids grow, resolutions never shrink."""
        chains = []
        for n in range(1, self.max_branches + 1):
            for chain in itertools.combinations(self.branch_options, n):
                if all(
                    b[0] >= a[0] and b[0] // b[1] > a[0] // a[1]
                    for a, b in zip(chain, chain[1:], strict=False)
                ):
                    chains.append(chain)
        return tuple(chains)

    @property
    def grids(self) -> tuple[int, ...]:
        """Every token-grid side length a branch can have."""
        return tuple(sorted({r // p for r, p in self.branch_options}))

    @property
    def max_resolution(self) -> int:
        return self.resolutions[-1]

    # -- configs ----------------------------------------------------------------------------

    def check(self, config: SubnetConfig, where: str = "config") -> None:
        """Raise :class:`ConfigError` if ``config`` makes a choice this space does not allow."""
        if len(config.branches) > self.max_branches:
            raise ConfigError(
                f"{where}.branches: {len(config.branches)} branches; "
                f"this space allows at most {self.max_branches}"
            )
        if config.reuse not in self.reuse:
            raise ConfigError(f"{where}.reuse: {config.reuse} not allowed; allowed: {self.reuse}")
        for i, branch in enumerate(config.branches):
            at = f"{where}.branches[{i}]"
            _check_in(f"{at}.resolution", branch.resolution, self.resolutions)
            _check_in(f"{at}.patch_size", branch.patch_size, self.patch_sizes)
            _check_in(f"{at}.keep_rate", branch.keep_rate, self.keep_rates)
            if branch.refine_fraction is not None:
                _check_in(f"{at}.refine_fraction", branch.refine_fraction, self.refine_fractions)
            for j, exit_ in enumerate(branch.exits):
                _check_in(f"{at}.exits[{j}].layer", exit_.layer, self.exit_layers)
                _check_in(f"{at}.exits[{j}].head", exit_.head, self.head_types)

    def sample(
        self, rng: np.random.Generator, mode: Literal["uniform", "search"] = "uniform"
    ) -> SubnetConfig:
        """Draw a config: a uniform branch chain, then choices for everything else.

        Args:
            rng: the random source.
            mode: ``uniform`` draws a number of exits uniformly, then that many exit layers, and
                refines a refinable branch half the time; ``search`` draws as the search's
                random trials do (:func:`exitnas.search.encoding.suggest` with a random sampler):
                a uniform last exit layer, each earlier layer an exit with probability 1/2, and
                a uniform choice among no refinement and every refine fraction.
        """
        if mode == "search":
            return self._sample_as_search(rng)
        chain = self.branch_chains[rng.integers(len(self.branch_chains))]
        branches: list[BranchConfig] = []
        for i, (resolution, patch_size) in enumerate(chain):
            refine = None
            refinable = i > 0 and (resolution // patch_size) % branches[-1].grid == 0
            if refinable and self.refine_fractions and rng.random() < 0.5:
                refine = float(rng.choice(self.refine_fractions))
            n_exits = int(rng.integers(1, len(self.exit_layers) + 1))
            layers = sorted(rng.choice(self.exit_layers, size=n_exits, replace=False).tolist())
            exits = tuple(ExitConfig(int(x), str(rng.choice(self.head_types))) for x in layers)
            keep = float(rng.choice(self.keep_rates))
            branches.append(BranchConfig(resolution, patch_size, exits, keep, refine))
        # a single branch reuses nothing: do not draw (two names for one network)
        reuse = bool(rng.choice(self.reuse)) if len(branches) > 1 else self.reuse[0]
        return SubnetConfig(tuple(branches), reuse=reuse)

    def _sample_as_search(self, rng: np.random.Generator) -> SubnetConfig:
        chain = self.branch_chains[rng.integers(len(self.branch_chains))]
        branches: list[BranchConfig] = []
        for i, (resolution, patch_size) in enumerate(chain):
            keep = float(rng.choice(self.keep_rates))
            refine = None
            if (
                i > 0
                and self.refine_fractions
                and (resolution // patch_size) % branches[-1].grid == 0
            ):
                choice = int(rng.integers(len(self.refine_fractions) + 1))
                refine = None if choice == 0 else float(self.refine_fractions[choice - 1])
            last = int(rng.choice(self.exit_layers))
            layers = [x for x in self.exit_layers if x < last and rng.random() < 0.5] + [last]
            exits = tuple(ExitConfig(int(x), str(rng.choice(self.head_types))) for x in layers)
            branches.append(BranchConfig(resolution, patch_size, exits, keep, refine))
        reuse = bool(rng.choice(self.reuse)) if len(branches) > 1 else self.reuse[0]
        return SubnetConfig(tuple(branches), reuse=reuse)

    def standalone(self, head: str | None = None) -> SubnetConfig:
        """The plain ViT inside the space: one branch on the finest grid (the largest resolution
        first), full depth, an exit at every exit layer, no token dropping.

        Its last exit is the architecture a standalone ViT of the backbone's dims would have.

        Args:
            head: head type of every exit; the space's first head type by default.
        """
        head = head or self.head_types[0]
        resolution, patch_size = max(self.branch_options, key=lambda rp: (rp[0] // rp[1], rp[0]))
        exits = tuple(ExitConfig(layer, head) for layer in self.exit_layers)
        branch = BranchConfig(resolution, patch_size, exits, max(self.keep_rates))
        return SubnetConfig((branch,), reuse=self.reuse[0])

    def largest(self, head: str | None = None) -> SubnetConfig:
        """The sandwich rule's largest config (the distillation teacher).

        The longest chain of the largest grids, an exit at every exit layer, no token dropping
        and full (not coarse-to-fine) branches; heads of one type.

        Args:
            head: head type of every exit; the space's first head type by default.
        """
        head = head or self.head_types[0]
        longest = max(len(chain) for chain in self.branch_chains)
        chain = max(
            (c for c in self.branch_chains if len(c) == longest),
            key=lambda c: [(r // p, r) for r, p in reversed(c)],
        )
        exits = tuple(ExitConfig(layer, head) for layer in self.exit_layers)
        keep = max(self.keep_rates)
        branches = tuple(BranchConfig(r, p, exits, keep) for r, p in chain)
        return SubnetConfig(branches, reuse=True in self.reuse)

    def smallest(self, head: str | None = None) -> SubnetConfig:
        """The cheapest config: one branch on the smallest grid, one exit at the first layer."""
        head = head or self.head_types[0]
        resolution, patch_size = self.branch_options[0]
        exit_ = ExitConfig(min(self.exit_layers), head)
        branch = BranchConfig(resolution, patch_size, (exit_,), min(self.keep_rates))
        return SubnetConfig((branch,), reuse=self.reuse[0])


def _check_choices(name, values, ok, allowed, empty=False) -> None:
    if not values and not empty:
        raise ConfigError(f"{name}: needs at least one value; allowed: {allowed}")
    if len(set(values)) != len(values):
        raise ConfigError(f"{name}: duplicate values in {list(values)}")
    for value in values:
        if not ok(value):
            raise ConfigError(f"{name}: {value!r} is not allowed; allowed: {allowed}")


def _check_in(where: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{where}: {value!r} is not in the space; allowed: {list(allowed)}")
