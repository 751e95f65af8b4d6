"""Pretrained weights: one typed record per weight, a registry of them, and loading them.

A weight is named ``<arch>.<tag>`` (timm's convention): ``bcos_resnet50.long_in1k`` is the
``bcos_resnet50`` architecture trained with the long ImageNet-1k recipe. Its record,
:class:`WeightSpec`, says where the file can be fetched from (tried in order), how to verify it, how
to preprocess inputs, and what a model card needs (metrics, parameters, licence, paper, recipe).

``pretrained=`` of :func:`bcos_zoo.create_model` and of every entry point accepts ``True`` (the
architecture's default weight), a tag (``"long_in1k"``), a weight name or alias, a
:class:`WeightSpec`, a local ``.safetensors``/``.pth`` file, an ``http(s)://`` URL, or
``hf-hub:<org>/<repo>[/<file>][@<revision>]`` (file ``model.safetensors`` by default).

At run time only safetensors files are loaded: an official ``.pth`` is downloaded, verified, read
once with ``torch.load(weights_only=True)``, converted to ``<cache>/weights/<arch>.<tag>.safetensors``
and then deleted. See :func:`bcos_zoo._download.cache_dir` for the cache location and
``BCOS_ZOO_OFFLINE`` / ``HF_HUB_OFFLINE`` for offline mode.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from . import _registry
from ._builder import Pretrained, convert_state_dict, load_checkpoint
from ._checkpoint import load_state_dict_strict, read_state_dict
from ._download import (
    DownloadError,
    HashMismatchError,
    OfflineError,
    atomic_write,
    cache_dir,
    cached_file_ok,
    check_sha256,
    discard,
    download_url,
    file_lock,
    hf_hub_file,
    offline_reason,
    recorded_sha256,
    sha256_file,
    write_sidecar,
)
from .transforms import TransformConfig, create_transform

__all__ = [
    "OFFICIAL_RELEASE_URL",
    "RELEASE_URL_ENV",
    "DownloadError",
    "HashMismatchError",
    "HubFile",
    "OfflineError",
    "PackageFile",
    "Source",
    "UrlFile",
    "WeightSpec",
    "cache_dir",
    "check_user_kwargs",
    "convert_checkpoint",
    "converted_state_dict",
    "default_weights",
    "get_weights",
    "list_models",
    "list_weights",
    "load_pretrained",
    "merge_model_kwargs",
    "register_weights",
    "release_file",
    "resolve_model_name",
    "resolve_pretrained",
    "save_weights",
    "weight_file",
]  # fmt: skip

log = logging.getLogger(__name__)

OFFICIAL_RELEASE_URL = "https://github.com/B-cos/B-cos-v2/releases/download/v0.0.1-weights/"
RELEASE_URL_ENV = "BCOS_ZOO_RELEASE_URL"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")
_HEX_RE = re.compile(r"^[0-9a-f]+$")
PACKAGE_WEIGHTS_DIR = Path(__file__).resolve().parent / "assets" / "weights"
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z]+$")  # torch.hub's "<name>-<sha256 prefix>.<ext>"


def _check_hex(value: str | None, what: str, lengths: range) -> None:
    if value is not None and not (_HEX_RE.match(value) and len(value) in lengths):
        raise ValueError(f"{what} must be {lengths.start}-{lengths.stop - 1} lowercase hex digits, got {value!r}")


@dataclass(frozen=True)
class HubFile:
    """A file in a Hugging Face hub model repository, fetched with ``hf_hub_download``.

    Attributes:
        repo_id: ``<org>/<name>``.
        filename: path of the file in the repository.
        revision: branch, tag or commit.
        sha256: the file's full SHA-256, checked after download when given.
    """

    repo_id: str
    filename: str = "model.safetensors"
    revision: str = "main"
    sha256: str | None = None

    def __post_init__(self) -> None:
        if self.repo_id.count("/") != 1:
            raise ValueError(f"repo_id must look like '<org>/<name>', got {self.repo_id!r}")
        _check_hex(self.sha256, "HubFile.sha256", range(64, 65))

    def describe(self) -> str:
        endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
        return f"{endpoint}/{self.repo_id}/resolve/{self.revision}/{self.filename}"


@dataclass(frozen=True)
class UrlFile:
    """A ``.safetensors`` or official ``.pth`` file at an ``http(s)`` URL, fetched with ``requests``.

    Attributes:
        url: where the file is.
        sha256: the file's full SHA-256 (files we produce).
        sha256_prefix: leading hex digits of its SHA-256 (official files carry them in their name).
        mirror_env: an environment variable that, when set, replaces the URL up to the file name
            (``BCOS_ZOO_RELEASE_URL`` for the official release).
    """

    url: str
    sha256: str | None = None
    sha256_prefix: str | None = None
    mirror_env: str | None = None

    def __post_init__(self) -> None:
        _check_hex(self.sha256, "UrlFile.sha256", range(64, 65))
        _check_hex(self.sha256_prefix, "UrlFile.sha256_prefix", range(8, 65))

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def describe(self) -> str:
        """The URL that will be fetched now (after applying the mirror variable)."""
        base = os.environ.get(self.mirror_env) if self.mirror_env else None
        return f"{base.rstrip('/')}/{self.filename}" if base else self.url


@dataclass(frozen=True)
class PackageFile:
    """A ``.safetensors`` file shipped inside the bcos-zoo package (``bcos_zoo/assets/weights/``):
    available offline, verified against its SHA-256 on every load, never copied to the cache.

    Attributes:
        filename: file name inside ``bcos_zoo/assets/weights/``.
        sha256: the file's full SHA-256.
    """

    filename: str
    sha256: str

    def __post_init__(self) -> None:
        _check_hex(self.sha256, "PackageFile.sha256", range(64, 65))

    @property
    def path(self) -> Path:
        return PACKAGE_WEIGHTS_DIR / self.filename

    def describe(self) -> str:
        return str(self.path)


Source = HubFile | UrlFile | PackageFile


def release_file(
    filename: str, base_url: str = OFFICIAL_RELEASE_URL, mirror_env: str | None = RELEASE_URL_ENV
) -> UrlFile:
    """An asset of a GitHub-style release named ``<name>-<sha256 prefix>.<ext>``; the prefix is checked.

    Example:
        >>> release_file("resnet_50-ead259efe4.pth").sha256_prefix
        'ead259efe4'
    """
    match = _HASH_IN_NAME.search(filename)
    if match is None:
        raise ValueError(f"{filename!r} does not end in '-<sha256 prefix of 8+ hex digits>.<ext>'")
    return UrlFile(base_url.rstrip("/") + "/" + filename, sha256_prefix=match.group(1), mirror_env=mirror_env)


@dataclass(frozen=True)
class WeightSpec:
    """Everything known about one pretrained weight; attached to a loaded model as ``model.pretrained_cfg``.

    Attributes:
        arch: the architecture (a name in :func:`bcos_zoo.list_models`).
        tag: the recipe/dataset, e.g. ``in1k`` or ``long_in1k``; the weight's name is ``arch.tag``.
        sources: where the file can be fetched from, tried in order.
        num_classes: classifier outputs; building with another ``num_classes`` raises.
        transform: the evaluation preprocessing (attached to the model as ``model.transform``).
        classes: class names, index-aligned with the logits.
        dataset: Hugging Face dataset id the weights were trained and evaluated on.
        metrics: ``{dataset: {"top1": ..., "top5": ...}}`` in percent, as published.
        num_params: parameter count of the model (checked by the test suite).
        model_kwargs: architecture arguments the weights need (e.g. ``{"norm_layer": "bnu-linear"}``).
        license, license_name, license_link: SPDX id (or ``"other"`` with a name and a link).
        paper, citation: paper URL and BibTeX entry.
        recipe: how the weights were trained.
        notes: anything else (provenance, known discrepancies).
        aliases: other names that select this weight, e.g. the official entry-point name.
    """

    arch: str
    tag: str
    sources: tuple[Source, ...]
    num_classes: int
    transform: TransformConfig
    classes: tuple[str, ...] | None = None
    dataset: str | None = None
    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    num_params: int | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    license: str | None = None
    license_name: str | None = None
    license_link: str | None = None
    paper: str | None = None
    citation: str | None = None
    recipe: str = ""
    notes: str = ""
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for what, value in [("arch", self.arch), ("tag", self.tag), *(("alias", a) for a in self.aliases)]:
            if not _NAME_RE.match(value):
                raise ValueError(f"WeightSpec {what} must be lowercase letters, digits and '_', got {value!r}")
        object.__setattr__(self, "sources", tuple(self.sources))
        object.__setattr__(self, "aliases", tuple(self.aliases))
        object.__setattr__(self, "classes", None if self.classes is None else tuple(self.classes))
        object.__setattr__(self, "metrics", {k: dict(v) for k, v in self.metrics.items()})
        object.__setattr__(self, "model_kwargs", dict(self.model_kwargs))
        if not all(isinstance(s, (HubFile, UrlFile, PackageFile)) for s in self.sources):
            raise TypeError(f"{self.name}: sources must be HubFile, UrlFile or PackageFile records")
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.classes)} class names for num_classes={self.num_classes}")

    @property
    def name(self) -> str:
        return f"{self.arch}.{self.tag}"

    @property
    def sha256(self) -> str | None:
        """Full SHA-256 of the first source that has one (files we produce)."""
        return next((s.sha256 for s in self.sources if s.sha256), None)

    @property
    def sha256_prefix(self) -> str | None:
        """SHA-256 prefix of the first source known only by a prefix (official release files)."""
        return next((s.sha256_prefix for s in self.sources if isinstance(s, UrlFile) and s.sha256_prefix), None)

    def top1(self, dataset: str | None = None) -> float | None:
        return self.metrics.get(dataset or self.dataset or "", {}).get("top1")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (sources carry a ``"type"``), e.g. for ``config.json``."""
        out = asdict(self)
        out["sources"] = [{"type": type(s).__name__, **asdict(s)} for s in self.sources]
        out["name"] = self.name
        return out


# ------------------------------------------------------------------------------------------------
# Registry

_WEIGHTS: dict[str, WeightSpec] = {}  # "arch.tag" -> record
_DEFAULTS: dict[str, str] = {}  # arch -> name of its default weight
_ALIASES: dict[str, str] = {}  # alias -> weight name


def register_weights(
    weights: WeightSpec | Iterable[WeightSpec], *, default: bool = False, replace: bool = False
) -> None:
    """Register pretrained weight records (your fine-tuned model, a mirror, ...).

    The first weight registered for an architecture is its default (what ``pretrained=True``
    loads) until one is registered with ``default=True``. The architecture does not need to exist
    yet; it is looked up when the weights are loaded.

    Args:
        weights: one record or several.
        default: make these the default of their architecture.
        replace: allow replacing a record that has the same name.

    Example:
        >>> bcos_zoo.register_weights(bcos_zoo.WeightSpec(
        ...     arch="bcos_resnet18", tag="ft_cub200", num_classes=200,
        ...     sources=(bcos_zoo.HubFile("me/bcos_resnet18.ft_cub200"),),
        ...     transform=bcos_zoo.TransformConfig(resize_size=256, crop_size=224)))
        >>> model = bcos_zoo.create_model("bcos_resnet18.ft_cub200", pretrained=True)
    """
    for spec in [weights] if isinstance(weights, WeightSpec) else list(weights):
        _check_registrable(spec, replace)
        _WEIGHTS[spec.name] = spec
        _ALIASES.update((alias, spec.name) for alias in spec.aliases)
        if default or spec.arch not in _DEFAULTS:
            _DEFAULTS[spec.arch] = spec.name


def _check_registrable(spec: WeightSpec, replace: bool) -> None:
    if not isinstance(spec, WeightSpec):
        raise TypeError(f"register_weights expects WeightSpec records, got {type(spec).__name__}")
    if not spec.sources or spec.num_classes < 1:
        raise ValueError(f"{spec.name}: a registered weight needs at least one source and num_classes >= 1")
    if spec.name in _WEIGHTS and not replace:
        raise ValueError(f"weights {spec.name!r} are already registered; pass replace=True to replace them")
    for alias in spec.aliases:
        taken = _ALIASES.get(alias, spec.name) != spec.name or alias in _DEFAULTS or _registry.is_model(alias)
        if taken:
            raise ValueError(f"alias {alias!r} of {spec.name} is already an architecture or another weight's alias")


def list_weights(pattern: str | list[str] = "*") -> list[str]:
    """Sorted names (``arch.tag``) of registered weights whose name or architecture matches ``pattern``.

    Example:
        >>> bcos_zoo.list_weights("bcos_resnet50")
        ['bcos_resnet50.in1k', 'bcos_resnet50.long_in1k']
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return sorted(
        name
        for name, spec in _WEIGHTS.items()
        if any(fnmatch.fnmatchcase(n, p) for p in patterns for n in (name, spec.arch))
    )


def list_models(pattern: str | list[str] = "*", *, family: str | None = None, pretrained: bool = False) -> list[str]:
    """Sorted architecture names matching an fnmatch ``pattern``; with ``pretrained=True`` only those with weights.

    Example:
        >>> bcos_zoo.list_models("bcos_resnet*", pretrained=True)
        ['bcos_resnet101', 'bcos_resnet152', 'bcos_resnet18', 'bcos_resnet34', 'bcos_resnet50']
    """
    names = _registry.list_models(pattern, family=family)
    return [n for n in names if n in _DEFAULTS] if pretrained else names


def default_weights(arch: str) -> WeightSpec | None:
    """The weights ``pretrained=True`` loads for ``arch``, if any are registered."""
    return _WEIGHTS[_DEFAULTS[arch]] if arch in _DEFAULTS else None


def get_weights(name: str) -> WeightSpec:
    """The record for a weight name (``arch.tag``), an alias (``resnet50_long``) or an architecture (its default).

    Example:
        >>> bcos_zoo.get_weights("resnet50_long").name
        'bcos_resnet50.long_in1k'
    """
    name = _ALIASES.get(name, name)
    spec = _WEIGHTS.get(name) or default_weights(name)
    if spec is None:
        raise _registry.unknown_name_error("weights", name, [*_WEIGHTS, *_ALIASES], listing="bcos_zoo.list_weights()")
    return spec


def resolve_model_name(name: str) -> tuple[str, WeightSpec | None]:
    """``arch``, ``arch.tag`` or an alias -> (architecture, the weights the name selects or ``None``)."""
    if name in _ALIASES or "." in name:
        spec = get_weights(name)
        return spec.arch, spec
    return name, None


# ------------------------------------------------------------------------------------------------
# Resolving `pretrained=...`

Request = WeightSpec | HubFile | UrlFile | Path


def _parse_hf_hub(text: str) -> HubFile:
    """``hf-hub:<org>/<repo>[/<file>][@<revision>]`` -> :class:`HubFile`."""
    ref, _, revision = text.split(":", 1)[1].partition("@")
    org, _, rest = ref.partition("/")
    repo, _, filename = rest.partition("/")
    return HubFile(f"{org}/{repo}", filename or "model.safetensors", revision or "main")


def _spec_for(arch: str, text: str) -> WeightSpec | None:
    """A registered weight of ``arch`` selected by tag, name or alias."""
    name = _ALIASES.get(text, text if "." in text else f"{arch}.{text}")
    spec = _WEIGHTS.get(name)
    if spec is not None and spec.arch != arch:
        raise ValueError(f"weights {spec.name} are for {spec.arch}, not {arch}")
    return spec


def resolve_pretrained(arch: str, pretrained: Pretrained | WeightSpec) -> Request:
    """What ``pretrained=`` asks for: a registered record, a remote source or a local file."""
    if pretrained is True:
        spec = default_weights(arch)
        if spec is None:
            raise ValueError(
                f"no pretrained weights are registered for {arch!r} (see bcos_zoo.list_models(pretrained=True)); "
                "pass a file, an http(s) URL or 'hf-hub:<org>/<repo>', or register some with bcos_zoo.register_weights"
            )
        return spec
    if isinstance(pretrained, WeightSpec):
        if pretrained.arch != arch:
            raise ValueError(f"weights {pretrained.name} are for {pretrained.arch}, not {arch}")
        return pretrained
    text = os.fspath(pretrained)
    spec = _spec_for(arch, text) if isinstance(pretrained, str) and text else None
    if spec is not None:
        return spec
    if text.startswith(("http://", "https://")):
        return UrlFile(text)
    if text.startswith(("hf-hub:", "hf_hub:")):
        return _parse_hf_hub(text)
    if Path(text).expanduser().is_file():
        return Path(text).expanduser()
    tags = [_WEIGHTS[n].tag for n in list_weights(arch) if _WEIGHTS[n].arch == arch]
    raise ValueError(
        f"pretrained={text!r} for {arch}: not a tag of its weights ({', '.join(tags) or 'none registered'}), "
        "an existing file, an http(s):// URL or 'hf-hub:<org>/<repo>'"
    )


def _needed_kwargs(spec: WeightSpec) -> dict[str, Any]:
    return {"num_classes": spec.num_classes, **spec.model_kwargs}


def merge_model_kwargs(request: Request, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The architecture arguments with those a registered weight needs (e.g. its ``num_classes``) on top.

    Family defaults are already in ``kwargs`` here, so this does not judge conflicts; the user-facing
    entry points (:func:`bcos_zoo.create_model`, torch.hub) call :func:`check_user_kwargs` first.
    """
    return {**kwargs, **_needed_kwargs(request)} if isinstance(request, WeightSpec) else kwargs


def check_user_kwargs(arch: str, pretrained: Pretrained | WeightSpec, kwargs: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` if a user argument contradicts the weights (torchvision's rule for ``num_classes``)."""
    request = resolve_pretrained(arch, pretrained) if pretrained else None
    if not isinstance(request, WeightSpec):
        return
    for key, value in _needed_kwargs(request).items():
        if key in kwargs and kwargs[key] != value:
            fix = (
                f"; to fine-tune, load them and call model.reset_classifier({kwargs[key]})"
                if key == "num_classes"
                else ""
            )
            raise ValueError(
                f"{request.name} were trained with {key}={value!r}, but {key}={kwargs[key]!r} was passed{fix}"
            )


# ------------------------------------------------------------------------------------------------
# Fetching, converting, caching and loading


def converted_state_dict(src: str | os.PathLike, model: nn.Module) -> dict[str, Tensor]:
    """Read a ``.safetensors``/``.pth`` checkpoint (``weights_only=True``) and map it with the model's
    ``convert_state_dict`` hook to the model's own keys."""
    return convert_state_dict(model, read_state_dict(src))


def save_weights(state: Mapping[str, Tensor], dst: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> str:
    """Write ``state`` as a ``.safetensors`` file atomically, with string ``metadata`` in the header.

    Returns:
        The SHA-256 of the written file.
    """
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}  # no shared storage
    with atomic_write(Path(dst)) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", **(metadata or {})})
        return sha256_file(tmp)


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, model: nn.Module,
                       metadata: Mapping[str, str] | None = None) -> str:  # fmt: skip
    """Convert a ``.pth`` (or foreign-layout) checkpoint to a ``.safetensors`` file for ``model``.

    The state dict is read with ``weights_only=True``, mapped by the model's ``convert_state_dict``
    hook and loaded into ``model`` strictly (every key and shape must match) before it is written.

    Returns:
        The SHA-256 of the written file.

    Example:
        >>> model = bcos_zoo.create_model("bcos_resnet50")
        >>> convert_checkpoint("resnet_50-ead259efe4.pth", "bcos_resnet50.in1k.safetensors", model)
    """
    state = converted_state_dict(src, model)
    load_state_dict_strict(model, state, source=f"checkpoint {src}")
    return save_weights(state, dst, metadata)


def _cache_path(spec: WeightSpec) -> Path:
    if _WEIGHTS.get(spec.name) == spec:
        return cache_dir() / "weights" / f"{spec.name}.safetensors"
    key = hashlib.sha256(repr(spec.sources).encode()).hexdigest()[:16]
    return cache_dir() / "adhoc" / f"{spec.arch}-{key}.safetensors"


def _metadata(spec: WeightSpec, source: Source, source_sha256: str) -> dict[str, str]:
    url = source.url if isinstance(source, UrlFile) else f"hf-hub:{source.repo_id}/{source.filename}@{source.revision}"
    return {"weight": spec.name, "arch": spec.arch, "tag": spec.tag, "source": url, "source_sha256": source_sha256}


def _convert_into_cache(spec: WeightSpec, model: nn.Module, path: Path, source: Source, target: Path,
                        source_sha256: str) -> Path:  # fmt: skip
    log.info("converting %s to %s", path, target)
    digest = convert_checkpoint(path, target, model, _metadata(spec, source, source_sha256))
    write_sidecar(target, digest)
    return target


def _fetch_hub(spec: WeightSpec, model: nn.Module, source: HubFile, target: Path) -> Path:
    offline = offline_reason() is not None
    path = hf_hub_file(source.repo_id, source.filename, source.revision, offline=offline)
    if source.sha256 and sha256_file(path) != source.sha256:
        if offline:
            check_sha256(sha256_file(path), source.sha256, f"cached {source.describe()} ({path})")
        log.warning("cached %s is corrupt (SHA-256 check failed); downloading it again", path)
        path = hf_hub_file(source.repo_id, source.filename, source.revision, offline=False, force=True)
        check_sha256(sha256_file(path), source.sha256, source.describe())
    if path.suffix == ".safetensors":
        return path
    return _convert_into_cache(spec, model, path, source, target, sha256_file(path))


def _fetch_url(spec: WeightSpec, model: nn.Module, source: UrlFile, target: Path) -> Path:
    url, expected = source.describe(), source.sha256 or source.sha256_prefix
    if source.filename.endswith(".safetensors"):
        if offline_reason():
            raise OfflineError(f"{url} is not cached")
        write_sidecar(target, download_url(url, target, sha256=expected))
        return target
    staged = cache_dir() / "downloads" / source.filename  # a user may also put the file here by hand
    digest = sha256_file(staged) if staged.is_file() and expected else None
    if digest is not None and not digest.startswith(expected):
        log.warning("%s does not have the expected SHA-256 (%s); deleting it", staged, expected)
        staged.unlink()
        digest = None
    downloaded = digest is None
    if downloaded:
        if offline_reason():
            raise OfflineError(f"{url} is not cached (nor is {staged})")
        digest = download_url(url, staged, sha256=expected)
    result = _convert_into_cache(spec, model, staged, source, target, digest)
    if downloaded:
        staged.unlink()
    return result


def _fetch_failed(spec: WeightSpec, target: Path, failures: list[tuple[Source, DownloadError]]) -> DownloadError:
    kinds = {type(e) for _, e in failures}
    cls = kinds.pop() if len(kinds) == 1 else DownloadError
    lines = [f"could not get weights {spec.name}:"] + [f"  - {s.describe()}: {e}" for s, e in failures]
    var = offline_reason()
    if cls is OfflineError:
        lines.append(
            f"Offline mode is on ({var}=1) and the weights are not in the cache ({target}). Unset {var} to "
            f"download them, copy an official .pth above into {cache_dir() / 'downloads'}/, copy a bcos-zoo cache "
            "(set BCOS_ZOO_CACHE), or pass pretrained='/path/to/file'."
        )
    elif any(isinstance(s, UrlFile) and s.mirror_env for s, _ in failures):
        lines.append(f"To use a mirror of the release, set {RELEASE_URL_ENV}; or download the file and pass its path.")
    return cls("\n".join(lines))


def _cached_from_record(spec: WeightSpec, target: Path) -> bool:
    """Whether the cached ``target`` came from a file the record's sources name (by hash), so a
    record that now points to other files (new version, other mirror) is fetched again."""
    expected = [h for s in spec.sources for h in (s.sha256, getattr(s, "sha256_prefix", None)) if h]
    made_from = [recorded_sha256(target) or "", weights_metadata(target).get("source_sha256", "")]
    if not expected or any(a.startswith(e) for a in made_from if a for e in expected):
        return True
    log.warning("cached %s was made from another file than %s names; fetching it again", target, spec.name)
    discard(target)
    return False


def _package_file(source: PackageFile) -> Path:
    """The shipped file, after checking it is intact."""
    if not source.path.is_file():
        raise DownloadError(f"{source.path} is missing from the installed package; reinstall bcos-zoo")
    check_sha256(sha256_file(source.path), source.sha256, f"shipped weights {source.path} (reinstall bcos-zoo)")
    return source.path


def weight_file(spec: WeightSpec, model: nn.Module) -> Path:
    """A verified local ``.safetensors`` file for ``spec``: shipped with the package, from the
    cache, or fetched from its sources."""
    shipped = [s for s in spec.sources if isinstance(s, PackageFile)]
    if shipped:
        return _package_file(shipped[0])
    target = _cache_path(spec)
    with file_lock(target):
        if cached_file_ok(target) and _cached_from_record(spec, target):
            return target
        failures: list[tuple[Source, DownloadError]] = []
        for source in spec.sources:
            try:
                if isinstance(source, HubFile):
                    return _fetch_hub(spec, model, source, target)
                return _fetch_url(spec, model, source, target)
            except DownloadError as e:
                log.info("source %s of %s failed: %s", source.describe(), spec.name, e)
                failures.append((source, e))
        raise _fetch_failed(spec, target, failures)


def _adhoc_spec(model: nn.Module, arch: str, tag: str, source: Source) -> WeightSpec:
    """A record for weights given as a URL, hub repo or file rather than by name."""
    transform = getattr(getattr(model, "transform", None), "config", None) or TransformConfig()
    return WeightSpec(
        arch=arch, tag=tag, sources=(source,), num_classes=getattr(model, "num_classes", 0), transform=transform
    )


def _registered_spec_of_file(arch: str, path: Path) -> WeightSpec | None:
    """The registered record named in a bcos-zoo safetensors file's header, if it is one of ``arch``."""
    try:
        spec = _WEIGHTS.get(weights_metadata(path).get("weight", ""))
    except (SafetensorError, OSError, ValueError):  # an unreadable header was already reported by the load
        return None
    return spec if spec is not None and spec.arch == arch else None


def load_pretrained(model: nn.Module, arch: str, request: Request) -> None:
    """Load what :func:`resolve_pretrained` returned into ``model`` and attach ``pretrained_cfg``."""
    if isinstance(request, Path):
        load_checkpoint(model, request)
        spec = _registered_spec_of_file(arch, request) or _adhoc_spec(
            model, arch, "local", UrlFile(request.resolve().as_uri())
        )
    else:
        if isinstance(request, WeightSpec):
            spec = request
        else:
            spec = _adhoc_spec(model, arch, "url" if isinstance(request, UrlFile) else "hf_hub", request)
        load_checkpoint(model, weight_file(spec, model))
    if spec.transform != getattr(getattr(model, "transform", None), "config", None):
        model.transform = create_transform(spec.transform)
    model.pretrained_cfg = spec


def weights_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata in a safetensors file's header (empty for other files)."""
    if Path(path).suffix != ".safetensors":
        return {}
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def spec_json(spec: WeightSpec) -> str:
    """``spec.to_dict()`` as indented JSON (``config.json`` of a hub repository)."""
    return json.dumps(spec.to_dict(), indent=2, default=str) + "\n"
