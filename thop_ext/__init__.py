"""thop, extended for pruned models: live-weight MACs / FLOPs / params through ``thop.profile(custom_ops=...)``.

``profile(model, inputs)`` -> :class:`Profile` with ``.macs`` (conv + linear multiply-accumulates,
bias excluded), ``.flops`` (paper style: 2 x MACs + elementwise ops), ``.params`` (live weights)
and ``.layers`` (per-module rows). See docs/thop_ext.md for the conventions.
"""

from thop_ext.formatting import LayerRow, Profile, human
from thop_ext.profile import profile

__all__ = ["LayerRow", "Profile", "human", "profile"]
