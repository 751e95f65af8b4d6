"""Weight records: where a weight file comes from, what it is, and what its header says.

A weight is named ``<arch>.<tag>`` (timm's convention): ``bcos_resnet50.long_in1k`` is the
``bcos_resnet50`` architecture trained with the long ImageNet-1k recipe. Its record,
:class:`WeightSpec`, says where the file can be fetched from (tried in order), how to verify it, how
to preprocess inputs, and what a model card needs (metrics, parameters, licence, paper, recipe).

:class:`WeightHeader` is the one schema of the string metadata in the header of every
``.safetensors`` file bcos-zoo writes (conversion, cache, training, shipping): enough to rebuild the
model from the file alone (``bcos_zoo.load_model(path)``).

This module is plain data: it imports no model, registry or network code.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .transforms import TransformConfig

__all__ = [
    "DATASET_NAMES", "OFFICIAL_RELEASE_URL", "RELEASE_URL_ENV", "PACKAGE_WEIGHTS_DIR", "HubFile", "UrlFile", "PackageFile", "Source",
    "WeightSpec", "WeightHeader", "release_file", "redact_url", "url_filename",
]  # fmt: skip

#: how dataset ids of the records are written for people
DATASET_NAMES = {
    "imagenet-1k": "ImageNet-1k", "fashion_mnist": "Fashion-MNIST", "cifar10": "CIFAR-10",
    "imagenet-100": "ImageNet-100 (the first 100 ImageNet-1k classes)",
}  # fmt: skip
OFFICIAL_RELEASE_URL = "https://github.com/B-cos/B-cos-v2/releases/download/v0.0.1-weights/"
RELEASE_URL_ENV = "BCOS_ZOO_RELEASE_URL"
PACKAGE_WEIGHTS_DIR = Path(__file__).resolve().parent / "assets" / "weights"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")
_HEX_RE = re.compile(r"^[0-9a-f]+$")
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_HUB_PATH_RE = re.compile(r"^[A-Za-z0-9._/-]{1,255}$")
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z]+$")  # torch.hub's "<name>-<sha256 prefix>.<ext>"


def url_filename(url: str) -> str:
    """The file name of a URL, taken from its path (as torch.hub and timm do): no query, no fragment.

    Example:
        >>> url_filename("https://host/a/w.safetensors?download=1")
        'w.safetensors'
    """
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path).rstrip("/").rsplit("/", 1)[-1]
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name or len(name) > 255:
        raise ValueError(f"the URL {redact_url(url)!r} does not end in a file name (like .../weights.safetensors)")
    return name


def redact_url(url: str) -> str:
    """``url`` without user info and without query or fragment (where tokens live), for recording.

    Example:
        >>> redact_url("https://user:secret@host/w.pth?token=abc")
        'https://host/w.pth'
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


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
        # checked before the hub client sees them: a ".." would let it write outside its cache
        if not _REPO_ID_RE.match(self.repo_id) or ".." in self.repo_id:
            raise ValueError(f"repo_id must look like '<org>/<name>' (letters, digits, '-', '_', '.'), got {self.repo_id!r}")
        for what, value in (("filename", self.filename), ("revision", self.revision)):
            parts = value.split("/")
            if not _HUB_PATH_RE.match(value) or any(p in ("", ".", "..") for p in parts):
                raise ValueError(f"HubFile {what} must be a plain relative name without '..', got {value!r}")
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
        trust_on_first_use: the publisher gives no hash (so ``sha256`` and ``sha256_prefix`` stay
            unset): the SHA-256 of the first download is recorded in the cache, and a later download
            with another SHA-256 is refused. A source without a hash and without this flag (a URL a
            user passes as ``pretrained=``) is checked only by parsing it.

    Example:
        >>> UrlFile("https://host/s/token/download", trust_on_first_use=True).verification
        'trust on first use'
    """

    url: str
    sha256: str | None = None
    sha256_prefix: str | None = None
    mirror_env: str | None = None
    trust_on_first_use: bool = False

    def __post_init__(self) -> None:
        _check_hex(self.sha256, "UrlFile.sha256", range(64, 65))
        _check_hex(self.sha256_prefix, "UrlFile.sha256_prefix", range(8, 65))
        if self.trust_on_first_use and (self.sha256 or self.sha256_prefix):
            raise ValueError(
                f"{redact_url(self.url)}: trust_on_first_use is for files without a published hash; "
                "a file with a sha256 or sha256_prefix is verified against it instead"
            )

    @property
    def verification(self) -> str:
        """How a download of this file is verified: ``"sha256"``, ``"sha256 prefix"``,
        ``"trust on first use"`` or ``"none"`` (parsed as a checkpoint only)."""
        if self.sha256:
            return "sha256"
        if self.sha256_prefix:
            return "sha256 prefix"
        return "trust on first use" if self.trust_on_first_use else "none"

    @property
    def filename(self) -> str:
        """The file name from the URL's path (query and fragment ignored)."""
        return url_filename(self.url)

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
        license_note: what those fields cannot say (e.g. a repository whose README and LICENSE
            file name different licences), shown in the card's licence section.
        paper, citation: paper URL and BibTeX entry.
        recipe: how the weights were trained.
        notes: anything else (provenance, known discrepancies).
        metrics_note: where the metrics come from (shown under them in the card).
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
    license_note: str = ""
    paper: str | None = None
    citation: str | None = None
    recipe: str = ""
    notes: str = ""
    metrics_note: str = "As published by the authors (validation set, single center crop)."
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

    @property
    def trust_on_first_use(self) -> bool:
        """Whether a source of these weights publishes no hash and is trusted on first use."""
        return any(isinstance(s, UrlFile) and s.trust_on_first_use for s in self.sources)

    @property
    def build_kwargs(self) -> dict[str, Any]:
        """The architecture arguments these weights need: ``num_classes`` and ``model_kwargs``."""
        return {"num_classes": self.num_classes, **self.model_kwargs}

    def top1(self, dataset: str | None = None) -> float | None:
        return self.metrics.get(dataset or self.dataset or "", {}).get("top1")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (sources carry a ``"type"``), e.g. for ``config.json``."""
        out = asdict(self)
        out["sources"] = [{"type": type(s).__name__, **asdict(s)} for s in self.sources]
        out["name"] = self.name
        return out

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON (``config.json`` of a hub repository)."""
        return json.dumps(self.to_dict(), indent=2, default=str) + "\n"


_HEADER_JSON = ("model_kwargs", "classes", "transform")  # fields stored as JSON strings


@dataclass(frozen=True)
class WeightHeader:
    """The string metadata in a bcos-zoo ``.safetensors`` header (safetensors headers are ``str -> str``).

    Attributes:
        arch: the architecture the tensors are for.
        weight: the registered weight name (``arch.tag``), if the file is one.
        model_kwargs: the architecture arguments that rebuild the model (``num_classes`` included).
        classes: class names, index-aligned with the logits.
        transform: the evaluation preprocessing.
        source: where the tensors came from (a URL without credentials, a hub file, "trained with ...").
        source_sha256: SHA-256 of the file they were converted from.
        bcos_zoo_version: the version that wrote the file.

    Example:
        >>> WeightHeader(arch="bcos_resnet18", model_kwargs={"num_classes": 10}).to_header()["model_kwargs"]
        '{"num_classes": 10}'
    """

    arch: str | None = None
    weight: str | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] | None = None
    transform: TransformConfig | None = None
    source: str | None = None
    source_sha256: str | None = None
    bcos_zoo_version: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_kwargs", dict(self.model_kwargs))
        object.__setattr__(self, "classes", None if self.classes is None else tuple(self.classes))

    def to_header(self) -> dict[str, str]:
        """The header strings (fields that are ``None`` or empty are left out)."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or value == {}:
                continue
            if isinstance(value, TransformConfig):
                value = value.to_dict()
            out[f.name] = json.dumps(list(value) if isinstance(value, tuple) else value) if f.name in _HEADER_JSON else str(value)
        return out

    @classmethod
    def from_header(cls, meta: Mapping[str, str], where: str = "the file") -> WeightHeader:
        """Parse header strings; a field that is not what it should be raises :class:`CheckpointError`.

        Files written before this schema (``model_kwargs`` without ``num_classes``, a ``tag`` key) read too.
        """
        try:
            values = {f.name: meta[f.name] for f in fields(cls) if f.name in meta}
            for key in _HEADER_JSON:
                if key in values:
                    values[key] = json.loads(values[key])
            kwargs, classes = values.get("model_kwargs", {}), values.get("classes")
            if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
                raise ValueError("model_kwargs is not a JSON object")
            if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
                raise ValueError("classes is not a JSON list of strings")
            if classes and "num_classes" not in kwargs:
                values["model_kwargs"] = {**kwargs, "num_classes": len(classes)}
            if "transform" in values:
                values["transform"] = TransformConfig.from_dict(values["transform"])
            return cls(**values)
        except (ValueError, TypeError, AttributeError) as e:
            raise CheckpointError(f"the bcos-zoo header of {where} is malformed: {e}; write the file again") from e


