"""Hostile and careless input to the fetch layer, the builder and the command line (issue: reliability).

Every case is served by a loopback server the test starts, or made on disk; nothing leaves the machine.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hf_server import LoopbackServer
from safetensors.torch import save_file

import bcos_zoo
from bcos_zoo import CheckpointError, DownloadError, UrlFile, WeightSpec, cli, fetch
from bcos_zoo.records import TransformConfig

pytestmark = pytest.mark.usefixtures("single_thread")

ARCH = "bcos_resnet20_cifar"
KW = {"num_classes": 5, "norm_layer": "bnu-linear", "in_chans": 2}
X = torch.rand(2, 2, 16, 16)


def tiny(seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A 5-class model's state dict and its logits on ``X``."""
    torch.manual_seed(seed)
    model = bcos_zoo.create_model(ARCH, **KW).eval()
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "running_var", None) is not None:
                m.running_var.uniform_(0.5, 2.0)
        return {k: v.clone() for k, v in model.state_dict().items()}, model(X)


def pth_bytes(state: dict[str, torch.Tensor]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def safetensors_bytes(state: dict[str, torch.Tensor], tmp_path: Path, name: str = "w.safetensors") -> bytes:
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / name))
    return (tmp_path / name).read_bytes()


def logits_of(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(X)


def cache_files(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock"))


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch):
    with LoopbackServer() as srv:
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        yield srv


# ------------------------------------------------------------------------------------------ the cache


def _load_url(url: str, out) -> None:  # runs in a forked child
    try:
        out.put((url, logits_of(bcos_zoo.create_model(ARCH, pretrained=url, **KW)).tolist()))
    except Exception as e:  # noqa: BLE001 - report any failure to the parent
        out.put((url, f"{type(e).__name__}: {e}"))


def test_two_urls_with_one_file_name_never_share_a_cache_entry(weights_env, server):
    """Item 1: ``a/model.pth`` and ``b/model.pth`` loaded at the same time from two processes, each slow."""
    (sa, la), (sb, lb) = tiny(1), tiny(2)
    url_a, url_b = server.add_file("/a/model.pth", pth_bytes(sa)), server.add_file("/b/model.pth", pth_bytes(sb))
    server.seconds_per_file = 1.0
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_load_url, args=(u, out)) for u in (url_a, url_b)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    torch.testing.assert_close(torch.tensor(results[url_a]), la)
    torch.testing.assert_close(torch.tensor(results[url_b]), lb)
    server.seconds_per_file = 0.0  # and later loads from the cache still tell them apart
    torch.testing.assert_close(logits_of(bcos_zoo.create_model(ARCH, pretrained=url_a, **KW)), la)
    torch.testing.assert_close(logits_of(bcos_zoo.create_model(ARCH, pretrained=url_b, **KW)), lb)
    assert server.gets("/a/model.pth") == server.gets("/b/model.pth") == 1


def test_a_bad_download_never_enters_the_cache(weights_env, server, tmp_path):
    """Item 2: HTML served as ``.safetensors`` fails with the URL named; once fixed, it is fetched again."""
    state, logits = tiny(3)
    url = server.add_file("/p.safetensors", b"<html><body>Sign in to download</body></html>\n" * 50)
    with pytest.raises(CheckpointError, match=r"p\.safetensors.*not usable"):
        bcos_zoo.create_model(ARCH, pretrained=url, **KW)
    assert [f for f in cache_files(weights_env) if f.endswith(".safetensors")] == []
    server.add_file("/p.safetensors", safetensors_bytes(state, tmp_path))
    torch.testing.assert_close(logits_of(bcos_zoo.create_model(ARCH, pretrained=url, **KW)), logits)
    assert server.gets("/p.safetensors") == 2


def test_a_download_that_does_not_fit_is_evicted(weights_env, server, tmp_path):
    """Item 2: a valid safetensors file whose keys do not fit is not kept either."""
    state, logits = tiny(4)
    url = server.add_file("/q.safetensors", safetensors_bytes({"w": torch.ones(3)}, tmp_path, "other.safetensors"))
    with pytest.raises(CheckpointError, match="does not fit"):
        bcos_zoo.create_model(ARCH, pretrained=url, **KW)
    assert [f for f in cache_files(weights_env) if f.endswith(".safetensors")] == []
    server.add_file("/q.safetensors", safetensors_bytes(state, tmp_path))
    torch.testing.assert_close(logits_of(bcos_zoo.create_model(ARCH, pretrained=url, **KW)), logits)


def test_url_with_a_query_string(weights_env, server, tmp_path):
    """Item 3: the format comes from the content, the name from the path; no query text in any file name."""
    state, logits = tiny(5)
    server.add_file("/w.safetensors", safetensors_bytes(state, tmp_path))
    url = server.url + "/w.safetensors?download=1&token=abc123"
    model = bcos_zoo.create_model(ARCH, pretrained=url, **KW)
    torch.testing.assert_close(logits_of(model), logits)
    assert not any("?" in f or "abc123" in f for f in cache_files(weights_env))
    assert "abc123" not in repr(model.pretrained_cfg)


@pytest.mark.parametrize("tail", ["/.", "/.."])
def test_url_without_a_file_name(weights_env, server, tail, tmp_path):
    """Item 4: a URL ending in ``/.`` or ``/..`` is refused by name and breaks nothing for later URLs."""
    state, logits = tiny(6)
    with pytest.raises(ValueError, match="does not end in a file name"):
        bcos_zoo.register_weights(WeightSpec(arch=ARCH, tag="dot", sources=(UrlFile(server.url + "/x" + tail),),
                                             num_classes=5, transform=TransformConfig()))  # fmt: skip
        fetch.weight_file(bcos_zoo.get_weights(f"{ARCH}.dot"))
    url = server.add_file("/later/model.pth", pth_bytes(state))
    torch.testing.assert_close(logits_of(bcos_zoo.create_model(ARCH, pretrained=url, **KW)), logits)


@pytest.mark.parametrize("text", ["hf-hub:org/repo@../../../x", "hf-hub:org/../x", "hf-hub:org/repo/../../f.pth",
                                  "hf-hub:org/repo/a/./b", "hf-hub:../repo", "hf-hub:org/re po"])
def test_hub_ids_are_validated_before_the_hub_client_runs(weights_env, server, text):
    """Item 5: revisions, repo ids and file names with ``..`` never reach ``hf_hub_download``."""
    with pytest.raises(ValueError, match="HubFile|repo_id"):
        bcos_zoo.create_model(ARCH, pretrained=text, **KW)
    assert sum(server.requests.values()) == 0


def test_credentials_in_a_url_are_never_recorded(weights_env, server):
    """Item 6: user info and query tokens stay out of the cached file and ``pretrained_cfg``."""
    state, logits = tiny(7)
    server.add_file("/w.pth", pth_bytes(state))
    url = server.url.replace("http://", "http://user:s3cret@") + "/w.pth?sig=t0ken"
    model = bcos_zoo.create_model(ARCH, pretrained=url, **KW)
    torch.testing.assert_close(logits_of(model), logits)
    assert "s3cret" not in repr(model.pretrained_cfg) and "t0ken" not in repr(model.pretrained_cfg)
    for f in weights_env.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert b"s3cret" not in data and b"t0ken" not in data, f
    (cached,) = [p for p in weights_env.rglob("*.safetensors")]
    assert bcos_zoo.read_header(cached).source == server.url + "/w.pth"


def test_an_undecodable_checksum_record_is_corruption(weights_env, server, tmp_path):
    """Item 7: a ``.sha256`` with non-UTF-8 bytes means "fetch again", in the API and in ``bcos-zoo list``."""
    state, logits = tiny(8)
    url = server.add_file("/r.safetensors", safetensors_bytes(state, tmp_path))
    spec = WeightSpec(arch=ARCH, tag="rec", sources=(UrlFile(url),), num_classes=5, transform=TransformConfig(),
                      model_kwargs={k: v for k, v in KW.items() if k != "num_classes"})  # fmt: skip
    bcos_zoo.register_weights(spec)
    bcos_zoo.create_model(spec.name, pretrained=True)
    (sidecar,) = weights_env.rglob("*.sha256")
    sidecar.write_bytes(b"\xff\xfe\x00garbage")
    assert fetch.cache_state(spec) == "no"
    torch.testing.assert_close(logits_of(bcos_zoo.create_model(spec.name, pretrained=True)), logits)
    assert server.gets("/r.safetensors") == 2 and fetch.cache_state(spec) == "yes"


def test_stale_temporaries_of_dead_processes_are_removed(weights_env, server, tmp_path):
    """Item 9: a ``.part`` left by a killed download (its pid no longer runs) is cleaned up by the next one."""
    state, _ = tiny(9)
    url = server.add_file("/s.pth", pth_bytes(state))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = weights_env / "adhoc"
    folder.mkdir(parents=True)
    stale = folder / f".x.safetensors.{dead.pid}-abc123.part"
    stale.write_bytes(b"half a file")
    alive = folder / f".y.safetensors.{os.getpid()}-def456.part"  # ours: still being written
    alive.write_bytes(b"in progress")
    bcos_zoo.create_model(ARCH, pretrained=url, **KW)
    assert not stale.exists() and alive.exists()


def test_atomically_written_files_get_the_mode_open_would_give(tmp_path):
    """Cached weights, cards and checkpoints are readable as the umask allows (``tempfile.mkstemp`` alone
    would leave them 0600, unreadable to the others sharing a cache), and a writer's temporary names its pid."""
    from bcos_zoo.files import atomic_write

    previous = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "w.safetensors") as tmp:
            assert tmp.name.startswith(f".w.safetensors.{os.getpid()}-") and tmp.name.endswith(".part")
            tmp.write_bytes(b"weights")
        os.umask(0o077)
        with atomic_write(tmp_path / "private.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "w.safetensors").read_bytes() == b"weights" and not list(tmp_path.glob(".*.part"))


# ------------------------------------------------------------------------------------- what arrives


def test_malformed_content_length_is_named(weights_env, server, tmp_path):
    """Item 10."""
    state, _ = tiny(10)
    server.add_file("/m.safetensors", safetensors_bytes(state, tmp_path))
    server.headers["/m.safetensors"] = {"Content-Length": "abc"}
    with pytest.raises(DownloadError, match="malformed Content-Length 'abc'"):
        bcos_zoo.create_model(ARCH, pretrained=server.url + "/m.safetensors", **KW)


def test_a_server_that_gzips_anyway(weights_env, server, tmp_path):
    """Item 10: the body is decoded and verified; its compressed length is not mistaken for a cut-off."""
    state, logits = tiny(11)
    server.add_file("/g.safetensors", safetensors_bytes(state, tmp_path))
    server.gzipped.add("/g.safetensors")
    model = bcos_zoo.create_model(ARCH, pretrained=server.url + "/g.safetensors", **KW)
    torch.testing.assert_close(logits_of(model), logits)


def test_non_finite_weights_are_refused(weights_env, server, tmp_path):
    """Item 17: at fetch time (nothing cached) and in ``bcos-zoo convert``, naming the tensor."""
    state, _ = tiny(12)
    key = next(k for k in state if k.endswith("weight"))
    state[key] = state[key].clone().fill_(float("nan"))
    url = server.add_file("/nan.pth", pth_bytes(state))
    with pytest.raises(CheckpointError, match=f"{key}.*NaN"):
        bcos_zoo.create_model(ARCH, pretrained=url, **KW)
    assert [f for f in cache_files(weights_env) if f.endswith(".safetensors")] == []
    (tmp_path / "nan-0123456789.pth").write_bytes(pth_bytes(state))
    spec = WeightSpec(arch=ARCH, tag="nan", sources=(UrlFile("https://example.org/nan-0123456789.pth"),), num_classes=5,
                      transform=TransformConfig(), model_kwargs={"norm_layer": "bnu-linear", "in_chans": 2})  # fmt: skip
    bcos_zoo.register_weights(spec)
    from bcos_zoo.convert import convert_checkpoint

    with pytest.raises(CheckpointError, match="NaN"):
        convert_checkpoint(tmp_path / "nan-0123456789.pth", spec.name, tmp_path / "out")
    assert not (tmp_path / "out" / f"{spec.name}.safetensors").exists()


# ----------------------------------------------------------------------------------------- local files


def test_unreadable_checkpoints_name_the_file(tmp_path):
    """Item 8: text, ``/etc/passwd`` and an empty file give a CheckpointError with the path."""
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n" * 10)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    for path in (text, Path("/etc/passwd"), empty):
        with pytest.raises(CheckpointError, match=str(path)):
            bcos_zoo.create_model(ARCH, pretrained=path, **KW)


@pytest.mark.parametrize("name", ["weights.pth", "WEIGHTS.SAFETENSORS", "weights.bin"])
def test_the_format_is_told_by_the_content(tmp_path, name):
    """Item 8: a safetensors file named ``.pth`` (or in capitals, or anything) loads as safetensors."""
    state, logits = tiny(13)
    safetensors_bytes(state, tmp_path, name)
    torch.testing.assert_close(logits_of(bcos_zoo.create_model(ARCH, pretrained=tmp_path / name, **KW)), logits)


@pytest.mark.parametrize(("pretrained", "error", "match"), [
    ("", ValueError, "empty"),
    ("   ", ValueError, "empty"),
    (1, TypeError, "not int"),
    (b"in1k", TypeError, "not bytes"),
    ("x" * 5000, ValueError, "too long"),
    ("in1k_nope", ValueError, "not a tag of its weights"),
])  # fmt: skip
def test_odd_pretrained_values(pretrained, error, match):
    """Item 13: never a silently random model, never a bare OSError."""
    with pytest.raises(error, match=match):
        bcos_zoo.create_model("bcos_resnet18", pretrained=pretrained)


def test_a_cache_that_is_a_file(monkeypatch, tmp_path):
    """Item 13."""
    (tmp_path / "cache").write_text("")
    monkeypatch.setenv("BCOS_ZOO_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DownloadError, match="is a file, not a folder: point BCOS_ZOO_CACHE at a folder"):
        bcos_zoo.create_model("bcos_resnet18", pretrained=True)


def test_a_header_is_checked_before_the_model_is_built(tmp_path, monkeypatch):
    """Item 16: a header asking for 100000 classes fails on the meta device, before anything is allocated;
    a header with broken JSON or unknown arguments is refused by name."""
    state, _ = tiny(14)
    path = tmp_path / "big.safetensors"
    header = {"arch": ARCH, "model_kwargs": json.dumps({**KW, "num_classes": 100_000})}
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=header)
    built = []
    real = torch.nn.Module.__init__

    def counting_init(self, *a, **k):  # count modules built off the meta device
        real(self, *a, **k)
        built.append(torch.empty(0).device.type)

    monkeypatch.setattr(torch.nn.Module, "__init__", counting_init)
    with pytest.raises(CheckpointError, match="shape mismatches: fc.linear.weight: checkpoint"):
        bcos_zoo.load_model(path)
    assert set(built) == {"meta"}, "only the meta-device probe was built"
    monkeypatch.undo()
    for bad, match in (({"arch": ARCH, "model_kwargs": "{not json"}, "header of .* is malformed"),
                       ({"arch": ARCH, "model_kwargs": json.dumps({"frobnicate": 1})}, "frobnicate")):  # fmt: skip
        save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=bad)
        with pytest.raises((CheckpointError, TypeError), match=match):
            bcos_zoo.load_model(path)


# ------------------------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("args", [
    ["predict", "IMG", "--batch-size", "-1"], ["predict", "IMG", "--batch-size", "0"],
    ["explain", "IMG", "--batch-size", "-1"], ["predict", "IMG", "--top-k", "0"], ["explain", "IMG", "--top-k", "-1"],
    ["predict", "IMG", "--image-size", "100000"], ["localisation", "--data", "fashion-mnist", "--n-grids", "0"],
    ["train", "--epochs", "0"],
])  # fmt: skip
def test_cli_numbers_are_range_checked(capsys, args):
    """Item 12: one usage line (exit 2) before anything is loaded."""
    image = str(Path(bcos_zoo.__file__).parent / "assets" / "synthetic_shapes.png")
    with pytest.raises(SystemExit) as e:
        cli.main([image if a == "IMG" else a for a in args] + ["--model", "bcos_resnet20_cifar.fmnist"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "expected a number" in err, err


# --------------------------------------------------------------------------------- explain and transform


def test_explaining_never_changes_the_model():
    """Item 14: a model in training mode warns, and its batch-norm statistics are as they were."""
    torch.manual_seed(0)
    model = bcos_zoo.create_model(ARCH, **KW).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="training mode"):
        model.explain(torch.rand(3, 2, 16, 16))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), [k for k in before if not torch.equal(before[k], after[k])]
    assert model.training


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_explain_takes_other_float_dtypes(dtype):
    """Item 14: the batch is cast to the model's dtype; the explanation is complete."""
    torch.manual_seed(0)
    model = bcos_zoo.create_model(ARCH, **KW).eval()
    out = model.explain(X.to(dtype))
    assert out.contribution_map.dtype == torch.float32
    chosen = out.logits.gather(1, out.target[:, None])[:, 0]
    torch.testing.assert_close(out.contribution_map.sum((-2, -1)) + out.bias_contribution, chosen, rtol=1e-4, atol=1e-4)


def test_explain_under_inference_mode():
    """Item 14: ``torch.inference_mode()`` around the call (as serving code has) gives the same explanation."""
    torch.manual_seed(0)
    model = bcos_zoo.create_model(ARCH, **KW).eval()
    expected = model.explain(X).contribution_map
    with torch.inference_mode():
        x = X.clone()  # an inference tensor
        out = model.explain(x)
    torch.testing.assert_close(out.contribution_map, expected)


@pytest.mark.parametrize(("image", "match"), [
    (torch.full((1, 8, 8), 200.0), r"values in \[0, 1\], got 200 to 200; .*divide by 255"),
    (torch.zeros(1, 0, 0), "empty"),
    (torch.zeros(3, 5, 0), "empty"),
])  # fmt: skip
def test_transform_questions_odd_tensors(image, match):
    """Item 15."""
    transform = bcos_zoo.create_transform(resize_size=None, crop_size=None, in_chans=2)
    with pytest.raises(ValueError, match=match):
        transform(image)
