"""Errors slimbench raises on purpose: bad input, bad files, failed writes.

The hierarchy is small on purpose. Catch :class:`SlimbenchError` for "slimbench refused or could not
do what was asked"; the subclasses also derive from the built-in a caller would catch anyway:

- :class:`SlimbenchValueError` (also a ``ValueError``): an argument, option or file content is wrong.
- :class:`SlimbenchRuntimeError` (also a ``RuntimeError``): the input was fine, the work failed
  (a full disk, an interrupted write, a signal).

The ``slimbench`` command turns these (and ``ValueError``, ``FileNotFoundError``, ``TypeError`` from
bad input) into one ``slimbench CMD: error: ...`` line with exit status 2; ``--debug`` shows the traceback.
This module imports nothing heavy (the CLI's ``--help`` path reads it).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["SlimbenchError", "SlimbenchValueError", "SlimbenchRuntimeError", "Terminated",
           "sigterm_raises"]


class SlimbenchError(Exception):
    """Base of every error slimbench raises on purpose."""


class SlimbenchValueError(SlimbenchError, ValueError):
    """A wrong argument, option or file content; the message says which and what to do."""


class SlimbenchRuntimeError(SlimbenchError, RuntimeError):
    """The request was valid but the work could not be done (disk full, interrupted, ...)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (schedulers, ``docker stop``, ``kill``) raised as an interrupt, so that every clean-up
    path Ctrl-C takes (temporary files and folders, partial checkpoints) runs for it too."""


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (once; a second
    SIGTERM during the clean-up is ignored). The previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the clean-up finish
        raise Terminated(f"terminated by signal {signum} (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
