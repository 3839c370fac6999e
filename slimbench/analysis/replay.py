"""Replaying a traced model on meta tensors: the entry points tracing and the channel graph use.

``meta_call`` runs one leaf module on meta tensors through its channel rule; ``label_graph``
labels a whole traced graph (``interpreter.ChannelInterpreter``).
"""

from __future__ import annotations

from slimbench.analysis.interpreter import ChannelInterpreter, label_graph
from slimbench.core.rules import meta_call

__all__ = ["meta_call", "label_graph", "ChannelInterpreter"]
