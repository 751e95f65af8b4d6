"""The official B-cos v1 and CoDA-Nets weights: their records, trust on first use, and the official file layouts.

Nothing is downloaded from the internet: the records are checked against the reference facts
(typed in below, independently of the package's tables), and downloads come from a loopback server
that serves files written in exactly the official layouts (``torch.save`` of a state dict, named
``state_dict.pkl`` / ``model_epoch_<N>.pkl``). The tiny stand-in is the real 9-layer CIFAR net.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import warnings
from pathlib import Path

import pytest
import torch
from hf_server import LoopbackServer

import bcos_zoo
from bcos_zoo import CheckpointError, DownloadError, HashMismatchError, OfflineError, TrustOnFirstUseWarning, UrlFile
from bcos_zoo.cards import render_card
from bcos_zoo.fetch import trust_record

pytestmark = pytest.mark.usefixtures("single_thread")

NEXTCLOUD = "https://nextcloud.mpi-klsb.mpg.de/index.php/s/{}/download"

# bcos-facts.md §13: official experiment -> (weight name, nextcloud token, logit temperature)
V1_IMAGENET = {
    "densenet_121": ("bcos_v1_densenet121.in1k", "LW2HsNDzAzaaaDH", 1e-3),
    "densenet_121_cossched": ("bcos_v1_densenet121.cossched_in1k", "G8kdm73qWn4L8Lg", 1e-3),
    "resnet_34": ("bcos_v1_resnet34.in1k", "mYe6TggQsDymZbk", 10.0),
    "vgg_11": ("bcos_v1_vgg11.in1k", "kEHgFSSKMEdeA5N", 0.1),
    "inception_v3": ("bcos_v1_inception_v3.in1k", "QSEo6QSNgPZqNfi", 1.0),
}
# §13: B -> (nextcloud token, log10 of the logit temperature)
V1_CIFAR = {
    1.0: ("q8cRRojXZ2WNWbS", -3), 1.25: ("oX6H7jQiSN2dfWJ", -3), 1.5: ("3LxnBCarS8Lpq5b", -2),
    1.75: ("XLwEnaKr9bYQJaN", 1), 2.0: ("mksX2CJMCDQbMYb", 2), 2.25: ("qFsqLPdHLQyNHwH", 2), 2.5: ("XwEAFrPSEYJ2C79", 3),
}  # fmt: skip
V1_CIFAR_NAMES = {
    1.0: "bcos_simple9_cifar.v1_b1_cifar10", 1.25: "bcos_simple9_cifar.v1_b1_25_cifar10",
    1.5: "bcos_simple9_cifar.v1_b1_5_cifar10", 1.75: "bcos_simple9_cifar.v1_b1_75_cifar10",
    2.0: "bcos_simple9_cifar.v1_b2_cifar10", 2.25: "bcos_simple9_cifar.v1_b2_25_cifar10",
    2.5: "bcos_simple9_cifar.v1_b2_5_cifar10",
}  # fmt: skip
# §14b: logit temperature T of 9L-S-CoDA-SQ-<T> -> nextcloud token (CIFAR-10, epoch 200); ImageNet-100 (epoch 60)
CODA_CIFAR = {10: "H8FgwMHJTTTYDJw", 50: "SqPBioqmxEWbH9g", 100: "yk7LajwLwpXXzf5", 500: "zfeYMASLtKNGgsQ",
              1000: "8ykMc8XLQMtCxHo", 5000: "6iY992FYEsfHkeA"}  # fmt: skip
CODA_IN100 = ("coda_simple9_in100.sq100000_in100", "pArrgmncXAAiH5R", 1e5)
SIMPLE9_SHAPES = [(128, 6, 3, 3), (128, 64, 3, 3), (256, 64, 3, 3), (256, 128, 3, 3), (256, 128, 3, 3),
                  (512, 128, 3, 3), (512, 256, 3, 3), (512, 256, 3, 3), (20, 256, 1, 1)]  # fmt: skip
V1_NAMES = [name for name, _, _ in V1_IMAGENET.values()] + list(V1_CIFAR_NAMES.values())
CODA_NAMES = [f"coda_simple9_cifar.sq{t}_cifar10" for t in CODA_CIFAR] + [CODA_IN100[0]]
ALL_NAMES = V1_NAMES + CODA_NAMES
TEST_NAME = V1_CIFAR_NAMES[1.25]
CODA_NAME = "coda_simple9_cifar.sq1000_cifar10"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def saved(state: dict[str, torch.Tensor], legacy: bool = False) -> bytes:
    """``torch.save`` bytes, in the zip format or the legacy pickle format of older PyTorch releases."""
    buf = io.BytesIO()
    torch.save(state, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def simple9_official(seed: int) -> dict[str, torch.Tensor]:
    """A v1 CIFAR-10 state dict as the official code saved it: keys ``0.linear.weight`` ... ``8.linear.weight``."""
    g = torch.Generator().manual_seed(seed)
    return {f"{i}.linear.weight": torch.randn(shape, generator=g) for i, shape in enumerate(SIMPLE9_SHAPES)}


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


X = torch.rand(2, 6, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def reference() -> dict[int, torch.Tensor]:
    """The logits of the b=1.25 v1 net with the weights of seed 0 and 1, built from the state dicts directly."""
    spec = bcos_zoo.get_weights(TEST_NAME)
    out = {}
    for seed in (0, 1):
        model = bcos_zoo.create_model("bcos_simple9_cifar", **spec.build_kwargs)
        model.load_state_dict(simple9_official(seed), strict=True)
        out[seed] = logits(model, X)
    return out


@pytest.fixture
def serve(weights_env: Path):
    """``serve(name)``: a loopback server, and the weight ``name`` re-registered to fetch from it as from its
    nextcloud share; returns the server, the path it serves and the cache entry of the weight."""
    with LoopbackServer() as server:

        def re_register(name: str) -> tuple[LoopbackServer, str, Path]:
            path = f"/index.php/s/test-{name.replace('.', '-')}/download"
            source = UrlFile(server.url + path, trust_on_first_use=True)
            bcos_zoo.register_weights(dataclasses.replace(bcos_zoo.get_weights(name), sources=(source,)), replace=True)
            return server, path, weights_env / "weights" / f"{name}.safetensors"

        yield re_register


@pytest.fixture
def served(serve):
    return serve(TEST_NAME)


# --------------------------------------------------------------------------------------------- records


def test_every_official_file_is_registered_with_the_facts():
    official = bcos_zoo.list_weights(["bcos_v1_*", "bcos_simple9_cifar.v1_*", "coda_*.sq*"])
    assert sorted(official) == sorted(ALL_NAMES)
    for experiment, (name, token, temperature) in V1_IMAGENET.items():
        spec = bcos_zoo.get_weights(name)
        assert [s.url for s in spec.sources] == [NEXTCLOUD.format(token)] and f"`{experiment}`" in spec.notes
        assert spec.model_kwargs["logit_temperature"] == temperature
        assert spec.model_kwargs["logit_bias"] == pytest.approx(math.log(0.01 / 0.99))
        assert spec.num_classes == 1000 and spec.dataset == "imagenet-1k" and spec.classes[0] == "tench"
        inception = experiment == "inception_v3"
        assert (spec.transform.resize_size, spec.transform.crop_size) == ((320, 299) if inception else (256, 224))
        assert spec.model_kwargs.get("aux_logits") is (True if inception else None)
    for b, (token, log10_t) in V1_CIFAR.items():
        spec = bcos_zoo.get_weights(V1_CIFAR_NAMES[b])
        assert [s.url for s in spec.sources] == [NEXTCLOUD.format(token)] and f"`9L-M2-B{b:g}`" in spec.notes
        kw = spec.model_kwargs
        assert kw["b"] == b and kw["max_out"] == 2 and kw["scale"] == pytest.approx(10 ** (-2 + 1.5 * (2.5 - b)))
        assert kw["logit_temperature"] == pytest.approx(10.0**log10_t)
        assert kw["logit_bias"] == pytest.approx(math.log(0.1 / 0.9)) and spec.num_classes == 10
        assert spec.dataset == "cifar10" and spec.classes[:2] == ("airplane", "automobile")
        assert (spec.transform.resize_size, spec.transform.crop_size) == (32, 32)
    for t, token in CODA_CIFAR.items():
        spec = bcos_zoo.get_weights(f"coda_simple9_cifar.sq{t}_cifar10")
        assert [s.url for s in spec.sources] == [NEXTCLOUD.format(token)] and f"`9L-S-CoDA-SQ-{t}`" in spec.notes
        assert spec.model_kwargs == {"temperature": t, "norm": "squash", "logit_bias": pytest.approx(math.log(1 / 9))}
        assert spec.num_classes == 10 and spec.dataset == "cifar10" and "model_epoch_200.pkl" in spec.notes
        assert (spec.transform.resize_size, spec.transform.crop_size) == (32, 32)
    name, token, temperature = CODA_IN100
    spec = bcos_zoo.get_weights(name)
    assert [s.url for s in spec.sources] == [NEXTCLOUD.format(token)] and "`9L-L-CoDA-SQ-100000`" in spec.notes
    assert spec.model_kwargs["temperature"] == temperature and "model_epoch_60.pkl" in spec.notes
    assert spec.num_classes == 100 and spec.classes == bcos_zoo.get_weights(V1_NAMES[0]).classes[:100]
    assert (spec.transform.resize_size, spec.transform.crop_size) == (256, 240) and spec.dataset == "imagenet-100"


@pytest.mark.parametrize("name", ALL_NAMES)
def test_record_says_no_hash_both_licences_recipe_and_preprocessing(name):
    spec = bcos_zoo.get_weights(name)
    (source,) = spec.sources
    assert source.trust_on_first_use and source.verification == "trust on first use" and spec.trust_on_first_use
    assert source.sha256 is None and source.sha256_prefix is None and spec.sha256 is None
    assert spec.metrics == {} and spec.num_params is None  # nothing beyond the facts is typed in
    repo, family = ("B-cos", "B-cos v1") if name in V1_NAMES else ("CoDA-Nets", "CoDA-Nets")
    assert spec.license == "other" and spec.license_link == f"https://github.com/moboehle/{repo}/blob/HEAD/LICENSE"
    assert "non-commercial" in spec.license_note and "BSD License 2.0" in spec.license_note
    assert spec.recipe.startswith(family) and "epochs" in spec.recipe and "Adam" in spec.recipe
    assert spec.transform.in_chans == 6 and spec.transform.mean is None and spec.paper and spec.citation
    card = render_card(spec)
    assert "no published hash: trusted on first use" in card and f"weights/{name}.trusted.sha256" in card
    assert "BSD License 2.0" in card and "non-commercial research" in card
    with torch.device("meta"):  # the build arguments are ones the architecture takes
        model = bcos_zoo.create_model(spec.arch, **spec.build_kwargs)
    temperature = spec.model_kwargs.get("logit_temperature", spec.model_kwargs.get("temperature"))  # CoDA's name
    assert model.logit_layer.logit_temperature == temperature


def test_defaults_and_the_no_hash_record_is_explicit():
    assert bcos_zoo.get_weights("bcos_v1_densenet121").name == "bcos_v1_densenet121.in1k"
    assert bcos_zoo.get_weights("bcos_simple9_cifar").tag == "fmnist"  # the shipped weights stay the default
    shipped = [n for n in bcos_zoo.list_weights("coda_simple9_cifar") if not bcos_zoo.get_weights(n).trust_on_first_use]
    assert bcos_zoo.get_weights("coda_simple9_cifar").name == (shipped[0] if shipped else CODA_NAME)  # the paper's
    with pytest.raises(ValueError, match="trust_on_first_use is for files without a published hash"):
        UrlFile("https://host/x/download", sha256_prefix="0123456789", trust_on_first_use=True)
    assert UrlFile("https://host/x/download").verification == "none"  # a plain URL is no trusted-on-first-use file
    assert UrlFile("https://host/w-0123456789.pth", sha256_prefix="0123456789").verification == "sha256 prefix"


# ---------------------------------------------------------------------------------- trust on first use


def test_trust_on_first_use(served, reference, monkeypatch):
    server, path, entry = served
    first, changed = saved(simple9_official(0)), saved(simple9_official(1))
    server.add_file(path, first)
    record = trust_record(entry)

    with pytest.warns(TrustOnFirstUseWarning, match=f"trusted on first use: its SHA-256 {sha256(first)}"):
        model = bcos_zoo.create_model(TEST_NAME, pretrained=True)
    torch.testing.assert_close(logits(model, X), reference[0])
    assert record.read_text().split()[0] == sha256(first) and bcos_zoo.read_header(entry).source_sha256 == sha256(first)

    with warnings.catch_warnings():
        warnings.simplefilter("error", TrustOnFirstUseWarning)  # trusted once: no second warning
        monkeypatch.setenv("BCOS_ZOO_OFFLINE", "1")  # the cache serves it offline, without a request
        torch.testing.assert_close(logits(bcos_zoo.create_model(TEST_NAME, pretrained=True), X), reference[0])
        monkeypatch.delenv("BCOS_ZOO_OFFLINE")
        bcos_zoo.fetch.evict(entry)  # an unchanged file fetched again passes the recorded digest
        torch.testing.assert_close(logits(bcos_zoo.create_model(TEST_NAME, pretrained=True), X), reference[0])
    assert server.gets(path) == 2 and record.read_text().split()[0] == sha256(first)

    server.add_file(path, changed)  # the publisher's file changes; the cached copy is damaged
    entry.write_bytes(entry.read_bytes()[:1000])
    with pytest.raises(HashMismatchError) as err:
        bcos_zoo.create_model(TEST_NAME, pretrained=True)
    text = str(err.value)
    assert f"expected {sha256(first)}" in text and f"got {sha256(changed)}" in text
    assert "refused" in text and f"delete {record}" in text
    assert not entry.exists() and record.read_text().split()[0] == sha256(first)  # nothing of it was kept

    record.unlink()  # the documented reset: the new file is trusted, with a warning
    with pytest.warns(TrustOnFirstUseWarning, match=sha256(changed)):
        model = bcos_zoo.create_model(TEST_NAME, pretrained=True)
    torch.testing.assert_close(logits(model, X), reference[1])


def test_a_damaged_trust_record_is_named(served):
    server, path, entry = served
    server.add_file(path, saved(simple9_official(0)))
    trust_record(entry).parent.mkdir(parents=True)
    trust_record(entry).write_text("not a digest\n")
    with pytest.raises(DownloadError, match=f"{trust_record(entry)} is damaged; delete it"):
        bcos_zoo.create_model(TEST_NAME, pretrained=True)
    assert server.gets(path) == 0


def test_offline_and_not_cached_names_the_fix(weights_env, monkeypatch):
    monkeypatch.setenv("BCOS_ZOO_OFFLINE", "1")
    with pytest.raises(OfflineError) as err:
        bcos_zoo.create_model("bcos_v1_resnet34", pretrained=True)
    text = str(err.value)
    assert NEXTCLOUD.format(V1_IMAGENET["resnet_34"][1]) in text and "BCOS_ZOO_OFFLINE=1" in text
    assert str(weights_env / "weights" / "bcos_v1_resnet34.in1k.safetensors") in text
    assert "pretrained='/path/to/file'" in text and "downloads" not in text  # no hash: a dropped file is not checked
    assert not (weights_env / "weights" / "bcos_v1_resnet34.in1k.trusted.sha256").exists()


# ------------------------------------------------------------------------------------ official layouts


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
def test_v1_cifar_state_dict_loads_strictly_by_path(tmp_path, reference, legacy):
    path = tmp_path / "state_dict.pkl"
    path.write_bytes(saved(simple9_official(0), legacy=legacy))
    kwargs = bcos_zoo.get_weights(TEST_NAME).build_kwargs
    model = bcos_zoo.create_model("bcos_simple9_cifar", pretrained=path, **kwargs)
    torch.testing.assert_close(logits(model, X), reference[0])

    wrong = simple9_official(0)
    wrong["9.linear.weight"] = wrong.pop("8.linear.weight")
    path.write_bytes(saved(wrong, legacy=legacy))
    named = r"missing keys: 8\.linear\.weight[\s\S]*unexpected keys: 9\.linear\.weight"
    with pytest.raises(CheckpointError, match=named):
        bcos_zoo.create_model("bcos_simple9_cifar", pretrained=path, **kwargs)


def test_v1_imagenet_layouts_load_strictly(tmp_path):
    """``0.<net keys>`` of ``Sequential(net, pool, FinalLayer)``, also under DataParallel's ``module.``."""
    spec = bcos_zoo.get_weights("bcos_v1_densenet121.in1k")
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in bcos_zoo.create_model(spec.arch, **spec.build_kwargs).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    own = {k: torch.randn(shape, generator=g) for k, shape in shapes.items()}
    path = tmp_path / "state_dict.pkl"
    for prefix in ("0.", "module.0."):
        path.write_bytes(saved({prefix + k: v for k, v in own.items()}))
        model = bcos_zoo.create_model(spec.arch, pretrained=path, **spec.model_kwargs)
        assert model.state_dict().keys() == own.keys()
        assert all(torch.equal(v, own[k]) for k, v in model.state_dict().items())
    missing = "features.denseblock4.denselayer16.conv2.linear.weight"
    path.write_bytes(saved({"0." + k: v for k, v in own.items() if k != missing} | {"0.extra.weight": own[missing]}))
    with pytest.raises(CheckpointError, match=rf"missing keys: {missing}[\s\S]*unexpected keys: extra\.weight"):
        bcos_zoo.create_model(spec.arch, pretrained=path, **spec.model_kwargs)


def test_coda_checkpoint_by_name_from_the_server(serve, tmp_path):
    """``model_epoch_200.pkl`` saved from a DataParallel model (``module.`` prefix), served like the nextcloud share."""
    server, path, entry = serve(CODA_NAME)
    spec = bcos_zoo.get_weights(CODA_NAME)
    torch.manual_seed(0)
    source = bcos_zoo.create_model(spec.arch, **spec.build_kwargs)
    server.add_file(path, data := saved({f"module.{k}": v for k, v in source.state_dict().items()}))
    with pytest.warns(TrustOnFirstUseWarning, match=sha256(data)):
        model = bcos_zoo.create_model(CODA_NAME, pretrained=True)
    x = torch.rand(1, 6, 8, 8)
    torch.testing.assert_close(logits(model, x), logits(source, x), rtol=0, atol=0)
    assert model.logit_layer.logit_temperature == 1000 and trust_record(entry).is_file()
