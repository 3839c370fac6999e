"""The one writer of files: whole or not at all, and never replacing what is at the path.

- A regular file (or a new one) is written to a temporary name in the same folder, flushed, given
  the existing file's mode (or the umask's for a new file, as ``open`` would) and renamed over it.
- A symlink is written through: its target is replaced, the link stays a link.
- A device node, a FIFO or ``-`` (stdout) is written directly (a rename would replace the node).
- A full disk is reported as "no space left on device", never as success.

:func:`check_destination` validates a destination before long work starts; :func:`write_text_or_rescue`
keeps results that cannot be written where asked in a temporary file and says where.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from slimbench.core.errors import SlimbenchRuntimeError, SlimbenchValueError

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_bytes", "check_destination", "write_text_or_rescue",
           "STDOUT"]

STDOUT = "-"


def _umask() -> int:
    try:  # Linux reports it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _is_special(path: Path) -> bool:
    """A device node, FIFO or socket (after following symlinks): written in place, never renamed over."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _no_space(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)  # torch.save reports a failed write as "[enforce fail at inline_container.cc:NNN] ..."
    return "inline_container.cc" in text or "No space left" in text or "file write failed" in text


def _write_failed(path: str | Path, error: BaseException) -> SlimbenchRuntimeError:
    detail = error.strerror if isinstance(error, OSError) and error.strerror else \
        (str(error).splitlines() or [repr(error)])[0]
    if _no_space(error):
        detail = "" if isinstance(error, OSError) else f" ({detail})"
        return SlimbenchRuntimeError(f"cannot write {path}: no space left on device{detail}; free some space "
                                     "or write elsewhere")
    return SlimbenchRuntimeError(f"cannot write {path}: {type(error).__name__}: {error}")


def check_destination(path: str | os.PathLike, *, option: str = "output", create_parent: bool = False) -> Path:
    """Fail now, not after the work, if ``path`` cannot be written: a folder, an unwritable file or
    folder, a missing folder (created with ``create_parent``), or a full disk. ``-`` is stdout."""
    if str(path) == STDOUT:
        return Path(STDOUT)
    path = Path(path)
    where = f"{option} {path}"
    if path.is_dir():
        raise SlimbenchValueError(f"{where} is a folder; give a file name inside it")
    if _is_special(path):
        if not os.access(path, os.W_OK):
            raise SlimbenchValueError(f"{where} is not writable")
        return path
    real = path.resolve()  # a symlink is written through to its target
    folder = real.parent
    if not folder.exists() and create_parent:
        folder.mkdir(parents=True, exist_ok=True)
    if not folder.is_dir():
        raise SlimbenchValueError(f"{where}: folder {str(folder)!r} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SlimbenchValueError(f"{where}: folder {str(folder)!r} is not writable")
    if real.exists() and not os.access(real, os.W_OK):
        raise SlimbenchValueError(f"{where} is read-only; make it writable or choose another name")
    if shutil.disk_usage(folder).free == 0:
        raise SlimbenchRuntimeError(f"{where}: no space left on device")
    return path


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path to write; when the block succeeds its content lands at ``path``
    (see the module docstring for regular files, symlinks, devices, FIFOs and ``-``), otherwise
    it is removed and ``path`` is left as it was. Write errors are :class:`SlimbenchRuntimeError`,
    a full disk says so."""
    direct = str(path) == STDOUT or _is_special(Path(path))
    target = Path(path) if direct else Path(path).resolve()
    folder = None if direct else target.parent
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=folder)
    except OSError as error:
        raise _write_failed(path, error) from error
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if direct:
            _copy_into(tmp, target)
        else:
            mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else 0o666 & ~_umask()
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, target)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) or (isinstance(error, RuntimeError) and _no_space(error)
                                          and not isinstance(error, SlimbenchRuntimeError)):
            raise _write_failed(path, error) from error
        raise
    if direct:
        tmp.unlink(missing_ok=True)


def _copy_into(source: Path, target: Path) -> None:
    """Write ``source``'s bytes to stdout or into an existing device / FIFO (no truncation, no rename)."""
    if str(target) == STDOUT:
        sys.stdout.flush()
        out = getattr(sys.stdout, "buffer", None)
        data = source.read_bytes()
        if out is not None:
            out.write(data)
            out.flush()
        else:  # a text stream without a buffer (e.g. pytest's capture)
            sys.stdout.write(data.decode())
            sys.stdout.flush()
        return
    with open(source, "rb") as src, open(target, "wb", buffering=0) as dst:
        shutil.copyfileobj(src, dst)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    if not isinstance(text, str):
        raise TypeError(f"atomic_write_text writes a str, got {type(text).__name__}")
    return atomic_write_bytes(path, text.encode())


def write_text_or_rescue(path: str | os.PathLike, text: str, *, what: str = "results") -> Path:
    """Write ``text`` to ``path``; if that fails, keep it in a temporary file and raise an error
    that names both (results already computed are never lost to a failed write)."""
    try:
        return atomic_write_text(path, text)
    except (OSError, SlimbenchRuntimeError) as error:
        fd, rescue = tempfile.mkstemp(prefix="slimbench-rescued-", suffix=Path(str(path)).suffix or ".txt")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        raise SlimbenchRuntimeError(f"{error}; the {what} were saved to {rescue} instead") from error
