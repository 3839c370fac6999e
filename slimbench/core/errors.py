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

import difflib
import signal
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

__all__ = ["SlimbenchError", "SlimbenchValueError", "SlimbenchRuntimeError", "Terminated", "check_keywords",
           "sigterm_raises"]


class SlimbenchError(Exception):
    """Base of every error slimbench raises on purpose."""


class SlimbenchValueError(SlimbenchError, ValueError):
    """A wrong argument, option or file content; the message says which and what to do."""


class SlimbenchRuntimeError(SlimbenchError, RuntimeError):
    """The request was valid but the work could not be done (disk full, interrupted, ...)."""


def check_keywords(where: str, given: Iterable[str], allowed: Iterable[str],
                   aliases: Mapping[str, str] | None = None) -> None:
    """Refuse keywords ``where`` does not take, naming the one probably meant.

    ``aliases`` maps names other tools use (``prune_ratio``) to ours (``ratio``).
    """
    allowed = sorted(set(allowed))
    aliases = dict(aliases or {})
    for key in given:
        if key in allowed:
            continue
        if key in aliases:
            hint = f"; did you mean {aliases[key]}?"
        else:
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
        raise TypeError(f"{where}() got an unexpected keyword argument {key!r}{hint} "
                        f"(it takes {', '.join(allowed)})")


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
