"""Merge methods behind a name registry: one class per method, ``get_method(name)``.

Each method owns its parameters, as mergekit's methods do: a small pydantic model (``Params``) names exactly
the ``MergeConfig`` fields it reads, typed and resolved (a TIES density left unset becomes TIES's default,
weights one per expert). What a merge records (``merge_runs.params``), what it runs with and which
command-line options it accepts are all read from that model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

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


class MethodParams(BaseModel):
    """The parameters one merge method reads; fields are ``MergeConfig`` field names, documented there."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int | None
    """Rank of the merged adapter (None: the method's exact or default rank)."""


class MergeMethod(ABC):
    """A way to combine N validated LoRA experts into one LoRA."""

    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]]
    """The parameters this method reads."""
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

    def params(self, config: MergeConfig, n_experts: int) -> MethodParams:
        """This method's parameters from ``config``, defaults resolved (density, one weight per expert)."""
        resolved = {"density": config.resolved_density, "weights": lambda: expert_weights(config, n_experts)}
        return self.Params(**{name: resolved[name]() if name in resolved else getattr(config, name)
                              for name in self.Params.model_fields})

    def parameters(self, config: MergeConfig, n_experts: int) -> dict[str, Any]:
        """The hyperparameters this method reads from ``config``, defaults resolved (recorded with the merge)."""
        return self.params(config, n_experts).model_dump()

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
    return _truncated({module: merge_one([e.modules[module].to(device=config.device) for e in experts])
                       for module in experts[0].modules}, config)


def _truncated(merged: dict[str, LoraFactors], config: MergeConfig) -> MergedModules:
    """Each merged module on CPU, truncated to ``config.rank`` when that is below its rank."""
    from merging.lowrank import truncate

    out: MergedModules = {}
    for module, factors in merged.items():
        if config.rank is not None and config.rank < factors.rank:
            small, error = truncate(factors, config.rank)
            out[module] = (small.to(device="cpu"), error)
        else:
            out[module] = (factors.folded().to(device="cpu"), None)
    return out


class _RobustMergeForm(MergeMethod):
    """RobustMerge, module by module: ``function`` of merging/robustmerge.py, called with this form's parameters."""

    equal_ranks = True
    scale_parameter = "lam"
    function: ClassVar[str]

    class Params(MethodParams):
        keep: float
        lam: float

    def merge(self, experts: Sequence[LoraAdapter], config: MergeConfig) -> MergedModules:
        from merging import robustmerge as forms

        fn, kwargs = getattr(forms, self.function), self.params(config, len(experts)).model_dump(exclude={"rank"})
        return _per_module(experts, config, lambda parts: fn(parts, **kwargs))


@register
class RobustMerge(_RobustMergeForm):
    """Paper form: exact rank N*r sum lam * sum_n c_n B~_n S~_n A~_n (optionally truncated)."""

    name = "robustmerge"
    function = "robustmerge"

    class Params(_RobustMergeForm.Params):
        normalize: bool


@register
class RobustMergeReference(_RobustMergeForm):
    """Official code form: rank r product of sums c_1 B* A* (optionally truncated)."""

    name = "robustmerge-reference"
    function = "robustmerge_reference"
    # lam enters both factors (squared); the sweep scales B alone, linearly like every other method's scale.
    scale_parameter = "scale"

    class Params(_RobustMergeForm.Params):
        clamp_ratio: float
        scale: float


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
    """A merge of the dense updates by peft's ``add_weighted_adapter``, truncated back to a LoRA by SVD."""

    combination_type: ClassVar[CombinationType]
    scale_parameter = "weights"

    class Params(MethodParams):
        weights: list[float]

    def parameters(self, config: MergeConfig, n_experts: int) -> dict[str, Any]:
        return {**super().parameters(config, n_experts), "combination_type": self.combination_type}

    def merge(self, experts: Sequence[LoraAdapter], config: MergeConfig) -> MergedModules:
        from merging.baselines import peft_merge

        # The Params fields are peft_merge's keywords; one a method does not own keeps peft_merge's default.
        return peft_merge(experts, self.combination_type, **self.params(config, len(experts)).model_dump(),
                          base_model=config.base_model, trust_remote_code=config.trust_remote_code,
                          device=config.device, method=self.name)


@register
class TaskArithmetic(_PeftBaseline):
    """sum_n w_n c_n B_n A_n, exact (peft ``cat``)."""

    name = "task-arithmetic"
    combination_type = "cat"


class _SparseBaseline(_PeftBaseline):
    """A peft baseline that keeps a ``density`` share of each task vector."""

    class Params(_PeftBaseline.Params):
        density: float


@register
class Ties(_SparseBaseline):
    """TIES on the dense updates, truncated by SVD (peft ``ties_svd``)."""

    name = "ties"
    combination_type = "ties_svd"

    class Params(_SparseBaseline.Params):
        majority_sign_method: str


@register
class Dare(_SparseBaseline):
    """DARE (random drop + rescale) then task arithmetic on the dense updates (peft ``dare_linear_svd``)."""

    name = "dare"
    combination_type = "dare_linear_svd"

    class Params(_SparseBaseline.Params):
        seed: int

    def is_random(self, config: MergeConfig) -> bool:
        return True


@register
class Knots(MergeMethod):
    """KnOTS: TIES (or DARE) of the experts' blocks in the shared SVD basis of their concatenated updates."""

    name = "knots"
    scale_parameter = "scale"

    class Params(MethodParams):
        knots_merge: str
        knots_trim: str
        density: float
        scale: float
        weights: list[float]
        seed: int
        """Read by ``knots_merge: dare`` only."""

    def is_random(self, config: MergeConfig) -> bool:
        return config.knots_merge == "dare"

    def merge(self, experts: Sequence[LoraAdapter], config: MergeConfig) -> MergedModules:
        from merging.knots import knots_merge

        p = self.params(config, len(experts))
        # The trim ranks a task's entries over every module at once: the modules are merged together.
        modules = {m: [e.modules[m].to(device=config.device) for e in experts] for m in experts[0].modules}
        return _truncated(knots_merge(modules, merge=p.knots_merge, density=p.density, scale=p.scale,
                                      weights=p.weights, seed=p.seed, trim=p.knots_trim), config)


@register
class CoreSpace(MergeMethod):
    """Core Space: the experts' cores in the shared bases of their stacked factors, merged by ``core_merge``
    (TSV-M by default), mapped back as a LoRA of rank <= sum of the ranks."""

    name = "core-space"
    scale_parameter = "scale"

    class Params(MethodParams):
        core_merge: str
        common_fraction: float
        """Read by ``core_merge: iso-cts`` only."""
        scale: float
        weights: list[float]

    fixed_inner: ClassVar[str | None] = None
    """The inner merge a variant fixes (its Params then has no ``core_merge``)."""

    def merge(self, experts: Sequence[LoraAdapter], config: MergeConfig) -> MergedModules:
        from merging.core_space import core_space

        p = self.params(config, len(experts))
        inner = self.fixed_inner or p.core_merge  # type: ignore[attr-defined]
        return _per_module(experts, config, lambda parts: core_space(
            parts, inner=inner, scale=p.scale, weights=p.weights, common_fraction=p.common_fraction))


@register
class CoreSpaceIsoCts(CoreSpace):
    """Core Space with Iso-CTS inside: common and task-specific directions, one singular value."""

    name = "core-space-iso-cts"
    fixed_inner = "iso-cts"

    class Params(MethodParams):
        common_fraction: float
        scale: float
        weights: list[float]


#: MergeConfig fields that say where or how a merge runs, not what it computes: every method takes them.
SHARED_OPTIONS = ("method", "save_dtype", "device", "base_model", "trust_remote_code")


def unread_options(method: str, given: dict[str, Any]) -> str | None:
    """The message for the options in ``given`` (MergeConfig field -> option name) that ``method`` does not read,
    or None: an option a method ignores is a mistake the user should hear about, not a silent no-op."""
    if method not in METHODS:
        return None  # config validation names an unknown method, with the choices
    cls = METHODS[method]
    unread = [option for field, option in given.items() if field not in cls.Params.model_fields and field not in SHARED_OPTIONS]
    if not unread:
        return None
    reads = ", ".join(f for f in cls.Params.model_fields)
    return f"{', '.join(unread)}: not a parameter of {method} (it reads: {reads}); drop the option or choose a method that reads it"
