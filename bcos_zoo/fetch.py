"""Fetching weight files: the cache, offline mode, verified downloads. Knows nothing of models.

:func:`weight_file` turns a :class:`~bcos_zoo.records.WeightSpec` (and :func:`source_file` a single
source given as ``pretrained=URL`` or ``hf-hub:...``) into a verified local ``.safetensors`` file:

- a :class:`PackageFile` is checked against its SHA-256 and used in place;
- a cached file is used when it still has the SHA-256 recorded when it was written and was made
  from a file the record names;
- a file whose publisher gives no hash (``UrlFile(trust_on_first_use=True)``) is trusted on its
  first download: its SHA-256 is recorded in ``<cache entry>.trusted.sha256`` (kept when the entry
  is evicted) with a :class:`~bcos_zoo.errors.TrustOnFirstUseWarning`, and every later download
  must have that SHA-256 or is refused with a :class:`~bcos_zoo.errors.HashMismatchError`;
- otherwise the sources are tried in order. A download goes to a temporary file, is checked
  (SHA-256, then parsed as a checkpoint) and only then moved into the cache, so nothing unverified
  ever enters it. A PyTorch ``.pth`` is read once with ``torch.load(weights_only=True)`` and stored as
  safetensors with the same keys (mapping keys to a model's layout is the builder's job).

Cache: ``$BCOS_ZOO_CACHE``, else ``$XDG_CACHE_HOME/bcos_zoo``, else ``~/.cache/bcos_zoo``;
``weights/<arch>.<tag>.safetensors`` for registered weights, ``adhoc/<key>.safetensors`` for URLs.
``BCOS_ZOO_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` serves from the caches only.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import requests
from tqdm.auto import tqdm

from .checkpoint import check_finite, checkpoint_format, read_header, read_state_dict, save_weights
from .errors import CheckpointError, DownloadError, HashMismatchError, OfflineError, TrustOnFirstUseWarning
from .files import atomic_write, file_lock, remove_stale_parts, sha256_file, temporary_next_to
from .records import RELEASE_URL_ENV, HubFile, PackageFile, Source, UrlFile, WeightHeader, WeightSpec, redact_url
from .version import __version__

__all__ = [
    "CACHE_ENV", "OFFLINE_ENVS", "cache_dir", "offline_reason", "weight_file", "source_file", "cache_state",
    "evict", "trust_record",
]  # fmt: skip

log = logging.getLogger(__name__)

CACHE_ENV = "BCOS_ZOO_CACHE"
OFFLINE_ENVS = ("BCOS_ZOO_OFFLINE", "HF_HUB_OFFLINE")
_CHUNK = 1 << 20
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def cache_dir() -> Path:
    """``$BCOS_ZOO_CACHE``, else ``$XDG_CACHE_HOME/bcos_zoo``, else ``~/.cache/bcos_zoo`` (read at call time)."""
    if os.environ.get(CACHE_ENV):
        path = Path(os.environ[CACHE_ENV]).expanduser()
    else:
        path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "bcos_zoo"
    if path.exists() and not path.is_dir():
        raise DownloadError(f"the bcos-zoo cache {path} is a file, not a folder: point {CACHE_ENV} at a folder")
    return path


def offline_reason() -> str | None:
    """The environment variable that turned offline mode on (read at call time), or ``None``."""
    for var in OFFLINE_ENVS:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return None


def _check_sha256(actual: str, expected: str | None, what: str) -> None:
    """Raise :class:`HashMismatchError` unless ``actual`` starts with ``expected`` (a full hash or a prefix)."""
    if expected and not actual.startswith(expected.lower()):
        kind = "SHA-256" if len(expected) == 64 else "SHA-256 prefix"
        raise HashMismatchError(f"{kind} mismatch for {what}: expected {expected}, got {actual}")


# ------------------------------------------------------------------------------ SHA-256 records of the cache


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _stamp(path: Path) -> str:
    """Size and modification time: what changes when a file is rewritten, truncated or replaced."""
    st = path.stat()
    return f"# size={st.st_size} mtime_ns={st.st_mtime_ns}"


def _write_sidecar(path: Path, sha256: str) -> None:
    """``<file>.sha256`` in ``sha256sum`` format, plus the file's stamp when it was verified."""
    with atomic_write(_sidecar(path)) as tmp:
        tmp.write_text(f"{sha256}  {path.name}\n{_stamp(path)}\n")


def _sidecar_lines(path: Path) -> list[str]:
    try:
        return _sidecar(path).read_bytes().decode("ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return []


def _recorded_sha256(path: Path) -> str | None:
    """The SHA-256 recorded for ``path`` when it was cached; ``None`` if missing or unreadable."""
    words = (_sidecar_lines(path) or [""])[0].split()
    return words[0] if words and len(words[0]) == 64 else None


def _unchanged_since_verified(path: Path) -> bool:
    """Whether ``path`` has the size and modification time recorded when its SHA-256 was checked."""
    lines = _sidecar_lines(path)
    return _recorded_sha256(path) is not None and lines[1:2] == [_stamp(path)]


def evict(path: Path) -> None:
    """Delete a file of the bcos-zoo cache and its SHA-256 record (files elsewhere are left alone)."""
    if cache_dir().resolve() not in Path(path).resolve().parents:
        return
    for p in (Path(path), _sidecar(Path(path))):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _cached_ok(path: Path) -> bool:
    """Whether ``path`` exists and still has its recorded SHA-256; a corrupt entry is deleted.

    The file is hashed again only when its size or modification time differ from when it was verified.
    """
    if not path.is_file():
        return False
    if _unchanged_since_verified(path):
        return True
    recorded = _recorded_sha256(path)
    if recorded is not None and sha256_file(path) == recorded:
        _write_sidecar(path, recorded)  # a record of an older version, or a touched file: stamp it anew
        return True
    log.warning("cached file %s is incomplete or corrupt (SHA-256 check failed); fetching it again", path)
    evict(path)
    return False


def _made_from_record(spec: WeightSpec, path: Path) -> bool:
    """Whether a cached file came from a file the record names (by hash, or the one trusted on first
    use), so that a record that now points to other files (a new version, another mirror) is fetched again."""
    expected = [h for s in spec.sources for h in (s.sha256, getattr(s, "sha256_prefix", None)) if h]
    trusted = _trusted_sha256(path) if spec.trust_on_first_use else None
    expected += [trusted] if trusted else []
    made_from = [_recorded_sha256(path) or "", read_header(path).source_sha256 or ""]
    if not expected or any(a.startswith(e) for a in made_from if a for e in expected):
        return True
    log.warning("cached %s was made from another file than %s names; fetching it again", path, spec.name)
    evict(path)
    return False


# ------------------------------------------------------------------------------------ trust on first use


def trust_record(entry: Path) -> Path:
    """Where the SHA-256 of a file without a published hash is kept after its first download:
    ``<name>.trusted.sha256`` next to the cache entry ``<name>.safetensors`` made from it."""
    return entry.with_name(entry.name.removesuffix(".safetensors") + ".trusted.sha256")


def _trusted_sha256(entry: Path) -> str | None:
    """The SHA-256 trusted on the first download of the file behind ``entry``; ``None`` before that."""
    record = trust_record(entry)
    try:
        words = record.read_bytes().decode("ascii").split()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        words = []
    if words and _SHA256_RE.match(words[0]):
        return words[0]
    raise DownloadError(f"the trust-on-first-use record {record} is damaged; delete it to trust the file anew")


def _trust(entry: Path, digest: str, url: str, name: str) -> None:
    """Record ``digest`` as the trusted SHA-256 of ``url`` (atomically) and say so in a warning."""
    record = trust_record(entry)
    with atomic_write(record) as tmp:
        tmp.write_text(f"{digest}  {redact_url(url)}\n")
    warnings.warn(TrustOnFirstUseWarning(
        f"{name}: {redact_url(url)} publishes no hash, so it was trusted on first use: its SHA-256 {digest} is "
        f"recorded in {record}, and a later download with another SHA-256 will be refused"
    ), stacklevel=2)  # fmt: skip


def _changed_since_trusted(url: str, digest: str, trusted: str, entry: Path) -> HashMismatchError:
    record = trust_record(entry)
    return HashMismatchError(
        f"{redact_url(url)} is not the file trusted on its first download: SHA-256 mismatch, expected {trusted} "
        f"(recorded in {record}), got {digest}; the file was refused. If the publisher really replaced it, "
        f"delete {record} and load the weights again to trust the new file."
    )


# ------------------------------------------------------------------------------------------------ HTTP


def _content_length(r: requests.Response) -> int | None:
    """The announced size of the body as it arrives (``None`` if unknown, or if the server compressed it)."""
    if r.headers.get("Content-Encoding", "identity").lower() not in ("identity", ""):
        return None  # requests decodes it, so the decoded size differs from the announced one
    text = r.headers.get("Content-Length")
    if text is None:
        return None
    if not text.strip().isdigit():
        raise DownloadError(f"GET {redact_url(r.url)}: the server sent a malformed Content-Length {text[:40]!r}")
    return int(text)


def _stream(url: str, dest: Path, progress: bool) -> str:
    """GET ``url`` into ``dest``; return the SHA-256 of what arrived."""
    digest, received, total = hashlib.sha256(), 0, None
    headers = {"User-Agent": f"bcos-zoo/{__version__}", "Accept-Encoding": "identity"}
    shown = redact_url(url)
    try:
        with requests.get(url, stream=True, timeout=(15, 60), headers=headers) as r:
            if r.status_code != 200:
                raise DownloadError(f"GET {shown} failed: HTTP {r.status_code} {r.reason}")
            total = _content_length(r)
            bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=Path(shown).name,
                       disable=None if progress else True)  # fmt: skip
            with open(dest, "wb") as f, bar:
                for chunk in r.iter_content(_CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except requests.RequestException as e:
        raise DownloadError(f"download of {shown} failed after {received} bytes: {redact_url(str(e))}") from e
    if total is not None and received != total:
        raise DownloadError(f"download of {shown} was cut off after {received} of {total} bytes")
    return digest.hexdigest()


def _hub_download(source: HubFile, *, offline: bool, force: bool = False) -> Path:
    """``hf_hub_download`` into the Hugging Face cache (``HF_ENDPOINT``/``HF_HUB_CACHE`` read now)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = hf_hub_download(
            source.repo_id, source.filename, revision=source.revision, endpoint=os.environ.get("HF_ENDPOINT") or None,
            cache_dir=os.environ.get("HF_HUB_CACHE") or None, local_files_only=offline, force_download=force,
            library_name="bcos-zoo", library_version=__version__,
        )  # fmt: skip
    except LocalEntryNotFoundError as e:
        raise (OfflineError if offline else DownloadError)(f"not in the Hugging Face cache: {e}") from e
    except (HfHubHTTPError, EntryNotFoundError, OSError, ValueError) as e:
        raise DownloadError(f"hf_hub_download failed: {type(e).__name__}: {e}") from e
    return Path(path)


# ----------------------------------------------------------------------------------------- into the cache


def _store(raw: Path, target: Path, header: WeightHeader, *, move: bool) -> Path:
    """Verify a fetched checkpoint and put it at ``target`` as safetensors (atomically, with its SHA-256 record).

    A safetensors file is kept as it is (moved, or copied when ``move`` is false); a PyTorch file is read
    once (``weights_only=True``) and rewritten as safetensors with the same keys and ``header``.
    """
    try:
        state = read_state_dict(raw)  # parses (and so verifies) either format
        check_finite(state, header.source or str(raw))
    except CheckpointError as e:
        raise CheckpointError(f"the file fetched from {header.source} is not usable: {e}") from None
    if checkpoint_format(raw) == "safetensors":
        digest = sha256_file(raw)
        if move:
            os.replace(raw, target)
        else:
            with atomic_write(target) as tmp:
                shutil.copyfile(raw, tmp)
    else:
        digest = save_weights(state, target, header)
    _write_sidecar(target, digest)
    return target


def _from_url(source: UrlFile, target: Path, header: WeightHeader) -> Path:
    url, expected = source.describe(), source.sha256 or source.sha256_prefix
    trusted = _trusted_sha256(target) if source.trust_on_first_use else None
    dropped = cache_dir() / "downloads" / source.filename  # an official file a user put here by hand
    dropped_sha = sha256_file(dropped) if expected and dropped.is_file() else ""
    if dropped_sha and dropped_sha.startswith(expected):
        return _store(dropped, target, replace(header, source_sha256=dropped_sha), move=False)
    if offline_reason():
        raise OfflineError(f"{redact_url(url)} is not cached" + (f" (nor is {dropped})" if expected else ""))
    remove_stale_parts(target.parent)
    with temporary_next_to(target) as tmp:
        digest = _stream(url, tmp, progress=True)
        if trusted is not None and digest != trusted:
            raise _changed_since_trusted(url, digest, trusted, target)
        _check_sha256(digest, expected, redact_url(url))
        stored = _store(tmp, target, replace(header, source_sha256=digest), move=True)
    if source.trust_on_first_use and trusted is None:  # only a file that parsed as a checkpoint is trusted
        _trust(target, digest, url, header.weight or redact_url(url))
    return stored


def _from_hub(source: HubFile, target: Path, header: WeightHeader) -> Path:
    offline = offline_reason() is not None
    path = _hub_download(source, offline=offline)
    if source.sha256 and sha256_file(path) != source.sha256:
        if offline:
            _check_sha256(sha256_file(path), source.sha256, f"cached {source.describe()} ({path})")
        log.warning("cached %s is corrupt (SHA-256 check failed); downloading it again", path)
        path = _hub_download(source, offline=False, force=True)
        _check_sha256(sha256_file(path), source.sha256, source.describe())
    if checkpoint_format(path) == "safetensors":
        return path  # used in place: hf_hub_download checked size and ETag, the builder parses it
    return _store(path, target, replace(header, source_sha256=sha256_file(path)), move=False)


def _fetch(sources: tuple[Source, ...], target: Path, name: str, header: WeightHeader) -> Path:
    failures: list[tuple[Source, DownloadError]] = []
    for source in sources:
        try:
            recorded = replace(header, source=_describe(source))
            if isinstance(source, HubFile):
                return _from_hub(source, target, recorded)
            return _from_url(source, target, recorded)
        except DownloadError as e:
            log.info("source %s of %s failed: %s", redact_url(source.describe()), name, e)
            failures.append((source, e))
    raise _fetch_failed(name, target, failures)


def _describe(source: Source) -> str:
    """How a source is recorded in a header: no credentials, no query tokens."""
    if isinstance(source, HubFile):
        return f"hf-hub:{source.repo_id}/{source.filename}@{source.revision}"
    return redact_url(source.describe())


def _fetch_failed(name: str, target: Path, failures: list[tuple[Source, DownloadError]]) -> DownloadError:
    kinds = {type(e) for _, e in failures}
    cls = kinds.pop() if len(kinds) == 1 else DownloadError
    lines = [f"could not get weights {name}:"] + [f"  - {redact_url(s.describe())}: {e}" for s, e in failures]
    var = offline_reason()
    if cls is OfflineError:
        hashed = any(isinstance(s, UrlFile) and (s.sha256 or s.sha256_prefix) for s, _ in failures)
        drop = f"copy an official .pth above into {cache_dir() / 'downloads'}/, " if hashed else ""
        lines.append(
            f"Offline mode is on ({var}=1) and the weights are not in the cache ({target}). Unset {var} to "
            f"download them, {drop}copy a bcos-zoo cache (set BCOS_ZOO_CACHE), or pass pretrained='/path/to/file'."
        )
    elif any(isinstance(s, UrlFile) and s.mirror_env for s, _ in failures):
        lines.append(f"To use a mirror of the release, set {RELEASE_URL_ENV}; or download the file and pass its path.")
    return cls("\n".join(lines))


def _package_file(source: PackageFile) -> Path:
    """The shipped file, after checking it is intact."""
    if not source.path.is_file():
        raise CheckpointError(f"{source.path} is missing from the installed package; reinstall bcos-zoo")
    actual = sha256_file(source.path)
    if actual != source.sha256:
        raise CheckpointError(
            f"shipped weights {source.path} are damaged (SHA-256 {actual}, expected {source.sha256}); reinstall bcos-zoo"
        )
    return source.path


def _registered_target(spec: WeightSpec) -> Path:
    return cache_dir() / "weights" / f"{spec.name}.safetensors"


def weight_file(spec: WeightSpec) -> Path:
    """A verified local ``.safetensors`` file of the record: shipped, cached, or fetched now.

    Example:
        >>> weight_file(bcos_zoo.get_weights("bcos_resnet50"))
        PosixPath('/home/me/.cache/bcos_zoo/weights/bcos_resnet50.long_in1k.safetensors')
    """
    shipped = [s for s in spec.sources if isinstance(s, PackageFile)]
    if shipped:
        return _package_file(shipped[0])
    target = _registered_target(spec)
    with file_lock(target):
        if _cached_ok(target) and _made_from_record(spec, target):
            return target
        header = WeightHeader(arch=spec.arch, weight=spec.name, bcos_zoo_version=__version__)
        return _fetch(spec.sources, target, spec.name, header)


def source_file(source: HubFile | UrlFile) -> Path:
    """A verified local ``.safetensors`` file for a URL or hub file given directly as ``pretrained=``.

    Each distinct source has its own cache entry (keyed by a hash of its full address), so two URLs
    that end in the same file name never share one.
    """
    key = hashlib.sha256(repr(source).encode()).hexdigest()[:24]
    target = cache_dir() / "adhoc" / f"{key}.safetensors"
    with file_lock(target):
        if _cached_ok(target):
            return target
        return _fetch((source,), target, redact_url(source.describe()), WeightHeader(bcos_zoo_version=__version__))


def cache_state(spec: WeightSpec) -> str:
    """``"shipped"`` (inside the package), ``"yes"`` (in the bcos-zoo or Hugging Face cache) or ``"no"``.

    Reads only: nothing is fetched, and a damaged entry reads as ``"no"``.
    """
    if any(isinstance(s, PackageFile) for s in spec.sources):
        return "shipped"
    target = _registered_target(spec)
    if target.is_file() and (_unchanged_since_verified(target) or _recorded_sha256(target) == sha256_file(target)):
        return "yes"
    from huggingface_hub import try_to_load_from_cache

    hub = [s for s in spec.sources if isinstance(s, HubFile)]
    cached = any(isinstance(try_to_load_from_cache(s.repo_id, s.filename, revision=s.revision), str) for s in hub)
    return "yes" if cached else "no"
