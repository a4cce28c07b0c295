"""Merge methods behind a name registry: one class per method, ``get_method(name)``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from merging.config import MergeConfig
from polymath.errors import ConfigError
from polymath.registry import Registry

if TYPE_CHECKING:  # the implementations need torch; they are imported when a merge runs, not to list the methods
    from merging.adapters import LoraAdapter
    from merging.baselines import CombinationType
    from merging.lowrank import LoraFactors

#: Per module: merged factors (scaling folded, scaling 1) and the relative error of
#: the rank truncation (None when exact or not measured).
MergedModules = dict[str, tuple["LoraFactors", float | None]]


class MergeMethod(ABC):
    """A way to combine N validated LoRA experts into one LoRA."""

    name: ClassVar[str]
    equal_ranks: ClassVar[bool] = False
    """Whether every expert must have the same rank in each module."""
    scale_parameter: ClassVar[str]
    """The config field that scales the merged update globally (what a scale sweep sets)."""

    def is_random(self, config: MergeConfig) -> bool:
        """Whether the merge draws random numbers (``config.seed`` then changes it)."""
        return False

    def scaled(self, config: MergeConfig, scale: float, n_experts: int) -> MergeConfig:
        """``config`` with this method's global scale multiplied by ``scale`` (every expert's weight, for the
        weighted methods): a grid of multipliers means the same for methods whose defaults differ
        (RobustMerge's lambda 2, the baselines' weight 1)."""
        if self.scale_parameter == "weights":
            value: Any = [scale * w for w in expert_weights(config, n_experts)]
        else:
            value = scale * getattr(config, self.scale_parameter)
        return config.model_copy(update={self.scale_parameter: value})

    @abstractmethod
    def parameters(self, config: MergeConfig, n_experts: int) -> dict[str, Any]:
        """The hyperparameters this method reads from ``config``, defaults resolved."""

    @abstractmethod
    def merge(self, experts: Sequence[LoraAdapter], config: MergeConfig) -> MergedModules:
        """Merge every module of the (validated) experts."""


METHODS: Registry[type[MergeMethod]] = Registry("merge.method")


def register(cls: type[MergeMethod]) -> type[MergeMethod]:
    return METHODS.add(cls.name, cls)


def method_names() -> list[str]:
    """The registered method names, in registration order."""
    return list(METHODS.names())


def get_method(name: str) -> MergeMethod:
    """A fresh instance of the method registered under ``name``."""
    return METHODS[name]()


def _per_module(
    experts: Sequence[LoraAdapter], config: MergeConfig, merge_one: Callable[[list[LoraFactors]], LoraFactors]
) -> MergedModules:
    from merging.lowrank import truncate

    out: MergedModules = {}
    for module in experts[0].modules:
        parts = [e.modules[module].to(device=config.device) for e in experts]
        merged = merge_one(parts)
        if config.rank is not None and config.rank < merged.rank:
            factors, error = truncate(merged, config.rank)
            out[module] = (factors.to(device="cpu"), error)
        else:
            out[module] = (merged.folded().to(device="cpu"), None)
    return out


@register
class RobustMerge(MergeMethod):
    """Paper form: exact rank N*r sum lam * sum_n c_n B~_n S~_n A~_n (optionally truncated)."""

    name = "robustmerge"
    equal_ranks = True
    scale_parameter = "lam"

    def parameters(self, config: MergeConfig, n_experts: int) -> dict[str, Any]:
        return {"keep": config.keep, "lam": config.lam, "normalize": config.normalize, "rank": config.rank}

    def merge(self, experts: Sequence[LoraAdapter], config: MergeConfig) -> MergedModules:
        from merging.robustmerge import robustmerge

        return _per_module(experts, config, lambda p: robustmerge(p, config.keep, config.lam, config.normalize))


@register
class RobustMergeReference(MergeMethod):
    """Official code form: rank r product of sums c_1 B* A* (optionally truncated)."""

    name = "robustmerge-reference"
    equal_ranks = True
    scale_parameter = "lam"

    def parameters(self, config: MergeConfig, n_experts: int) -> dict[str, Any]:
        return {"keep": config.keep, "lam": config.lam, "clamp_ratio": config.clamp_ratio, "rank": config.rank}

    def merge(self, experts: Sequence[LoraAdapter], config: MergeConfig) -> MergedModules:
        from merging.robustmerge import robustmerge_reference

        return _per_module(
            experts, config, lambda p: robustmerge_reference(p, config.keep, config.lam, config.clamp_ratio)
        )


def expert_weights(config: MergeConfig, n_experts: int) -> list[float]:
    """``config.weights``, or 1.0 per expert; a count that does not match the experts is an error."""
    if config.weights is None:
        return [1.0] * n_experts
    if len(config.weights) != n_experts:
        raise ConfigError(
            f"merge weights has {len(config.weights)} values for {n_experts} adapters; give one weight per adapter"
        )
    return list(config.weights)


class _PeftBaseline(MergeMethod):
    combination_type: ClassVar[CombinationType]
    uses_density: ClassVar[bool] = True
    scale_parameter = "weights"

    def _weights(self, config: MergeConfig, n_experts: int) -> list[float]:
        return expert_weights(config, n_experts)

    def parameters(self, config: MergeConfig, n_experts: int) -> dict[str, Any]:
        params: dict[str, Any] = {
            "combination_type": self.combination_type,
            "weights": self._weights(config, n_experts),
            "rank": config.rank,
        }
        if self.uses_density:
            params["density"] = config.resolved_density()
        return params

    def merge(self, experts: Sequence[LoraAdapter], config: MergeConfig) -> MergedModules:
        from merging.baselines import peft_merge

        return peft_merge(
            experts,
            self.combination_type,
            weights=self._weights(config, len(experts)),
            rank=config.rank,
            density=config.resolved_density() if self.uses_density else None,
            majority_sign_method=config.majority_sign_method,
            base_model=config.base_model,
            trust_remote_code=config.trust_remote_code,
            seed=config.seed,
            device=config.device,
            method=self.name,
        )


@register
class TaskArithmetic(_PeftBaseline):
    """sum_n w_n c_n B_n A_n, exact (peft ``cat``)."""

    name = "task-arithmetic"
    combination_type = "cat"
    uses_density = False


@register
class Ties(_PeftBaseline):
    """TIES on the dense updates, truncated by SVD (peft ``ties_svd``)."""

    name = "ties"
    combination_type = "ties_svd"

    def parameters(self, config: MergeConfig, n_experts: int) -> dict[str, Any]:
        return {**super().parameters(config, n_experts), "majority_sign_method": config.majority_sign_method}


@register
class Dare(_PeftBaseline):
    """DARE (random drop + rescale) then task arithmetic on the dense updates (peft ``dare_linear_svd``)."""

    name = "dare"
    combination_type = "dare_linear_svd"

    def is_random(self, config: MergeConfig) -> bool:
        return True

    def parameters(self, config: MergeConfig, n_experts: int) -> dict[str, Any]:
        return {**super().parameters(config, n_experts), "seed": config.seed}


@register
class Knots(MergeMethod):
    """KnOTS: TIES (or DARE) of the experts' blocks in the shared SVD basis of their concatenated updates."""

    name = "knots"
    scale_parameter = "scale"

    def is_random(self, config: MergeConfig) -> bool:
        return config.knots_merge == "dare"

    def parameters(self, config: MergeConfig, n_experts: int) -> dict[str, Any]:
        params = {"merge": config.knots_merge, "density": config.resolved_density(), "scale": config.scale,
                  "weights": expert_weights(config, n_experts), "rank": config.rank}
        if config.knots_merge == "dare":
            params["seed"] = config.seed
        return params

    def merge(self, experts: Sequence[LoraAdapter], config: MergeConfig) -> MergedModules:
        from merging.knots import knots

        weights = expert_weights(config, len(experts))
        return _per_module(
            experts, config,
            lambda p: knots(p, merge=config.knots_merge, density=config.resolved_density(), scale=config.scale,
                            weights=weights, seed=config.seed),
        )
