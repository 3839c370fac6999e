"""The options of ``slimbench.plan``, checked once: numbers, conflicts, unknown names, layer names.

Every error is a ``ValueError`` (``TypeError`` for an unknown keyword) naming the argument and what
to pass instead. numpy and torch scalars are accepted wherever a number is.
"""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from slimbench.analysis.graph import RESIDUAL_MODES
from slimbench.core.errors import SlimbenchValueError
from slimbench.pruning.criteria import CRITERIA, Criterion, get_criterion
from slimbench.pruning.importance import Importance, importance_name, resolve_importance

__all__ = ["PlanOptions", "check_options", "check_latency_settings", "as_number", "RESIDUAL_MODES", "BRANCH_MODES",
           "DEFAULT_RATIO"]

BRANCH_MODES = ("keep", "remove", "remove-any")  # remove: the last BN is empty; remove-any: any BN (netslim)
DEFAULT_RATIO = 0.5
KEYWORDS = ("method", "ratio", "target_macs", "round_to", "residual", "branches", "importance",
            "ignored_layers", "layer_ratios", "leaf_modules", "target_latency", "widths", "latency")
WIDTHS = ("channels", "latency", "steps")
LATENCY_WIDTHS = ("latency", "steps")  # widths read off a latency table: planning needs a LatencyModel


def wants_latency_model(options: Mapping) -> bool:
    """Whether plan options ask for latency-aware planning (a target_latency or latency widths)."""
    return options.get("target_latency") is not None or options.get("widths") in LATENCY_WIDTHS
LATENCY_KEYS = ("backend", "threads", "batch", "cache_dir", "progress", "timing", "calibrate")
# ``latency={"timing": {...}}``: measure() options for every timing of the latency model (table, calibration,
# real-model checks); only to shorten a build (tests). A table so built is cached under its own key.
TIMING_KEYS = ("min_time_s", "min_rounds", "max_rounds", "sample_ms", "warmup")
# what users of netslim / Torch-Pruning write, and what slimbench calls it
_ALIASES = {"prune_ratio": "ratio", "prune_method": "method", "channel_select": "residual='select'",
            "pruning_ratio": "ratio", "pruning_ratio_dict": "layer_ratios", "round_to_multiple": "round_to",
            "ignored": "ignored_layers", "per_layer_ratio": "layer_ratios"}


@dataclass
class PlanOptions:
    criterion: Criterion
    ratio: float | None  # None: target_macs or a criterion option decides the amount
    target_macs: float | None
    round_to: int
    residual: str
    branches: str
    importance: str | Importance
    ignored_layers: tuple[str, ...] = ()
    layer_ratios: dict[str, float] = field(default_factory=dict)
    criterion_options: dict = field(default_factory=dict)
    ratio_given: bool = False
    target_latency: float | None = None  # fraction of the unpruned model's measured latency to keep
    widths: str = "channels"  # "latency" / "steps": widths at the ends of latency steps (latency_aware.py)
    latency: object = None  # a LatencyModel, or a dict of LATENCY_KEYS to build one

    def record(self) -> dict:
        """The JSON-serialisable options a plan stores."""
        out = {"residual": self.residual, "branches": self.branches, "round_to": self.round_to,
               "target_macs": self.target_macs, "importance": importance_name(self.importance),
               **self.criterion_options}
        if self.ignored_layers:
            out["ignored_layers"] = list(self.ignored_layers)
        if self.layer_ratios:
            out["layer_ratios"] = dict(self.layer_ratios)
        if self.target_latency is not None or self.widths != "channels":
            out.update(target_latency=self.target_latency, widths=self.widths)
        return out


def as_number(value, name: str) -> float:
    """``value`` as a float: Python, numpy and 0-d torch numbers; bools and anything else refused."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex \
            and value.dtype != torch.bool:
        value = value.detach().cpu().numpy().reshape(())
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, np.floating) and value.dtype.itemsize < 8:
        return float(str(value))  # np.float32(0.3) -> 0.3, not 0.30000001192092896
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return float(value)
    raise SlimbenchValueError(f"{name} must be a number, got {type(value).__name__}: {value!r:.60}")


def _as_int(value, name: str) -> int:
    number = as_number(value, name) if not isinstance(value, int) or isinstance(value, bool) else value
    if isinstance(number, bool) or int(number) != number:
        raise SlimbenchValueError(f"{name} must be a positive integer, got {value!r}")
    return int(number)


def unknown_keyword(name: str) -> TypeError:
    """The error for a keyword no part of ``plan`` takes, with what was probably meant."""
    meant = _ALIASES.get(name)
    if meant is None:
        choices = [*KEYWORDS, *{o for c in CRITERIA.values() for o in c.options}]
        close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
        meant = close[0] if close else None
    hint = f"; did you mean {meant}?" if meant else f"; the options are {', '.join(KEYWORDS)}"
    return TypeError(f"unknown plan option {name!r} (a keyword of slimbench.plan / slimbench.prune){hint}")


def _layer_names(value, model: nn.Module, what: str) -> list[str]:
    names = {id(m): n for n, m in model.named_modules()}
    if isinstance(value, (str, nn.Module)):
        value = [value]
    if not isinstance(value, Iterable):
        raise SlimbenchValueError(f"{what} must be a list of module names (or modules), got {type(value).__name__}")
    out = []
    for item in value:
        if isinstance(item, nn.Module):
            if id(item) not in names:
                raise SlimbenchValueError(f"{what}: a {type(item).__name__} that is not a submodule of the model")
            out.append(names[id(item)])
        elif isinstance(item, str):
            out.append(item)
        else:
            raise SlimbenchValueError(f"{what} holds {item!r:.40}; pass module names such as 'layer1.0.bn1' or modules")
    known = set(names.values())
    for name in out:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise SlimbenchValueError(f"{what}: the model has no module {name!r}{hint}")
    return out


def check_options(model: nn.Module, *, method: str, ratio, target_macs, round_to, residual: str,
                  branches: str, importance, ignored_layers, layer_ratios,
                  criterion_options: Mapping, target_latency=None, widths: str = "channels",
                  latency=None) -> PlanOptions:
    criterion = get_criterion(method)
    foreign = [k for k in criterion_options if k not in {o for c in CRITERIA.values() for o in c.options}]
    if foreign:
        raise unknown_keyword(foreign[0])
    options = {k: (as_number(v, k) if isinstance(v, (torch.Tensor, np.generic, np.ndarray)) else v)
               for k, v in criterion_options.items() if v is not None}
    criterion.check(options)
    amount = [k for k in criterion.sets_amount if k in options]
    if target_latency is not None and (ratio is not None or target_macs is not None or amount):
        given = "ratio" if ratio is not None else "target_macs" if target_macs is not None else amount[0]
        raise SlimbenchValueError(f"target_latency (the fraction of the measured latency to keep) decides how much is "
                         f"pruned, so {given} would be ignored; pass one or the other")
    if amount and (ratio is not None or target_macs is not None):
        given = "ratio" if ratio is not None else "target_macs"
        raise SlimbenchValueError(f"{amount[0]}={options[amount[0]]!r} decides how much {method} prunes, so "
                         f"{given} would be ignored; pass one or the other")
    if ratio is not None and target_macs is not None:
        raise SlimbenchValueError("pass ratio (the fraction of prunable channels to remove) or target_macs (the "
                         "fraction of MACs to keep), not both")
    ratio_given = ratio is not None
    if ratio is None and target_macs is None and target_latency is None and not amount:
        ratio = DEFAULT_RATIO
    if ratio is not None:
        ratio = as_number(ratio, "ratio")
        if not 0 <= ratio < 1:
            raise SlimbenchValueError(f"ratio must be a number in [0, 1) (the fraction of prunable channels "
                             f"to remove), got {ratio!r}")
    if target_macs is not None:
        target_macs = as_number(target_macs, "target_macs")
        if not 0 < target_macs <= 1:
            raise SlimbenchValueError(
                f"target_macs must be in (0, 1], a fraction of the unpruned MACs; got {target_macs!r}")
    round_to = _as_int(round_to, "round_to")
    if round_to < 1:
        raise SlimbenchValueError(f"round_to must be a positive integer, got {round_to!r}")
    if residual not in RESIDUAL_MODES:
        raise SlimbenchValueError(f"residual must be one of {RESIDUAL_MODES}, got {residual!r}")
    if branches not in BRANCH_MODES:
        raise SlimbenchValueError(f"branches must be one of {BRANCH_MODES}, got {branches!r}")
    if branches != "keep" and criterion.threshold is None:
        with_threshold = [c.name for c in CRITERIA.values() if c.threshold is not None]
        raise SlimbenchValueError(f"branches={branches!r} compares a branch's importance with a global threshold, "
                                  f"which {method!r} does not have; use it with method="
                                  f"{' or '.join(map(repr, with_threshold))}")
    if branches != "keep" and ratio is None and target_macs is None and target_latency is None:
        raise SlimbenchValueError(f"branches={branches!r} needs ratio or target_macs to set the threshold, not "
                         f"{amount[0]}")
    _check_latency(target_latency, widths, latency, round_to, branches)
    if target_latency is not None:
        target_latency = as_number(target_latency, "target_latency")
    resolve_importance(importance)
    ignored = tuple(_layer_names(ignored_layers, model, "ignored_layers"))
    if not isinstance(layer_ratios, Mapping):
        raise SlimbenchValueError(
            f"layer_ratios must be a dict {{BatchNorm name: ratio}}, got {type(layer_ratios).__name__}")
    ratios = {}
    for name, value in layer_ratios.items():
        (name,) = _layer_names([name], model, "layer_ratios")
        value = as_number(value, f"layer_ratios[{name!r}]")
        if not 0 <= value < 1:
            raise SlimbenchValueError(f"layer_ratios[{name!r}] must be in [0, 1) (the fraction of that layer's "
                             f"channels to remove), got {value!r}")
        ratios[name] = value
    return PlanOptions(criterion, ratio, target_macs, round_to, residual, branches, importance, ignored,
                       ratios, options, ratio_given, target_latency, widths, latency)


def _check_latency(target_latency, widths, latency, round_to: int, branches: str) -> None:
    """target_latency / widths / latency (latency-aware planning, ``slimbench.pruning.latency_aware``)."""
    if target_latency is not None:
        value = as_number(target_latency, "target_latency")
        if not 0 < value <= 1:
            raise ValueError(f"target_latency must be in (0, 1], the fraction of the unpruned model's measured "
                             f"latency to keep; got {target_latency!r}")
    if widths not in WIDTHS:
        raise ValueError(f"widths must be one of {WIDTHS} ('latency': each layer keeps a width at the end of a "
                         f"measured latency step, chosen for importance per millisecond; 'steps': the "
                         f"criterion's widths moved to the nearest step end), got {widths!r}")
    if widths != "channels" and round_to > 1:
        raise ValueError(f"widths={widths!r} chooses each layer's width from its measured latency steps, so "
                         f"round_to={round_to} would be ignored; pass one or the other")
    if widths != "channels" and branches != "keep":
        raise ValueError(f"widths={widths!r} does not remove residual branches; use branches='keep' with it")
    if latency is not None and target_latency is None and widths == "channels":
        raise ValueError("latency= configures latency-aware planning; pass it with target_latency or "
                         "widths='latency' / 'steps'")
    if isinstance(latency, Mapping):
        check_latency_settings(latency)
    elif latency is not None and not hasattr(latency, "predict"):
        raise ValueError(f"latency must be a LatencyModel (slimbench.pruning.latency_aware.latency_model) or a "
                         f"dict of {', '.join(LATENCY_KEYS)}; got {type(latency).__name__}")


def check_latency_settings(settings: Mapping) -> None:
    """The settings of ``latency={...}`` (``LATENCY_KEYS``): known names, a batch >= 1, known timing options."""
    unknown = sorted(set(settings) - set(LATENCY_KEYS))
    if unknown:
        raise ValueError(f"latency: unknown setting {unknown[0]!r}; the settings are {', '.join(LATENCY_KEYS)}")
    batch = settings.get("batch")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or batch < 1):
        raise ValueError(f"latency: batch must be an integer >= 1 (the batch the table is timed at), got {batch!r}")
    timing = settings.get("timing")
    if timing is not None:
        if not isinstance(timing, Mapping):
            raise ValueError(f"latency: timing must be a dict of {', '.join(TIMING_KEYS)}, got {type(timing).__name__}")
        unknown = sorted(set(timing) - set(TIMING_KEYS))
        if unknown:
            raise ValueError(f"latency: unknown timing option {unknown[0]!r}; the options are {', '.join(TIMING_KEYS)}")
