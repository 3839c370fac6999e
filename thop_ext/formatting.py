"""The result of a profile: totals, per-module rows, and how to print them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from tabulate import tabulate

__all__ = ["LayerRow", "Profile", "human"]

_UNITS = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"))


def human(value: float, digits: int = 2) -> str:
    """``125490000 -> '125.49M'``; values below 1000 are printed as they are."""
    for scale, unit in _UNITS:
        if abs(value) >= scale:
            return f"{value / scale:.{digits}f}{unit}"
    return f"{value:g}"


@dataclass(frozen=True)
class LayerRow:
    """One module's share: ``macs`` (conv + linear), ``flops`` (paper style), ``params`` (own, live).

    ``name`` is the qualified module name ("" for the model itself); ``output_shape`` is the shape
    of its last call's (first) output tensor, None if it did not run.
    """

    name: str
    type: str
    macs: int
    flops: int
    params: int
    output_shape: tuple[int, ...] | None


@dataclass(frozen=True)
class Profile:
    """Totals of one profile run.

    ``macs``: multiply-accumulates of conv and linear layers (and functional conv / matmul), bias
    excluded. ``flops``: 2 x MACs + bias adds + elementwise ops (BN, activations, pooling, adds).
    ``params``: live parameters (all parameters when ``skip_zero`` is False).
    """

    macs: int
    flops: int
    params: int
    layers: list[LayerRow] = field(default_factory=list)
    skip_zero: bool = True
    input_shapes: list[tuple[int, ...]] = field(default_factory=list)

    def layer(self, name: str) -> LayerRow:
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(f"no profiled module named {name!r}")

    def table(self, *, tablefmt: str = "simple", exact: bool = False, all_rows: bool = False) -> str:
        """Per-module table (modules that count something) with a total row.

        ``exact``: integers instead of human units; ``all_rows``: include rows that count nothing.
        """
        show = (lambda v: f"{v:,}") if exact else human
        rows = [[r.name or "(model)", r.type, show(r.macs), show(r.flops), show(r.params),
                 "x".join(map(str, r.output_shape)) if r.output_shape else "-"]
                for r in self.layers if all_rows or r.macs or r.flops or r.params]
        rows.append(["total", "", show(self.macs), show(self.flops), show(self.params), ""])
        return tabulate(rows, headers=["module", "type", "MACs", "FLOPs", "params", "output"],
                        tablefmt=tablefmt, disable_numparse=True)

    def summary(self) -> str:
        zero = "live weights" if self.skip_zero else "all weights"
        return f"MACs {human(self.macs)}  FLOPs {human(self.flops)}  params {human(self.params)} ({zero})"

    def to_dict(self) -> dict:
        return asdict(self)

    def __iter__(self) -> Iterator[int]:
        """``macs, params = thop_ext.profile(model, inputs=(x,))`` unpacks as thop's result does."""
        return iter((self.macs, self.params))

    def __str__(self) -> str:
        return self.summary()
