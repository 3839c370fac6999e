"""Trace -> channel graph: which BatchNorm channels can go, together with what, and why not."""
