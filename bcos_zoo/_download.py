"""Fetching weight files: the cache directory, offline mode, verified downloads and file locks.

Every file we write into the cache first goes to a temporary file in the destination directory,
is verified, and is then moved into place with ``os.replace`` (atomic on POSIX and Windows), so a
reader never sees half a file. Producers of the same file serialise on a ``<file>.lock``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import requests
from filelock import FileLock
from tqdm.auto import tqdm

__all__ = [
    "DownloadError",
    "HashMismatchError",
    "OfflineError",
    "atomic_write",
    "cache_dir",
    "cached_file_ok",
    "check_sha256",
    "discard",
    "download_url",
    "file_lock",
    "hf_hub_file",
    "offline_reason",
    "recorded_sha256",
    "sha256_file",
    "write_sidecar",
]  # fmt: skip

log = logging.getLogger(__name__)

CACHE_ENV = "BCOS_ZOO_CACHE"
OFFLINE_ENVS = ("BCOS_ZOO_OFFLINE", "HF_HUB_OFFLINE")
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A weight file could not be fetched (network error, HTTP error, truncated transfer)."""


class HashMismatchError(DownloadError):
    """A downloaded file does not have the SHA-256 its record promises."""


class OfflineError(DownloadError):
    """Offline mode is on and the file is not in the cache."""


def cache_dir() -> Path:
    """``$BCOS_ZOO_CACHE``, else ``$XDG_CACHE_HOME/bcos_zoo``, else ``~/.cache/bcos_zoo``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "bcos_zoo"


def offline_reason() -> str | None:
    """The environment variable that turned offline mode on (read at call time), or ``None``."""
    for var in OFFLINE_ENVS:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return None


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(actual: str, expected: str | None, what: str) -> None:
    """Raise :class:`HashMismatchError` unless ``actual`` starts with ``expected`` (a full hash or a prefix)."""
    if expected and not actual.startswith(expected.lower()):
        kind = "SHA-256" if len(expected) == 64 else "SHA-256 prefix"
        raise HashMismatchError(f"{kind} mismatch for {what}: expected {expected}, got {actual}")


@contextlib.contextmanager
def atomic_write(dest: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; move it to ``dest`` on success, delete it on error."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Inter-process lock for producing ``path`` (held on ``<path>.lock``)."""
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


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_sidecar(path: Path, sha256: str) -> None:
    """Record ``path``'s SHA-256 next to it, in ``sha256sum`` format."""
    with atomic_write(_sidecar(path)) as tmp:
        tmp.write_text(f"{sha256}  {path.name}\n")


def recorded_sha256(path: Path) -> str | None:
    """The SHA-256 recorded for ``path`` when it was cached, if any."""
    sidecar = _sidecar(path)
    text = sidecar.read_text().split() if sidecar.is_file() else []
    return text[0] if text else None


def discard(path: Path) -> None:
    """Delete a cached file and its SHA-256 record."""
    for p in (path, _sidecar(path)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def cached_file_ok(path: Path) -> bool:
    """Whether ``path`` exists and still has the SHA-256 recorded when it was cached.

    A file without a record or with a different hash (truncated, corrupt, half-written by a
    crashed process) is deleted, so the caller fetches it again.
    """
    if not path.is_file():
        return False
    recorded = recorded_sha256(path)
    if recorded is not None and sha256_file(path) == recorded:
        return True
    log.warning("cached file %s is incomplete or corrupt (SHA-256 check failed); fetching it again", path)
    discard(path)
    return False


def _stream(url: str, dest: Path, progress: bool) -> str:
    """GET ``url`` into ``dest``; return the SHA-256 of what arrived."""
    digest, received, total = hashlib.sha256(), 0, None
    headers = {"User-Agent": "bcos-zoo", "Accept-Encoding": "identity"}
    try:
        with requests.get(url, stream=True, timeout=(15, 60), headers=headers) as r:
            if r.status_code != 200:
                raise DownloadError(f"GET {url} failed: HTTP {r.status_code} {r.reason}")
            total = int(r.headers["Content-Length"]) if "Content-Length" in r.headers else None
            bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name.split(".part")[0],
                       disable=None if progress else True)  # fmt: skip
            with open(dest, "wb") as f, bar:
                for chunk in r.iter_content(_CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except requests.RequestException as e:
        raise DownloadError(f"download of {url} failed after {received} bytes: {e}") from e
    if total is not None and received != total:
        raise DownloadError(f"download of {url} was cut off after {received} of {total} bytes")
    return digest.hexdigest()


def download_url(url: str, dest: Path, *, sha256: str | None = None, progress: bool = True) -> str:
    """Download ``url`` to ``dest`` atomically, checking ``sha256`` (full or prefix) before the move.

    Returns:
        The full SHA-256 of the file. On any failure nothing is left at ``dest``.

    Example:
        >>> download_url("https://example.org/w-ab12cd34ef.pth", Path("w.pth"), sha256="ab12cd34ef")
    """
    log.info("downloading %s to %s", url, dest)
    with atomic_write(dest) as tmp:
        actual = _stream(url, tmp, progress)
        check_sha256(actual, sha256, url)
    return actual


def hf_hub_file(repo_id: str, filename: str, revision: str, *, offline: bool, force: bool = False) -> Path:
    """Fetch a hub file with ``hf_hub_download`` into the Hugging Face cache.

    ``HF_ENDPOINT`` and ``HF_HUB_CACHE`` are read now rather than when ``huggingface_hub`` was
    imported, so they can be changed at run time; ``HF_TOKEN`` and ``HF_HOME`` behave as usual.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = hf_hub_download(
            repo_id, filename, revision=revision, endpoint=os.environ.get("HF_ENDPOINT") or None,
            cache_dir=os.environ.get("HF_HUB_CACHE") or None, local_files_only=offline, force_download=force,
            library_name="bcos-zoo",
        )  # fmt: skip
    except LocalEntryNotFoundError as e:
        raise (OfflineError if offline else DownloadError)(f"not in the Hugging Face cache: {e}") from e
    except (HfHubHTTPError, EntryNotFoundError, OSError, ValueError) as e:
        raise DownloadError(f"hf_hub_download failed: {type(e).__name__}: {e}") from e
    return Path(path)
