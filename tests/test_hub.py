"""torch.hub entry points (hubconf.py) and the distribution scripts: convert, publish (dry run)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest
import torch

import bcos_zoo
from bcos_zoo import TransformConfig, UrlFile, WeightSpec
from hubconf_loader import load as load_hubconf

pytestmark = pytest.mark.usefixtures("single_thread")

REPO = Path(__file__).resolve().parents[1]
ARCH, KWARGS = "bcos_resnet32_cifar", {"num_classes": 5, "norm_layer": "bnu-linear"}


@pytest.fixture(scope="module")
def tiny_pth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A ``.pth`` in the official format (a plain state dict, ``<name>-<sha10>.pth``) and its model."""
    torch.manual_seed(0)
    model = bcos_zoo.create_model(ARCH, **KWARGS).eval()
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "running_var", None) is not None:
                m.running_var.uniform_(0.5, 2.0)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    path = tmp_path_factory.mktemp("pth") / f"tiny-{hashlib.sha256(buf.getvalue()).hexdigest()[:10]}.pth"
    path.write_bytes(buf.getvalue())
    return path, model


def test_hub_entry_points_are_exactly_the_architectures():
    hubconf = load_hubconf()
    entry_points = {n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")}
    assert entry_points == set(bcos_zoo.list_models())


def test_hub_docstrings_come_from_the_registry():
    hubconf = load_hubconf()
    doc = hubconf.bcos_resnet50.__doc__
    assert doc.index("bcos_resnet50.long_in1k: imagenet-1k top-1 79.468, top-5 94.452") < doc.index(
        "bcos_resnet50.in1k"
    )
    assert "25.54M params" in doc and "No pretrained weights" in hubconf.bcos_resnet32_cifar.__doc__


@pytest.mark.slow
def test_torch_hub_load_local_builds_every_entry_point():
    """Every architecture loads through torch.hub (on the meta device: structure only, nothing allocated)."""
    for arch in bcos_zoo.list_models():
        with torch.device("meta"):
            model = torch.hub.load(str(REPO), arch, source="local", num_classes=3)
        assert model.arch == arch and model.num_classes == 3


def test_torch_hub_load_local_with_a_file(tiny_pth, tmp_path):
    path, model = tiny_pth
    loaded = torch.hub.load(str(REPO), ARCH, source="local", pretrained=str(path), **KWARGS)
    x = torch.rand(1, 6, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x))
    assert loaded.pretrained_cfg.tag == "local"
    with pytest.raises(ValueError, match="num_classes=1000, but num_classes=10"):
        torch.hub.load(str(REPO), "bcos_resnet18", source="local", pretrained=True, num_classes=10)


def test_convert_then_publish_dry_run(weights_env, tiny_pth, tmp_path, load_script, capsys):
    path, model = tiny_pth
    spec = WeightSpec(
        arch=ARCH,
        tag="scripts_test",
        sources=(bcos_zoo.release_file(path.name, "https://example.org/r"),),
        num_classes=5,
        transform=TransformConfig(resize_size=None, crop_size=None),
        model_kwargs={"norm_layer": "bnu-linear"},
        num_params=sum(p.numel() for p in model.parameters()),
    )
    bcos_zoo.register_weights(spec)
    out = tmp_path / "converted"
    assert load_script("convert_checkpoint").main([str(path), "--weights", spec.name, "--out-dir", str(out)]) == 0
    converted = out / f"{spec.name}.safetensors"
    header = bcos_zoo.read_header(converted)
    assert header.weight == spec.name and header.source == spec.sources[0].url and header.arch == ARCH
    assert header.source_sha256.startswith(spec.sha256_prefix) and header.model_kwargs == spec.build_kwargs
    assert f"# {spec.name}" in (out / f"{spec.name}.md").read_text()
    reloaded = bcos_zoo.create_model(ARCH, pretrained=converted, **KWARGS)  # the header names the record
    assert reloaded.pretrained_cfg is spec
    x = torch.rand(1, 6, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(x), model(x))
    capsys.readouterr()

    assert load_script("publish_weights").main([str(out), "--org", "me", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    digest = hashlib.sha256(converted.read_bytes()).hexdigest()
    for name in ("model.safetensors", "README.md", "config.json"):
        assert f"would upload me/{spec.name}/{name}" in printed
    assert f'"{spec.name}": "{digest}",' in printed


def test_convert_reports_a_checkpoint_that_does_not_fit(weights_env, tiny_pth, tmp_path, load_script, capsys):
    path, _ = tiny_pth
    spec = WeightSpec(
        arch="bcos_resnet32_cifar",
        tag="wrong",
        sources=(UrlFile("https://example.org/x.pth"),),
        num_classes=5,
        transform=TransformConfig(resize_size=None, crop_size=None),
    )
    bcos_zoo.register_weights(spec)
    assert load_script("convert_checkpoint").main([str(path), "--weights", spec.name, "--out-dir", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert f"checkpoint {path} does not fit BcosResNet" in error and "unexpected keys" in error
    assert not list(tmp_path.glob("*.safetensors"))
