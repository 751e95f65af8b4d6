"""Pretrained weights end to end, offline: sources served by a loopback server, the cache, integrity.

Small real models only: ``bcos_resnet32_cifar`` (5 classes, weights registered by the tests) and
one official-format ``resnet_18-<sha10>.pth`` made from the official ``bcos`` package's model.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
from pathlib import Path

import pytest
import torch
from hf_server import LoopbackServer
from safetensors.torch import save_file

import bcos_zoo
from bcos_zoo import DownloadError, HashMismatchError, HubFile, OfflineError, TransformConfig, UrlFile, WeightSpec, fetch
from bcos_zoo.convert import convert_checkpoint
from bcos_zoo.records import OFFICIAL_RELEASE_URL

pytestmark = pytest.mark.usefixtures("single_thread")

ARCH = "bcos_resnet32_cifar"
TINY_KWARGS = {"norm_layer": "bnu-linear"}
TINY_TRANSFORM = TransformConfig(resize_size=None, crop_size=None)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tiny_spec(tag: str, *sources: HubFile | UrlFile) -> WeightSpec:
    return WeightSpec(arch=ARCH, tag=tag, sources=sources, num_classes=5, transform=TINY_TRANSFORM,
                      classes=("a", "b", "c", "d", "e"), model_kwargs=TINY_KWARGS)  # fmt: skip


def randomize_norms_(model: torch.nn.Module) -> None:
    """Make norm weights and running variances non-trivial so a wrong load shows in the logits."""
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "running_var", None) is not None:
                m.running_var.uniform_(0.5, 2.0)
            if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 1:
                m.weight.uniform_(0.5, 1.5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """A 5-class model, its safetensors bytes, an input and its logits."""
    torch.manual_seed(0)
    model = bcos_zoo.create_model(ARCH, num_classes=5, **TINY_KWARGS).eval()
    randomize_norms_(model)
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    x = torch.rand(2, 6, 16, 16)
    with torch.no_grad():
        logits = model(x)
    return path.read_bytes(), x, logits


@pytest.fixture(scope="module")
def tiny_pth(tiny):
    """The tiny weights as an official-format file: a pickled state dict named ``<name>-<sha10>.pth``."""
    data, x, logits = tiny
    from safetensors.torch import load

    buf = io.BytesIO()
    torch.save(load(data), buf)
    return buf.getvalue(), f"tiny-{sha256(buf.getvalue())[:10]}.pth", x, logits


@pytest.fixture(scope="module")
def official_resnet18():
    """A ``.pth`` in the official release format, made from the official package's resnet18."""
    from bcos.models.pretrained import resnet18

    torch.manual_seed(0)
    model = resnet18(pretrained=False).eval()
    randomize_norms_(model)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    data = buf.getvalue()
    x = torch.rand(1, 6, 64, 64)
    with torch.no_grad():
        logits = model(x)
    return data, f"resnet_18-{sha256(data)[:10]}.pth", x, logits


@pytest.fixture
def cache(weights_env: Path) -> Path:
    return weights_env


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    with LoopbackServer() as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        yield srv


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


def assert_logits(model: torch.nn.Module, x: torch.Tensor, expected: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), expected)


def test_hub_source_end_to_end_and_offline(cache, server, tiny, monkeypatch):
    data, x, logits = tiny
    server.add_hub_file("test-org/tiny", "model.safetensors", data)
    spec = tiny_spec("hub", HubFile("test-org/tiny", sha256=sha256(data)))
    bcos_zoo.register_weights(spec)

    model = bcos_zoo.create_model(f"{ARCH}.hub", pretrained=True)  # num_classes and norm come from the record
    assert model.pretrained_cfg is spec and model.num_classes == 5 and model.transform.config == TINY_TRANSFORM
    assert_logits(model, x, logits)
    assert server.gets("/test-org/tiny/resolve/main/model.safetensors") == 1

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # served from the HF cache without a request
    n = sum(server.requests.values())
    assert_logits(bcos_zoo.create_model(ARCH, pretrained="hub"), x, logits)
    assert sum(server.requests.values()) == n

    adhoc = bcos_zoo.create_model(ARCH, pretrained="hf-hub:test-org/tiny", num_classes=5, **TINY_KWARGS)
    assert adhoc.pretrained_cfg.tag == "hf_hub" and adhoc.pretrained_cfg.sources == (HubFile("test-org/tiny"),)
    assert_logits(adhoc, x, logits)


def test_sources_tried_in_order(cache, server, tiny):
    data, x, logits = tiny
    url = server.add_file("/files/tiny.safetensors", data)
    bcos_zoo.register_weights(tiny_spec("fallback", HubFile("test-org/absent"), UrlFile(url, sha256=sha256(data))))
    assert_logits(bcos_zoo.create_model(f"{ARCH}.fallback", pretrained=True), x, logits)
    assert server.requests[("HEAD", "/test-org/absent/resolve/main/model.safetensors")] == 1
    assert files_in(cache) == [f"{ARCH}.fallback.safetensors", f"{ARCH}.fallback.safetensors.sha256"]


def test_official_pth_download_verify_convert_cache(cache, server, official_resnet18, monkeypatch):
    data, filename, x, logits = official_resnet18
    server.add_file(f"/mirror/{filename}", data)
    monkeypatch.setenv("BCOS_ZOO_RELEASE_URL", server.url + "/mirror/")
    spec = WeightSpec(arch="bcos_resnet18", tag="mirror_test", sources=(bcos_zoo.release_file(filename),),
                      num_classes=1000, transform=TransformConfig(resize_size=232, crop_size=224))  # fmt: skip
    bcos_zoo.register_weights(spec)

    model = bcos_zoo.create_model("bcos_resnet18", pretrained="mirror_test")
    assert_logits(model, x, logits)  # the official model's logits
    assert model.pretrained_cfg is spec and model.transform.config.resize_size == 232
    cached = cache / "weights" / "bcos_resnet18.mirror_test.safetensors"
    assert files_in(cache) == [cached.name, cached.name + ".sha256"]  # the .pth is gone, no temp files
    header = bcos_zoo.read_header(cached)
    assert header.source_sha256 == sha256(data) and header.weight == spec.name and header.arch == spec.arch
    assert header.source == f"{server.url}/mirror/{filename}"

    monkeypatch.setenv("BCOS_ZOO_OFFLINE", "1")  # later loads read only the cached safetensors
    assert_logits(bcos_zoo.create_model("bcos_resnet18.mirror_test", pretrained=True), x, logits)
    assert server.gets(f"/mirror/{filename}") == 1

    monkeypatch.delenv("BCOS_ZOO_OFFLINE")
    cached.write_bytes(cached.read_bytes()[:1000])  # a truncated cache entry is detected and fetched again
    assert fetch.weight_file(spec) == cached and server.gets(f"/mirror/{filename}") == 2
    assert_logits(bcos_zoo.create_model("bcos_resnet18", pretrained=cached), x, logits)


def test_official_record_hash_mismatch_caches_nothing(cache, server, official_resnet18, monkeypatch):
    data, *_ = official_resnet18
    server.add_file("/mirror/resnet_18-68b4160fff.pth", data)  # the official name, other content
    monkeypatch.setenv("BCOS_ZOO_RELEASE_URL", server.url + "/mirror")
    with pytest.raises(HashMismatchError) as err:
        bcos_zoo.create_model("resnet18", pretrained=True)  # alias of bcos_resnet18.in1k
    assert "expected 68b4160fff" in str(err.value) and sha256(data) in str(err.value)
    assert "BCOS_ZOO_RELEASE_URL" in str(err.value)
    assert files_in(cache) == []


def test_connection_dropped_mid_file_caches_nothing(cache, server, tiny):
    data, *_ = tiny
    url = server.add_file("/files/cut.safetensors", data)
    server.cut_off.add("/files/cut.safetensors")
    bcos_zoo.register_weights(tiny_spec("cut", UrlFile(url)))
    with pytest.raises(DownloadError, match="cut.safetensors") as err:
        bcos_zoo.create_model(f"{ARCH}.cut", pretrained=True)
    assert "cut off" in str(err.value) or "failed after" in str(err.value)
    assert files_in(cache) == []


def test_url_sha256_mismatch(cache, server, tiny):
    data, *_ = tiny
    url = server.add_file("/files/tiny.safetensors", data)
    bcos_zoo.register_weights(tiny_spec("bad", UrlFile(url, sha256="0" * 64)))
    with pytest.raises(HashMismatchError, match=f"expected {'0' * 64}, got {sha256(data)}"):
        bcos_zoo.create_model(f"{ARCH}.bad", pretrained=True)
    assert files_in(cache) == []


def test_offline_miss_says_what_to_do(cache, monkeypatch):
    monkeypatch.setenv("BCOS_ZOO_OFFLINE", "1")
    with pytest.raises(OfflineError) as err:
        bcos_zoo.create_model("bcos_resnet18", pretrained=True)
    text = str(err.value)
    assert OFFICIAL_RELEASE_URL + "resnet_18-68b4160fff.pth" in text
    assert "BCOS_ZOO_OFFLINE" in text and str(cache / "weights" / "bcos_resnet18.in1k.safetensors") in text
    assert str(cache / "downloads") in text

    monkeypatch.delenv("BCOS_ZOO_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bcos_zoo.register_weights(tiny_spec("hub_offline", HubFile("test-org/tiny")))
    with pytest.raises(OfflineError, match="HF_HUB_OFFLINE"):
        bcos_zoo.create_model(f"{ARCH}.hub_offline", pretrained=True)


def test_offline_with_a_file_put_where_the_error_says(cache, tiny_pth, monkeypatch):
    data, filename, x, logits = tiny_pth
    monkeypatch.setenv("BCOS_ZOO_OFFLINE", "1")
    bcos_zoo.register_weights(tiny_spec("by_hand", bcos_zoo.release_file(filename)))
    with pytest.raises(OfflineError, match=str(cache / "downloads")):
        bcos_zoo.create_model(f"{ARCH}.by_hand", pretrained=True)
    (cache / "downloads").mkdir(parents=True)
    (cache / "downloads" / filename).write_bytes(data)  # verified by its name's hash prefix, then converted
    assert_logits(bcos_zoo.create_model(f"{ARCH}.by_hand", pretrained=True), x, logits)
    assert (cache / "downloads" / filename).is_file()  # a file put there by hand is left alone


def test_cache_follows_the_record(cache, server, tiny, tmp_path):
    data, *_ = tiny
    save_file({"w": torch.ones(3)}, str(tmp_path / "other.safetensors"))
    other = (tmp_path / "other.safetensors").read_bytes()
    url_a, url_b = server.add_file("/files/a.safetensors", data), server.add_file("/files/b.safetensors", other)
    bcos_zoo.register_weights(tiny_spec("versioned", UrlFile(url_a, sha256=sha256(data))))
    bcos_zoo.create_model(f"{ARCH}.versioned", pretrained=True)
    cached = cache / "weights" / f"{ARCH}.versioned.safetensors"
    assert cached.read_bytes() == data
    bcos_zoo.register_weights(tiny_spec("versioned", UrlFile(url_b, sha256=sha256(other))), replace=True)
    fetch.weight_file(bcos_zoo.get_weights(f"{ARCH}.versioned"))  # a new version: fetched again
    assert cached.read_bytes() == other and server.gets("/files/b.safetensors") == 1


def test_pretrained_forms(cache, server, tiny, tiny_pth, tmp_path):
    data, x, logits = tiny
    url = server.add_file("/files/tiny.safetensors", data)
    from_url = bcos_zoo.create_model(ARCH, pretrained=url, num_classes=5, **TINY_KWARGS)
    assert_logits(from_url, x, logits)
    assert from_url.pretrained_cfg.tag == "url" and from_url.pretrained_cfg.sources == (UrlFile(url),)

    local = tmp_path / "tiny.safetensors"
    local.write_bytes(data)
    assert_logits(bcos_zoo.create_model(ARCH, pretrained=str(local), num_classes=5, **TINY_KWARGS), x, logits)

    pth, filename, *_ = tiny_pth
    (tmp_path / filename).write_bytes(pth)  # a local .pth is read with weights_only=True
    from_pth = bcos_zoo.create_model(ARCH, pretrained=tmp_path / filename, num_classes=5, **TINY_KWARGS)
    assert_logits(from_pth, x, logits)
    assert from_pth.pretrained_cfg.tag == "local"

    with pytest.raises(ValueError, match=r"not a tag of its weights \(in1k\)"):
        bcos_zoo.create_model("bcos_resnet18", pretrained="long_in1k")


def test_converted_file_carries_its_record(cache, tiny_pth, tmp_path):
    pth, filename, x, logits = tiny_pth
    (tmp_path / filename).write_bytes(pth)
    spec = tiny_spec("converted", UrlFile("https://example.org/" + filename))
    bcos_zoo.register_weights(spec)
    out, digest = convert_checkpoint(tmp_path / filename, spec.name, tmp_path / "converted")
    assert out == tmp_path / "converted" / f"{spec.name}.safetensors" and digest == sha256(out.read_bytes())
    loaded = bcos_zoo.create_model(ARCH, pretrained=out)  # the header names the record: its arguments apply
    assert loaded.pretrained_cfg is spec and loaded.num_classes == 5
    assert_logits(loaded, x, logits)
    assert bcos_zoo.load_model(out).pretrained_cfg is spec  # no name needed at all


def test_conflicting_arguments(cache):
    bcos_zoo.register_weights(tiny_spec("conflict", UrlFile("http://127.0.0.1:9/x.safetensors")))
    with pytest.raises(ValueError, match="num_classes=5, but num_classes=10"):
        bcos_zoo.create_model(f"{ARCH}.conflict", pretrained=True, num_classes=10)
    with pytest.raises(ValueError, match="norm_layer='bnu-linear', but norm_layer='none'"):
        bcos_zoo.create_model(ARCH, pretrained="conflict", norm_layer="none")
    with pytest.raises(ValueError, match="selects the weights bcos_resnet50.in1k"):
        bcos_zoo.create_model("resnet50", pretrained="long_in1k")


@pytest.mark.parametrize("entry", ["create_model", "model_entrypoint", "torch_hub"])
def test_weights_arguments_are_judged_by_every_entry_point(cache, monkeypatch, entry):
    """A user's num_classes that contradicts the weights raises through every public entry point, before any
    download (the cache stays empty and nothing is requested: the URL points nowhere)."""
    import hubconf_loader

    builders = {
        "create_model": lambda **kw: bcos_zoo.create_model("bcos_resnet50", **kw),
        "model_entrypoint": lambda **kw: bcos_zoo.model_entrypoint("bcos_resnet50")(**kw),
        "torch_hub": lambda **kw: hubconf_loader.load().bcos_resnet50(**kw),
    }
    monkeypatch.setenv("BCOS_ZOO_RELEASE_URL", "http://127.0.0.1:9/nowhere")
    with pytest.raises(ValueError, match="num_classes=1000, but num_classes=10"):
        builders[entry](pretrained=True, num_classes=10)
    assert files_in(cache) == []
    model = builders[entry](num_classes=10)  # without weights, any num_classes
    assert model.num_classes == 10 and model.pretrained_cfg is None


def test_register_weights_rules(cache):
    first, second = (
        tiny_spec("one", UrlFile("http://x/1.safetensors")),
        tiny_spec("two", UrlFile("http://x/2.safetensors")),
    )
    bcos_zoo.register_weights([first, second])
    assert bcos_zoo.default_weights(ARCH) is first  # the first registered is the default ...
    bcos_zoo.register_weights(tiny_spec("three", UrlFile("http://x/3.safetensors")), default=True)
    assert bcos_zoo.get_weights(ARCH).tag == "three"  # ... until another is registered as default
    assert ARCH in bcos_zoo.list_models("bcos_resnet*", pretrained=True)
    assert bcos_zoo.list_weights(ARCH) == [f"{ARCH}.one", f"{ARCH}.three", f"{ARCH}.two"]
    with pytest.raises(ValueError, match="already registered"):
        bcos_zoo.register_weights(first)
    bcos_zoo.register_weights(first, replace=True)
    with pytest.raises(ValueError, match="alias 'resnet50'"):
        bcos_zoo.register_weights(WeightSpec(**{**vars(first), "tag": "four", "aliases": ("resnet50",)}))
    with pytest.raises(ValueError, match="lowercase"):
        tiny_spec("Upper", UrlFile("http://x/1.safetensors"))


def _race(barrier, errors) -> None:  # runs in a forked child process
    try:
        barrier.wait(timeout=60)
        name = bcos_zoo.create_model(f"{ARCH}.race", pretrained=True).pretrained_cfg.name
        errors.put(None if name == f"{ARCH}.race" else f"loaded {name}")
    except Exception as e:  # noqa: BLE001  (report any failure to the parent)
        errors.put(f"{type(e).__name__}: {e}")


def test_two_processes_load_the_same_weight(cache, server, tiny):
    data, *_ = tiny
    url = server.add_file("/files/race.safetensors", data)
    server.seconds_per_file = 1.0  # slow enough that the second process arrives mid-download
    bcos_zoo.register_weights(tiny_spec("race", UrlFile(url, sha256=sha256(data))))
    ctx = multiprocessing.get_context("fork")  # forked children share the registry and skip re-importing torch
    barrier, errors = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(barrier, errors)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [errors.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert results == [None, None] and [p.exitcode for p in procs] == [0, 0]
    assert server.gets("/files/race.safetensors") == 1  # the second process waited and used the cached file
    cached = cache / "weights" / f"{ARCH}.race.safetensors"
    assert files_in(cache) == [cached.name, cached.name + ".sha256"] and cached.read_bytes() == data


def test_warm_loads_do_not_hash_the_cached_file_again(cache, server, tiny, monkeypatch):
    """Verified once when written; later loads compare size and modification time with the record, and
    hash again only when they changed (a rewritten file of the same size is caught that way)."""
    data, x, logits = tiny
    url = server.add_file("/files/warm.safetensors", data)
    bcos_zoo.register_weights(tiny_spec("warm", UrlFile(url, sha256=sha256(data))))
    bcos_zoo.create_model(f"{ARCH}.warm", pretrained=True)
    cached = cache / "weights" / f"{ARCH}.warm.safetensors"

    def no_hashing(path):
        raise AssertionError(f"{path} was hashed again")

    with monkeypatch.context() as m:
        m.setattr(fetch, "sha256_file", no_hashing)
        assert_logits(bcos_zoo.create_model(f"{ARCH}.warm", pretrained=True), x, logits)
    corrupt = bytearray(cached.read_bytes())
    corrupt[-1] ^= 0xFF  # same size, new modification time
    cached.write_bytes(bytes(corrupt))
    assert_logits(bcos_zoo.create_model(f"{ARCH}.warm", pretrained=True), x, logits)
    assert server.gets("/files/warm.safetensors") == 2 and cached.read_bytes() == data
