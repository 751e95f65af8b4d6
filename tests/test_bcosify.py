"""B-cosification: the conversion rules, equivalences, completeness per family, identity, training, the CLI."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bcos_zoo
from bcos_zoo.bcosification import StandardTeacher
from bcos_zoo.cli import main as cli_main
from bcos_zoo.errors import CheckpointError
from bcos_zoo.layers import BatchNormUncentered2d, Detachable, LogitLayer
from bcos_zoo.layers.bcosified import BcosifiedConv2d, BcosifiedLinear, DetachableGELU, InputNormalization, set_b_
from bcos_zoo.models.bcosify_rules import split_conv_weight, split_patch_weight
from bcos_zoo.training import TrainConfig, Trainer
from bcos_zoo.training.loop import bce_loss, scheduled_b

torchvision = pytest.importorskip("torchvision")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(autouse=True)
def _one_thread(single_thread: None) -> None:
    torch.manual_seed(0)


def _rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _with_inverse(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, 1 - x], dim=1)


def _calibrate(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Batch-norm running statistics from one batch (momentum 1), then eval mode: trained-looking statistics."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 1.0
    with torch.no_grad():
        model.train()(x)
    return model.eval()


def _assert_complete(model: nn.Module, x: torch.Tensor) -> None:
    """Contributions over every input channel sum to logit - logit bias, and the explanation is not empty.

    Checked in float64: B=2 units with random (untrained) weights shrink the signal a lot, which float32
    would blur against the logit bias; completeness is an identity at any precision.
    """
    model, x = copy.deepcopy(model).double(), x.double()
    out = model.explain(x, target=[0, 1][: x.shape[0]])
    logits = out.logits.gather(1, out.target[:, None])[:, 0]
    scale = (x * out.dynamic_linear_weights).abs().sum((1, 2, 3))
    assert (scale > 1e-6).all(), scale
    total = out.contribution_map.sum((-2, -1)) + out.bias_contribution
    assert ((total - logits).abs() <= 1e-6 * scale + 1e-12).all(), (total, logits)
    assert not any(m.detach for m in model.modules() if isinstance(m, Detachable))


def _small_vgg(batch_norm: bool) -> nn.Module:
    """A torchvision ``VGG`` with small widths (its own builders make a 100M-parameter classifier)."""
    from torchvision.models.vgg import VGG, make_layers

    with torch.device("meta"):
        vgg = VGG(nn.Sequential(), num_classes=3, init_weights=False)
    vgg.features = make_layers([8, "M", 16, "M"], batch_norm=batch_norm)
    vgg.avgpool = nn.AdaptiveAvgPool2d((2, 2))
    vgg.classifier = nn.Sequential(nn.Linear(16 * 4, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 32), nn.ReLU(True),
                                   nn.Dropout(), nn.Linear(32, 3))  # fmt: skip
    with torch.no_grad():  # larger filters than at random init (as trained ones are), or B=2 units shrink the signal
        for m in vgg.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(4)
    return vgg


def _cifar_standard(in_chans: int = 1, num_classes: int = 10) -> nn.Module:
    x = _rand(8, in_chans, 28, 28)
    return _calibrate(bcos_zoo.create_model("standard_resnet20_cifar", num_classes=num_classes, in_chans=in_chans), x)


# ------------------------------------------------------------------------------------------- the rules


def test_first_layer_split_sees_what_the_standard_layer_saw() -> None:
    w, z = torch.randn(4, 3, 3, 3), torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(F.conv2d(torch.cat([z, -z], 1), split_conv_weight(w)), F.conv2d(z, w))
    wp, zp = torch.randn(5, 2 * 2 * 3), torch.randn(7, 2, 2, 3)  # patch vectors ordered (row, column, channel)
    split = split_patch_weight(wp, 3)
    assert split.shape == (5, 2 * 2 * 6)
    torch.testing.assert_close(torch.cat([zp, -zp], -1).flatten(1) @ split.T, zp.flatten(1) @ wp.T)


def test_normalisation_is_normalize_on_x_and_bias_free() -> None:
    norm = InputNormalization(MEAN, STD)
    x = _rand(2, 3, 5, 5)
    out = norm(_with_inverse(x))
    reference = torchvision.transforms.Normalize(MEAN, STD)(x)
    torch.testing.assert_close(out, torch.cat([reference, -reference], 1))
    # linear in the six channels with no constant: it maps 0 to 0 and commutes with scaling and sums
    u, v = torch.randn(2, 6, 5, 5), torch.randn(2, 6, 5, 5)
    assert norm(torch.zeros(1, 6, 2, 2)).abs().max() == 0
    torch.testing.assert_close(norm(2.5 * u + v), 2.5 * norm(u) + norm(v))
    with pytest.raises(ValueError, match="the image and its inverse"):
        norm(x)


def test_batchnorm_keeps_trained_scale_and_variance_drops_mean_and_bias() -> None:
    std = _cifar_standard()
    with torch.no_grad():
        std.bn1.weight.uniform_(0.5, 2.0)
        std.bn1.bias.uniform_(-1, 1)
    model = bcos_zoo.bcosify(std)
    bn = model.model.bn1
    assert isinstance(bn, BatchNormUncentered2d) and bn.bias is None and (bn.running_mean == 0).all()
    torch.testing.assert_close(bn.weight, std.bn1.weight)
    torch.testing.assert_close(bn.running_var, std.bn1.running_var)
    x = torch.randn(2, 16, 4, 4)
    expected = std.bn1.weight.view(1, -1, 1, 1) * x / (std.bn1.running_var.view(1, -1, 1, 1) + bn.eps).sqrt()
    torch.testing.assert_close(bn.eval()(x), expected)
    assert model.model.bn1.weight.data_ptr() != std.bn1.weight.data_ptr(), "the user's network is left unchanged"


def test_pools_relus_biases_and_classifier_of_a_torchvision_resnet() -> None:
    std = torchvision.models.resnet18(num_classes=7)
    model = bcos_zoo.bcosify(std)
    pool = model.model.maxpool
    assert type(pool) is nn.AvgPool2d and (pool.kernel_size, pool.stride, pool.padding) == (3, 2, 1)
    assert all(type(m) is not nn.MaxPool2d for m in model.modules())
    assert all(getattr(m, "bias", None) is None for m in model.modules() if not isinstance(m, LogitLayer))
    assert isinstance(model.model.relu, nn.ReLU) and not model.model.relu.inplace
    fc = model.get_classifier()
    assert isinstance(fc, BcosifiedConv2d) and fc.linear.weight.shape == (7, 512, 1, 1)
    torch.testing.assert_close(fc.linear.weight.flatten(1), std.fc.weight)
    assert model.logit_layer.logit_bias == pytest.approx(-torch.log(torch.tensor(6.0)).item())
    assert model.arch == "bcosified_resnet18" and model.in_chans == 6
    dropped = bcos_zoo.bcosify(std, keep_relu=False)
    assert not any(isinstance(m, nn.ReLU) for m in dropped.modules())
    x = _with_inverse(_rand(2, 3, 32, 32))
    _assert_complete(_calibrate(model, x), x)


def test_classifier_before_the_pool_equals_pooling_first_for_the_linear_part() -> None:
    linear = nn.Linear(8, 3)
    unit = BcosifiedConv2d.from_weight(linear.weight.reshape(3, 8, 1, 1), nn.Conv2d(1, 1, 1), b=1)
    features = torch.randn(2, 8, 5, 5)
    pooled_after = F.adaptive_avg_pool2d(unit(features), 1).flatten(1)
    torch.testing.assert_close(pooled_after, F.linear(features.mean((-2, -1)), linear.weight))


@pytest.mark.parametrize("b", [2.0, 1.5])
def test_units_use_the_weights_as_stored(b: float) -> None:
    """``(w·x)·(|w·x| / ‖x_patch‖ (+1e-6))^(B-1)`` with the v2 patch norm, no unit-norm filters."""
    conv = nn.Conv2d(3, 4, 3, padding=1)
    unit = BcosifiedConv2d.from_weight(conv.weight, conv, b=b)
    x = torch.randn(2, 3, 6, 6)
    lin = F.conv2d(x, conv.weight, padding=1)
    norm = (F.conv2d(x.square().sum(1, keepdim=True), torch.ones(1, 1, 3, 3), padding=1) + 1e-6).sqrt()
    factor = lin.abs() / norm if b == 2 else (lin.abs() / norm + 1e-6) ** (b - 1)
    torch.testing.assert_close(unit(x), lin * factor)
    linear = BcosifiedLinear.from_weight(torch.randn(4, 3), b=2)
    v = torch.randn(5, 3)
    out = v @ linear.linear.weight.T
    torch.testing.assert_close(linear(v), out * out.abs() / (v.norm(dim=-1, keepdim=True) + 1e-12))
    set_b_(unit, 1)
    torch.testing.assert_close(unit(x), lin)


def test_gelu_gate_is_detached_in_explanation_mode() -> None:
    gelu = DetachableGELU()
    x = torch.randn(10, requires_grad=True)
    torch.testing.assert_close(gelu(x), F.gelu(x))
    gelu.set_explanation_mode(True)
    (grad,) = torch.autograd.grad(gelu(x).sum(), x)
    torch.testing.assert_close(grad * x, F.gelu(x))  # dynamic linear: x · Φ(x)


# --------------------------------------------------------------------------------- B=1 equivalences


def _zero_biases_and_means_(net: nn.Module) -> None:
    with torch.no_grad():
        for m in net.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()


def test_at_b1_a_converted_cnn_is_the_standard_networks_linear_pieces() -> None:
    """With biases and BN means zero (what the conversion drops), B=1 reproduces the standard logits exactly."""
    std = _cifar_standard(in_chans=3)
    _zero_biases_and_means_(std)
    model = bcos_zoo.bcosify(std, b=1, mean=MEAN, std=STD).eval()
    x = _rand(2, 3, 28, 28)
    expected = std.eval()(torchvision.transforms.Normalize(MEAN, STD)(x))
    torch.testing.assert_close(model(_with_inverse(x)), expected + model.logit_layer.logit_bias, rtol=1e-4, atol=1e-5)


def test_at_b1_a_converted_vit_is_the_standard_vit_without_biases() -> None:
    std = bcos_zoo.create_model("standard_vitc_ti_patch1_14", num_classes=4, depth=1, image_size=64).eval()
    _zero_biases_and_means_(std)
    model = bcos_zoo.bcosify(std, b=1).eval()
    x = _rand(2, 3, 64, 64)
    expected = std(torchvision.transforms.Normalize(MEAN, STD)(x))
    torch.testing.assert_close(model(_with_inverse(x)), expected + model.logit_layer.logit_bias, rtol=1e-4, atol=1e-5)
    assert model.arch == "bcosified_vitc_ti_patch1_14" and model.model_kwargs["depth"] == 1


# ---------------------------------------------------------------------------- completeness per family


def _small_resnext() -> nn.Module:
    """A torchvision ResNeXt that no torchvision builder makes (so it has no registered identity)."""
    from torchvision.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, [1, 1, 1, 1], num_classes=3, groups=4, width_per_group=4)


def test_a_resnext_no_builder_makes_converts_and_explains_completely() -> None:
    model = bcos_zoo.bcosify(_small_resnext())
    x = _with_inverse(_rand(2, 3, 32, 32))
    _assert_complete(_calibrate(model, x), x)
    assert getattr(model, "arch", None) is None
    with pytest.raises(ValueError, match="no registered identity"):
        model.weight_header()


@pytest.mark.parametrize("batch_norm", [True, False])
def test_vggs_convert_and_explain_completely(batch_norm: bool) -> None:
    model = bcos_zoo.bcosify(_small_vgg(batch_norm))
    first = model.model.classifier[0]
    assert isinstance(first, BcosifiedConv2d) and first.linear.weight.shape == (32, 16, 2, 2)  # Linear on the 2x2 map
    assert [type(m) for m in model.model.features if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d))] == [nn.AvgPool2d] * 2
    x = _with_inverse(_rand(2, 3, 32, 32))
    _assert_complete(_calibrate(model, x), x)


@pytest.mark.slow
def test_densenet121_converts_and_explains_completely() -> None:
    model = bcos_zoo.bcosify(torchvision.models.densenet121(num_classes=3))
    assert model.arch == "bcosified_densenet121" and type(model.model.features.pool0) is nn.AvgPool2d
    x = _with_inverse(_rand(2, 3, 32, 32))
    _assert_complete(_calibrate(model, x), x)


@pytest.mark.parametrize("name", ["standard_simple_vit_ti_patch16_224", "standard_vitc_ti_patch1_14"])
def test_standard_vits_convert_and_explain_completely(name: str) -> None:
    std = bcos_zoo.create_model(name, num_classes=3, depth=1, image_size=32)
    model = bcos_zoo.bcosify(std).eval()
    assert isinstance(model.model.transformer.encoder_0.attn.to_qkv, nn.Linear)
    assert isinstance(model.model.transformer.encoder_0.ff.net.act, DetachableGELU)
    assert all(getattr(m, "bias", None) is None for m in model.modules() if not isinstance(m, LogitLayer))
    _assert_complete(model, _with_inverse(_rand(2, 3, 32, 32)))


# ----------------------------------------------------------------------------- refusals and identity


def test_unknown_modules_and_convnext_are_refused() -> None:
    std = torchvision.models.resnet18(num_classes=3)
    std.layer1[0].relu = nn.SiLU()
    std.layer2[1].bn1 = nn.InstanceNorm2d(128)
    with pytest.raises(TypeError, match=r"layer1\.0\.relu \(torch\.nn\.modules\.activation\.SiLU\).*layer2\.1\.bn1"):
        bcos_zoo.bcosify(std)
    with torch.device("meta"):
        convnext = torchvision.models.convnext_tiny()
    with pytest.raises(TypeError, match="refuses ConvNeXt: .*LayerNorm2d between the global pool"):
        bcos_zoo.bcosify(convnext)
    with pytest.raises(TypeError, match="does not know how to convert MobileNetV2"):
        bcos_zoo.bcosify(torchvision.models.mobilenet_v2())


def test_explain_finetune_save_and_reload_by_name(tmp_path: Path) -> None:
    model = bcos_zoo.bcosify(_cifar_standard(in_chans=1), num_classes=4)
    assert (model.arch, model.in_chans, model.num_classes) == ("bcosified_resnet20_cifar", 2, 4)
    x, y = _with_inverse(_rand(8, 1, 28, 28)), torch.tensor([0, 1, 2, 3] * 2)
    _assert_complete(_calibrate(model, x), x[:2])
    top = bcos_zoo.explain_topk(model, x[:2], k=2)  # batched top-K
    assert len(top) == 2 and all(e.dynamic_linear_weights.shape == (2, 2, 28, 28) for e in top)
    inner = bcos_zoo.explain(model.double(), x[:2].double(), layer="model.layer3.2", channel=5)
    with torch.no_grad():
        feature = model.model.layer3(model.model.layer2(model.model.layer1(model.model.relu(model.model.bn1(
            model.model.conv1(model.normalize(x[:2].double())))))))[:, 5].sum((-2, -1))  # fmt: skip
    torch.testing.assert_close(inner.contribution_map.sum((-2, -1)) + inner.bias_contribution, feature)
    model.float()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = model.get_classifier().linear.weight.detach().clone()
    loss = bcos_zoo.training.bce_loss(model.train()(x), y)
    loss.backward()
    opt.step()
    assert not torch.equal(before, model.get_classifier().linear.weight)
    path = tmp_path / "b.safetensors"
    bcos_zoo.save_weights(model.state_dict(), path, model.weight_header(classes=list("abcd")))
    model.eval()
    for loaded in (bcos_zoo.load_model(path), bcos_zoo.create_model("bcosified_resnet20_cifar", pretrained=path)):
        assert loaded.arch == "bcosified_resnet20_cifar" and loaded.pretrained_cfg.classes == tuple("abcd")
        torch.testing.assert_close(loaded.eval()(x), model(x))


def test_generic_identity_reloads_by_base(tmp_path: Path) -> None:
    std = bcos_zoo.create_model("standard_resnet56_cifar", num_classes=3, in_chans=1)
    model = bcos_zoo.bcosify(std).eval()
    assert model.arch == "bcosified" and model.model_kwargs["base"] == "standard_resnet56_cifar"
    path = tmp_path / "r56.safetensors"
    bcos_zoo.save_weights(model.state_dict(), path, model.weight_header())
    x = _with_inverse(_rand(1, 1, 16, 16))
    torch.testing.assert_close(bcos_zoo.load_model(path).eval()(x), model(x))


@pytest.mark.slow
def test_torchvision_vgg_gets_a_generic_identity_and_reloads(tmp_path: Path) -> None:
    model = bcos_zoo.bcosify(torchvision.models.vgg11_bn(num_classes=3)).eval()
    assert model.arch == "bcosified" and model.model_kwargs["base"] == "torchvision:vgg11_bn"
    assert model.model.classifier[0].linear.weight.shape == (4096, 512, 7, 7)
    path = tmp_path / "vgg.safetensors"
    bcos_zoo.save_weights(model.state_dict(), path, model.weight_header())
    x = _with_inverse(_rand(1, 3, 32, 32))
    torch.testing.assert_close(bcos_zoo.load_model(path).eval()(x), model(x))


def _official_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Keys as in the official B-cosification Lightning checkpoints: ``model.model.<torchvision names>``."""
    return {f"model.{k}": v.clone() for k, v in model.state_dict().items()}


def test_official_layout_checkpoints_load(tmp_path: Path) -> None:
    with torch.device("meta"):  # the official ResNet-50 layout, checked without allocating it
        official = _official_state(bcos_zoo.create_model("bcosified_resnet50"))
    assert official["model.model.fc.linear.weight"].shape == (1000, 2048, 1, 1)
    assert official["model.model.conv1.linear.weight"].shape == (64, 6, 7, 7) and "model.model.fc.bias" not in official
    assert {"model.model.bn1.weight", "model.model.bn1.running_var"} <= set(official)
    assert not any(k.endswith(".bias") for k in official)
    reference = bcos_zoo.create_model("bcosified_resnet20_cifar", num_classes=10, in_chans=2).eval()
    state = _official_state(reference)
    plain, lightning = tmp_path / "plain.pth", tmp_path / "last.ckpt"
    torch.save(state, plain)
    torch.save({"state_dict": state, "epoch": 89, "global_step": 450_000, "hyper_parameters": {"lr": 1e-4}}, lightning)
    x = _with_inverse(_rand(1, 1, 16, 16))
    for file in (plain, lightning):
        model = bcos_zoo.create_model("bcosified_resnet20_cifar", pretrained=file, num_classes=10, in_chans=2).eval()
        torch.testing.assert_close(model(x), reference(x))
    objects = tmp_path / "objects.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"loss": functools.partial(F.mse_loss)}}, objects)
    with pytest.raises(CheckpointError, match=r"weights_only=True.*extract its weights once.*\['state_dict'\]"):
        bcos_zoo.create_model("bcosified_resnet20_cifar", pretrained=objects, num_classes=10, in_chans=2)


# ------------------------------------------------------------------------------------ training, CLI


def test_linear_b_schedule() -> None:
    assert [scheduled_b(s, 5, 2.0) for s in range(5)] == [1.0, 1.25, 1.5, 1.75, 2.0]
    assert scheduled_b(0, 1, 2.0) == 1.0 and scheduled_b(9, 5, 2.0) == 2.0
    with pytest.raises(ValueError, match="b_schedule"):
        TrainConfig(b_schedule="cosine")


def test_cli_takes_torchvision_weights_only_from_its_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:  # fmt: skip
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert cli_main(["bcosify", "--from", "torchvision:resnet18", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "not in its cache" in err and str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-") in err


def _save_standard(path: Path) -> None:
    std = _cifar_standard(in_chans=1)
    header = bcos_zoo.WeightHeader(arch="standard_resnet20_cifar", model_kwargs={"num_classes": 10, "in_chans": 1})
    bcos_zoo.save_weights(std.state_dict(), path, header)


@pytest.mark.slow  # two CLI runs on Fashion-MNIST (~5 s here); the trainer test below covers the schedule
def test_cli_bcosifies_and_finetunes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    standard, out = tmp_path / "standard.safetensors", tmp_path / "run"
    _save_standard(standard)
    args = ["bcosify", "--from", str(standard), "--data", "fashion-mnist", "--out", str(out), "--batch-size", "16",
            "--epochs", "2", "--max-steps-per-epoch", "2", "--eval-limit", "64", "--b-schedule", "linear"]  # fmt: skip
    assert cli_main(args) == 0
    state = json.loads((out / "last.json").read_text())
    assert [h["epoch"] for h in state["history"]] == [0, 1, 2] and state["history"][0]["wall_time"] == 0.0
    assert 0 < state["history"][1]["wall_time"] < state["history"][2]["wall_time"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["arch"] == "bcosified_resnet20_cifar" and summary["config"]["optimizer"] == "adamw"
    assert summary["config"]["lr"] == 1e-4 and (out / "README.md").is_file()
    model = bcos_zoo.load_model(out / "model.safetensors")
    assert model.in_chans == 2 and {m.b for m in model.modules() if isinstance(m, BcosifiedConv2d)} == {2.0}
    standard.unlink()  # --resume reuses the converted file: the standard network is not needed again
    assert cli_main([*args, "--resume"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli_main(["bcosify", "--help"])
    text = capsys.readouterr().out
    for option in ("--from", "torchvision:NAME", "--b-schedule", "--drop-relu", "--mean", "--std", "--b B", "--resume",
                   "--distill [WEIGHT]"):
        assert option in text


def test_b_schedule_reaches_the_models_b_and_resumes_exactly(tmp_path: Path) -> None:
    def cfg(name: str) -> TrainConfig:
        return TrainConfig(model="bcosified_resnet20_cifar", model_kwargs={"in_chans": 2}, out=str(tmp_path / name),
                           epochs=2, batch_size=8, max_steps_per_epoch=2, eval_limit=16,
                           b_schedule="linear")  # fmt: skip

    full = Trainer(cfg("full"))
    seen: list[float] = []
    full.model.register_forward_pre_hook(lambda m, _: seen.append(m.get_classifier().b) if m.training else None)
    full.run()
    assert seen == pytest.approx([1.0, 4 / 3, 5 / 3, 2.0])
    Trainer(cfg("split")).run(stop_after=1)
    Trainer(cfg("split"), resume=True).run()
    a = bcos_zoo.read_state_dict(tmp_path / "full" / "model.safetensors")
    b = bcos_zoo.read_state_dict(tmp_path / "split" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7, msg=k)


def test_distillation_mixes_the_teachers_probabilities_into_the_targets() -> None:
    logits, labels = torch.randn(4, 10), torch.tensor([0, 3, 9, 3])
    soft = torch.rand(4, 10)
    hard = F.one_hot(labels, 10).float()
    assert bce_loss(logits, labels, soft=soft, soft_weight=1.0) == F.binary_cross_entropy_with_logits(logits, soft)
    mixed = F.binary_cross_entropy_with_logits(logits, 0.75 * hard + 0.25 * soft)
    torch.testing.assert_close(bce_loss(logits, labels, soft=soft, soft_weight=0.25), mixed)
    torch.testing.assert_close(bce_loss(logits, labels, soft=hard), bce_loss(logits, labels))
    for weight in (0.0, 1.5):
        with pytest.raises(ValueError, match="distill_weight"):
            TrainConfig(distill_weight=weight)


def test_the_teacher_reads_the_bcos_input_as_the_standard_network_read_its_own() -> None:
    std = _calibrate(torchvision.models.resnet18(num_classes=10), _rand(4, 3, 64, 64))
    teacher = StandardTeacher(std, bcos_zoo.bcosify(std)).train()
    x = _rand(2, 3, 64, 64, seed=2)
    normalised = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(teacher(_with_inverse(x)), std(normalised))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(TypeError, match="B-cosified"):
        StandardTeacher(std, bcos_zoo.create_model("bcos_resnet20_cifar"))


def test_a_distilling_trainer_fits_the_standard_networks_sigmoid_outputs(tmp_path: Path) -> None:
    standard = tmp_path / "standard.safetensors"
    _save_standard(standard)
    cfg = TrainConfig(model="bcosified_resnet20_cifar", model_kwargs={"in_chans": 2}, out=str(tmp_path / "run"),
                      distill_from=str(standard), distill_weight=1.0, epochs=1, batch_size=8,
                      max_steps_per_epoch=1, eval_limit=16)  # fmt: skip
    trainer = Trainer(cfg)
    x, y = _rand(8, 1, 28, 28), torch.arange(8)
    with torch.no_grad():
        expected = torch.sigmoid(bcos_zoo.load_model(standard).eval()(x))
        logits = trainer.model(_with_inverse(x))
    torch.testing.assert_close(trainer._loss(logits, _with_inverse(x), y),
                               F.binary_cross_entropy_with_logits(logits, expected))
    assert trainer.run()["train_samples"] == 8
