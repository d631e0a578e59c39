"""The one way atrous writes output files: atomically, with the permissions ``open()`` would give.

Every writer (``atrous show``'s JSON, ``atrous compare``'s ``results.jsonl``/``report.md``, the
MNIST-1D cache, every figure) goes through :func:`atomic_write`: the data goes to a temporary file in
the target's directory, is flushed and fsync'd, then ``os.replace``-d onto the target, so a reader,
a crash or Ctrl-C sees the old file or the new one, never half of one. On any exception the
temporary file is removed and the target is untouched.

Permissions: a new file gets ``0o666 & ~umask`` (the temporary file is created with mode 0o666 and
the kernel applies the umask, exactly as for ``open(path, "w")``; ``tempfile.mkstemp`` would give
0o600); an existing file keeps its mode, as ``open(path, "w")`` keeps it.

>>> import os, stat, tempfile
>>> p = os.path.join(tempfile.mkdtemp(), "out", "data.json")
>>> write_json(p, {"size": [67, 67]})
>>> open(p).read()
'{"size": [67, 67]}'
>>> stat.S_IMODE(os.stat(p).st_mode) == 0o666 & ~current_umask()
True
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from typing import IO, Any, Iterator, Union

__all__ = ["atomic_write", "write_text", "write_bytes", "write_json", "current_umask"]

PathLike = Union[str, "os.PathLike[str]"]


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)              # elsewhere: the classic read-by-setting (restored at once)
    os.umask(mask)
    return mask


def _create_temp(directory: str, base: str) -> tuple[int, str]:
    """A new, exclusively created file next to the target, mode 0o666 minus the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {os.path.join(directory, base)!r}")


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "w", *, encoding: str = "utf-8") -> Iterator[IO[Any]]:
    """Open ``path`` for writing (``mode`` ``"w"`` text or ``"wb"`` bytes) through a temporary file
    that replaces ``path`` only when the ``with`` block succeeds. Parent directories are created.

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "report.md")
    >>> with atomic_write(p) as f:
    ...     _ = f.write("# results\\n")
    >>> try:
    ...     with atomic_write(p) as f:
    ...         _ = f.write("half a rep")
    ...         raise KeyboardInterrupt
    ... except KeyboardInterrupt:
    ...     pass
    >>> open(p).read(), sorted(os.listdir(os.path.dirname(p)))    # old content, no temporary left
    ('# results\\n', ['report.md'])
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    target = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(target))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = _create_temp(directory, os.path.basename(target))
    try:
        try:
            old_mode = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            old_mode = None
        if old_mode is not None:
            os.chmod(tmp, old_mode)                    # an existing file keeps its permissions
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": encoding})) as f:
            fd = -1                                    # owned by f now
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):                 # make the rename itself durable (POSIX)
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def write_text(path: PathLike, text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)


def write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_json(path: PathLike, obj: Any, **dump_kwargs: Any) -> None:
    """Write ``json.dumps(obj, **dump_kwargs)`` to ``path`` atomically; nothing is written if ``obj``
    cannot be serialised."""
    write_text(path, json.dumps(obj, **dump_kwargs))
