"""slimbench's own exceptions: each subclasses the built-in a caller would already catch."""

from __future__ import annotations

__all__ = ["SlimbenchError", "SlimbenchValueError", "SlimbenchRuntimeError"]


class SlimbenchError(Exception):
    """Base class of every error slimbench raises on purpose."""


class SlimbenchValueError(SlimbenchError, ValueError):
    """An argument, a plan or a checkpoint that slimbench cannot use as given."""


class SlimbenchRuntimeError(SlimbenchError, RuntimeError):
    """Something slimbench could not do with this model (trace it, prune it, verify it)."""
