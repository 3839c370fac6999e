"""The pruned variants a benchmark compares, shared by ``slimbench report`` and the suites.

A variant is a method, a ratio and the residual treatment. Which residual treatments make sense
depends on the model's residual style (``ModelInfo.residual``): post-activation ResNets can drop whole
residual branches; pre-activation ResNets and DenseNets read residual sums / concats through a BN,
which channel selection prunes.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

import slimbench
from slimbench.analysis.graph import DEFAULT_RESIDUAL
from slimbench.core.inputs import ExampleInputs

__all__ = ["Variant", "UNPRUNED", "METHODS", "DEFAULT_RATIOS", "variants_for", "latency_reference", "apply_variant",
           "param_count", "count_model"]

METHODS = ("network_slimming", "optimal_thresholding")
DEFAULT_RATIOS = (0.3, 0.5, 0.7)
# residual style (slimbench.models.RESIDUAL_STYLES) -> the network-slimming variant it adds
_RESIDUAL_LABELS = {"keep": "+residual-kept", "shared": "+shared-residual", "select": "+channel-selection"}
_RESIDUAL_EXTRAS = {"none": None, "post-activation": {"branches": "remove"}, "pre-activation": {"residual": "select"}}


@dataclass(frozen=True)
class Variant:
    method: str  # "unpruned" or a slimbench.plan method
    ratio: float = 0.0
    residual: str = DEFAULT_RESIDUAL
    branches: str = "keep"
    round_to: int = 1
    widths: str = "channels"  # "latency" / "steps": latency-aware widths (slimbench.pruning.latency_aware)
    # "ratio": ``ratio`` sets the amount; "latency": the caller passes ``target_latency`` (the report: the
    # measured latency fraction of network slimming round_to=8 at ``ratio``, so both rows run equally fast)
    budget: str = "ratio"

    @property
    def label(self) -> str:
        extra = "" if self.residual == DEFAULT_RESIDUAL else _RESIDUAL_LABELS[self.residual]
        extra += "+branch-removal" if self.branches == "remove" else ""
        rounding = f"+round{self.round_to}" if self.round_to > 1 else ""
        aware = {"latency": "+latency-widths", "steps": "+latency-steps"}.get(self.widths, "")
        return f"{self.method}{extra}{rounding}{aware}"

    def key(self, model: str) -> str:
        """Stable case name, e.g. ``resnet56/network_slimming+branch-removal/0.5``."""
        return f"{model}/{self.label}/{self.ratio:g}"

    def plan_options(self) -> dict:
        options = dict(method=self.method, ratio=self.ratio, residual=self.residual, branches=self.branches,
                       round_to=self.round_to)
        if self.budget == "latency":
            del options["ratio"]
        return options if self.widths == "channels" else {**options, "widths": self.widths, "round_to": 1}


UNPRUNED = Variant("unpruned")
LATENCY_ROWS = ("latency", "steps")  # the widths of the rows --latency-aware plans to round_to=8's latency


def variants_for(residual: str, *, ratios: Sequence[float] = DEFAULT_RATIOS, methods: Sequence[str] = METHODS,
                 extras: bool = True, round_to: int = 1, latency_aware: bool = False) -> list[Variant]:
    """The unpruned model, every method x ratio, and the network-slimming variants that the model's
    residual style (``ModelInfo.residual``: "none", "post-activation", "pre-activation") adds;
    ``latency_aware``: the equal-latency rows at the middle ratio: network slimming with ``round_to=8``
    (unless ``round_to`` is 8 and network slimming is in ``methods``: that row is already there), and
    network slimming planned to that model's measured latency twice, with ``widths="latency"`` (the
    knapsack) and ``widths="steps"`` (the criterion's channels snapped to step ends) (``LATENCY_ROWS``;
    ``budget="latency"``: ``apply_variant`` needs ``target_latency``; they measure a latency table on
    this machine, so counts are not fixed baselines)."""
    if residual not in _RESIDUAL_EXTRAS:
        raise ValueError(f"unknown residual style {residual!r}; choose from {', '.join(_RESIDUAL_EXTRAS)} "
                         "(pass slimbench.models.model_info(name).residual)")
    for r in ratios:
        if not 0.0 < r < 1.0:
            raise ValueError(f"ratio {r} is outside (0, 1); pass ratios such as 0.3 0.5 0.7")
    out = [UNPRUNED] + [Variant(m, r, round_to=round_to) for m in methods for r in ratios]
    extra = _RESIDUAL_EXTRAS[residual]
    if extras and extra:
        out += [Variant("network_slimming", r, round_to=round_to, **extra) for r in ratios]
    if latency_aware:
        middle = latency_reference(ratios)
        if middle not in out:
            out.append(middle)
        out += [Variant("network_slimming", middle.ratio, widths=w, budget="latency") for w in LATENCY_ROWS]
    return out


def latency_reference(ratios: Sequence[float]) -> Variant:
    """The row the latency-aware row is matched to in latency: network slimming, ``round_to=8``, at the
    middle of ``ratios``."""
    return Variant("network_slimming", sorted(ratios)[len(ratios) // 2], round_to=8)


def apply_variant(model: nn.Module, example_inputs: ExampleInputs, variant: Variant,
                  options: Mapping | None = None) -> tuple[nn.Module, slimbench.PruningPlan | None]:
    """(pruned model, plan); the unpruned variant returns the model itself and no plan. ``options``: plan
    options added to the variant's, e.g. ``{"latency": {"backend": "ort", "threads": 1, "batch": 1}}``
    for a latency-aware variant (where and how its latency table is measured)."""
    if variant.method == "unpruned":
        return model, None
    if variant.budget == "latency" and (options or {}).get("target_latency") is None:
        raise ValueError(f"{variant.label} is planned to a latency: pass options={{'target_latency': ...}}")
    with warnings.catch_warnings():
        # "gamma cannot rank channels" is expected on untrained models; the report says how gamma was made.
        warnings.simplefilter("ignore", UserWarning)
        plan = slimbench.plan(model, example_inputs, **{**variant.plan_options(), **(options or {})})
        return slimbench.prune(model, example_inputs, plan=plan), plan


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_model(model: nn.Module, example_inputs: ExampleInputs) -> dict[str, int | None]:
    """params, MACs and FLOPs. thop_ext (pruning-aware thop) when installed; otherwise MACs from
    ``slimbench.core.counting.conv_linear_macs`` (torch's FlopCounterMode, conv + linear) and FLOPs None."""
    from slimbench.core.inputs import as_example_inputs

    inputs = as_example_inputs(example_inputs)
    try:
        from thop_ext import profile
    except ImportError:
        profile = None
    if profile is not None:
        result = profile(model, inputs)
        return {"params": int(result.params), "macs": int(result.macs), "flops": int(result.flops)}
    from slimbench.core.counting import conv_linear_macs

    return {"params": param_count(model), "macs": conv_linear_macs(model, inputs), "flops": None}
