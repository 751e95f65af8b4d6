"""File primitives the weight cache is built on: hashing, atomic writes and inter-process locks.

Every file bcos-zoo writes into its cache (and every checkpoint it saves) first goes to a
temporary file in the destination folder and is moved into place with ``os.replace`` (atomic on
POSIX and Windows), so a reader never sees half a file. Producers of one file serialise on
``<file>.lock``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock

__all__ = ["sha256_file", "temporary_next_to", "atomic_write", "file_lock", "remove_stale_parts"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def temporary_next_to(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty temporary file in ``dest``'s folder; it is deleted on exit if still there.

    The writer's pid is in its name, so :func:`remove_stale_parts` can tell a dead writer's leftovers.
    The file is created with mode ``0o666`` less the umask, as ``open()`` would (``tempfile.mkstemp``
    makes it ``0o600``, and the file moved into place would then be unreadable to anyone else sharing
    the cache).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    while True:  # O_EXCL: a name another writer drew already is drawn again
        tmp = dest.parent / f".{dest.name}.{os.getpid()}-{secrets.token_hex(4)}.part"
        with contextlib.suppress(FileExistsError):
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_write(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; move it to ``dest`` on success, delete it on error.

    Example:
        >>> with atomic_write(Path("out.json")) as tmp:
        ...     tmp.write_text("{}")
    """
    with temporary_next_to(dest) as tmp:
        yield tmp
        os.replace(tmp, dest)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_parts(folder: str | os.PathLike) -> None:
    """Delete temporaries of :func:`atomic_write` left in ``folder`` by processes that no longer run
    (killed with SIGKILL, or a machine that lost power)."""
    for part in Path(folder).glob(".*.part") if Path(folder).is_dir() else ():
        pid = part.name[: -len(".part")].rsplit(".", 1)[-1].partition("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            log.info("removing %s, left by a process that no longer runs", part)
            with contextlib.suppress(FileNotFoundError):
                part.unlink()


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Inter-process lock for producing ``path`` (held on ``<path>.lock``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{path}.lock")
    try:
        lock.acquire(timeout=1)
    except TimeoutError:
        log.info("waiting for another process to finish writing %s", path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
