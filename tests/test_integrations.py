"""The interpretability ecosystem with the real packages: captum (``attribute``), pytorch-grad-cam, Quantus."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bcos_zoo
from bcos_zoo.attribution import METHODS, baseline_input
from bcos_zoo.layers import model_in_explanation_mode
from bcos_zoo.transforms import add_inverse

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def cifar_model() -> torch.nn.Module:
    """A random bias-free CIFAR ResNet-20 for grayscale inputs (no norm: positively homogeneous)."""
    torch.manual_seed(0)
    return bcos_zoo.create_model("bcos_resnet20_cifar", in_chans=2).eval()


@pytest.fixture(scope="module")
def x2() -> torch.Tensor:
    return add_inverse(torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1)), dim=1)


# ---------------------------------------------------------------------------------------------- captum


def test_attribute_every_method_shapes_and_model_untouched(cifar_model, x2):
    before = x2.clone()
    maps = {m: bcos_zoo.attribute(cifar_model, x2, [1, 4, 7], m) for m in METHODS}
    for name, m in maps.items():
        assert m.shape == (3, 16, 16) and torch.isfinite(m).all() and m.abs().sum() > 0, name
    assert torch.equal(x2, before) and not model_in_explanation_mode(cifar_model)
    assert all(p.grad is None for p in cifar_model.parameters())
    torch.testing.assert_close(maps["bcos"], bcos_zoo.explain(cifar_model, x2, [1, 4, 7]).contribution_map)
    # one image expanded to a batch (the grid pointing game's input) takes a faster path to the same maps
    one = x2[:1].expand(3, -1, -1, -1)
    torch.testing.assert_close(bcos_zoo.attribute(cifar_model, one, [1, 4, 7], "bcos"),
                               bcos_zoo.explain(cifar_model, one.clone(), [1, 4, 7]).contribution_map)  # fmt: skip
    # target=None explains the predicted classes
    predicted = cifar_model(x2).argmax(1)
    torch.testing.assert_close(bcos_zoo.attribute(cifar_model, x2, None, "ixg"),
                               bcos_zoo.attribute(cifar_model, x2, predicted, "ixg"))  # fmt: skip


def test_ixg_is_the_bcos_explanation_only_in_explanation_mode(cifar_model, x2):
    bcos = bcos_zoo.attribute(cifar_model, x2, 2, "bcos")
    inside = bcos_zoo.attribute(cifar_model, x2, 2, "ixg", in_explanation_mode=True)
    torch.testing.assert_close(inside, bcos, rtol=1e-4, atol=1e-6)
    outside = bcos_zoo.attribute(cifar_model, x2, 2, "ixg")
    assert not torch.allclose(outside, bcos, atol=1e-4)  # the dynamic weights' own gradient adds terms


def test_integrated_gradients_completeness(cifar_model, x2):
    """IntGrad maps sum to f(x) - f(baseline) within captum's own convergence delta, for both image baselines."""
    from captum.attr import IntegratedGradients

    x, target, n_steps = x2[:2], [3, 5], 16
    for baseline in ("black", "grey"):
        maps = bcos_zoo.attribute(cifar_model, x, target, "intgrad", baseline=baseline, n_steps=n_steps)
        base = baseline_input(x, baseline)
        with torch.no_grad():
            gap = (cifar_model(x) - cifar_model(base)).gather(1, torch.tensor(target)[:, None])[:, 0]
        _, delta = IntegratedGradients(cifar_model).attribute(
            x.clone().requires_grad_(), base, target=target, n_steps=n_steps, return_convergence_delta=True
        )
        error = (maps.sum((-2, -1)) - gap).abs()
        assert (error <= delta.abs() + 1e-5).all() and (error < 0.1 * gap.abs().max()).all(), (baseline, error, delta)


def test_baselines_in_the_inverse_encoding(cifar_model, x2):
    black, grey = baseline_input(x2, "black"), baseline_input(x2, "grey")
    assert (black[:, 0] == 0).all() and (black[:, 1] == 1).all() and (grey == 0.5).all()
    torch.testing.assert_close(grey[:, 1], 1 - grey[:, 0])  # grey is an image: [b, 1 - b]
    # a bias-free B-cos network is positively homogeneous, so IntGrad from zero is Input x Gradient
    from_zero = bcos_zoo.attribute(cifar_model, x2, 1, "intgrad", baseline="zero", n_steps=4)
    torch.testing.assert_close(from_zero, bcos_zoo.attribute(cifar_model, x2, 1, "ixg"), rtol=1e-3, atol=1e-5)
    # DeepLift finds no nonlinearity module to rewrite in a B-cos network: (x - baseline) x gradient
    xs = x2.clone().requires_grad_()
    (grad,) = torch.autograd.grad(cifar_model(xs)[:, 1].sum(), xs)
    torch.testing.assert_close(bcos_zoo.attribute(cifar_model, x2, 1, "deeplift"), ((x2 - black) * grad).sum(1))
    with pytest.raises(ValueError, match="unknown baseline 'white'"):
        bcos_zoo.attribute(cifar_model, x2, 1, "intgrad", baseline="white")
    with pytest.raises(ValueError, match="unknown attribution method 'lime'"):
        bcos_zoo.attribute(cifar_model, x2, 1, "lime")
    with pytest.raises(ValueError, match="inverse"):
        bcos_zoo.attribute(cifar_model, x2[:, :1], 1, "ixg")


# ------------------------------------------------------------------------------------ pytorch-grad-cam


def _grad_cam_by_hand(model, layer, x, targets, to_map=lambda t: t) -> torch.Tensor:
    """Grad-CAM from its definition: ReLU(Σ_k mean(∂y/∂A_k)·A_k), scaled to [0, 1], bilinearly resized."""
    store = []
    handle = layer.register_forward_hook(lambda _m, _i, out: store.append(out))
    try:
        logits = model(x)
    finally:
        handle.remove()
    acts = store[0]
    (grads,) = torch.autograd.grad(logits.gather(1, torch.tensor(targets)[:, None]).sum(), acts)
    acts, grads = to_map(acts), to_map(grads)
    cam = _min_max((grads.mean((-2, -1), keepdim=True) * acts).sum(1).clamp(min=0))
    return _min_max(F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0])


def _min_max(maps: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's scaling of each map to [0, 1] (it scales before and after resizing)."""
    maps = maps.detach() - maps.detach().amin((-2, -1), keepdim=True)
    return maps / (1e-7 + maps.amax((-2, -1), keepdim=True))


def test_pytorch_grad_cam_on_a_cifar_resnet(cifar_model, x2):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layers = bcos_zoo.cam_target_layers(cifar_model)
    assert layers == [cifar_model.layer3]  # the CIFAR ResNets have no layer4
    targets = [0, 5, 9]
    with GradCAM(model=cifar_model, target_layers=layers) as cam:
        maps = cam(input_tensor=x2, targets=[ClassifierOutputTarget(t) for t in targets])
    assert maps.shape == (3, 16, 16) and maps.max() > 0.99
    np.testing.assert_allclose(maps, _grad_cam_by_hand(cifar_model, layers[0], x2, targets).numpy(), atol=1e-4)


def test_pytorch_grad_cam_on_a_vit_with_tokens_to_map():
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    vit = bcos_zoo.create_model("bcos_simple_vit_ti_patch16_224", depth=1, image_size=64, num_classes=5).eval()
    x = add_inverse(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)), dim=1)
    layers = bcos_zoo.cam_target_layers(vit)
    assert layers == [vit.transformer]
    with GradCAM(model=vit, target_layers=layers, reshape_transform=bcos_zoo.tokens_to_map) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(1), ClassifierOutputTarget(3)])
    expected = _grad_cam_by_hand(vit, layers[0], x, [1, 3], bcos_zoo.tokens_to_map)
    assert maps.shape == (2, 64, 64)
    np.testing.assert_allclose(maps, expected.numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="gives tokens"):  # captum's LayerGradCam cannot reshape tokens
        bcos_zoo.attribute(vit, x, 1, "gradcam")


def test_tokens_to_map():
    tokens = torch.arange(2 * 6 * 4.0).view(2, 6, 4)[:, :4]  # [N=2, L=4 (2x2 grid), D=4]
    maps = bcos_zoo.tokens_to_map(tokens)
    assert maps.shape == (2, 4, 2, 2)
    assert torch.equal(maps[1, :, 1, 0], tokens[1, 2])  # token 2 is row 1, column 0
    x = torch.zeros(1, 3, 4, 4)
    assert bcos_zoo.tokens_to_map(x) is x
    with pytest.raises(ValueError, match="square grid"):
        bcos_zoo.tokens_to_map(torch.zeros(1, 6, 4))


@pytest.mark.slow  # builds every architecture (on the meta device)
def test_every_architecture_names_its_cam_layer():
    for name in bcos_zoo.list_models():
        with torch.device("meta"):
            model = bcos_zoo.create_model(name)
        (layer,) = bcos_zoo.cam_target_layers(model)
        assert any(layer is m for m in model.modules()), name
    with pytest.raises(ValueError, match="names no default_cam_layer"):
        bcos_zoo.cam_target_layers(torch.nn.Linear(2, 2))


def test_cam_target_layers_of_small_models(cifar_model):
    assert bcos_zoo.cam_target_layers(cifar_model) == [cifar_model.layer3]  # CIFAR ResNets have no layer4
    with torch.device("meta"):
        resnet18, vit = bcos_zoo.create_model("bcos_resnet18"), bcos_zoo.create_model("bcos_vitc_ti_patch1_14")
    assert bcos_zoo.cam_target_layers(resnet18) == [resnet18.layer4]
    assert bcos_zoo.cam_target_layers(vit) == [vit.transformer]


# ------------------------------------------------------------------------------------------------ Quantus


@pytest.fixture(scope="module")
def fmnist_grids():
    """The shipped Fashion-MNIST model and 2 grids of 2x2 confidently classified test images of distinct
    classes, as Quantus wants them: per tile, the grid image ``[1, 56, 56]``, the tile's class and its mask."""
    from bcos_zoo.data import load_fashion_mnist
    from bcos_zoo.localisation import confident_correct, make_grid, sample_grids

    model = bcos_zoo.create_model("bcos_resnet20_cifar", pretrained="fmnist").eval()
    images, labels = load_fashion_mnist(split="test")
    images, labels = images[:64].float() / 255, labels[:64]
    with torch.no_grad():
        logits = model(add_inverse(images, dim=1))
    grids = sample_grids(confident_correct(logits, labels, 0.9), grid=2, n_grids=2)
    assert len(grids) == 2
    x = torch.stack([make_grid(images[g], 2) for g in grids for _ in g])  # [8, 1, 56, 56]
    y = torch.cat([labels[g] for g in grids])
    masks = torch.stack([make_grid(torch.eye(4)[k].view(4, 1, 1, 1).expand(4, 1, 28, 28), 2) for k in range(4)] * 2)
    return model, x.numpy(), y.numpy(), masks.numpy()


def test_quantus_explain_func_contract(fmnist_grids):
    """N x 1 x H x W numpy maps; through the image wrapper they are the exact B-cos contributions."""
    model, x, y, _ = fmnist_grids
    wrapped = bcos_zoo.ImageInputModel(model).eval()
    maps = bcos_zoo.quantus_explain_func(wrapped, x, y)
    assert isinstance(maps, np.ndarray) and maps.shape == (8, 1, 56, 56) and maps.dtype == np.float32
    x6 = add_inverse(torch.from_numpy(x), dim=1)
    out = bcos_zoo.explain(model, x6, torch.from_numpy(y))
    np.testing.assert_allclose(maps.sum((1, 2, 3)) + out.bias_contribution.numpy(),
                               out.logits.gather(1, out.target[:, None])[:, 0].numpy(), rtol=1e-4, atol=1e-4)  # fmt: skip
    np.testing.assert_allclose(bcos_zoo.quantus_explain_func(model, x6.numpy(), y), maps, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="takes no inverse channels"):
        bcos_zoo.ImageInputModel(torch.nn.Linear(2, 2))


@pytest.mark.slow  # importing Quantus and two metrics x two methods: 4-13 s on this machine
def test_quantus_localisation_and_faithfulness_bcos_vs_ixg(fmnist_grids):
    import quantus

    from bcos_zoo.localisation import pointing_game_scores

    model, x, y, s = fmnist_grids
    wrapped = bcos_zoo.ImageInputModel(model).eval()  # Quantus perturbs images; the wrapper adds the inverse
    localisation = quantus.AttributionLocalisation(positive_attributions=True, abs=False, normalise=False,
                                                   disable_warnings=True)  # fmt: skip
    # curves, not return_auc_per_sample: Quantus 0.6.0 computes that AUC with np.trapz, which numpy 2.4 removed
    flipping = quantus.PixelFlipping(features_in_step=224, perturb_baseline="black", disable_warnings=True)
    scores = {}
    for method in ("bcos", "ixg"):
        kwargs = {"method": method}
        scores[method] = np.array(localisation(wrapped, x, y, s_batch=s, explain_func=bcos_zoo.quantus_explain_func,
                                               explain_func_kwargs=kwargs, softmax=False, channel_first=True))  # fmt: skip
        curves = np.array(flipping(wrapped, x, y, explain_func=bcos_zoo.quantus_explain_func,
                                   explain_func_kwargs=kwargs, softmax=False, channel_first=True))  # fmt: skip
        assert scores[method].shape == (8,) and np.isfinite(scores[method]).all(), method
        assert curves.shape == (8, 14) and np.isfinite(curves).all(), method  # 14 steps of 224 pixels
        # Quantus' localisation without smoothing is the project's grid pointing game score
        maps = torch.from_numpy(bcos_zoo.quantus_explain_func(wrapped, x, y, method=method))[:, 0]
        ours = torch.cat([pointing_game_scores(maps[i : i + 4], grid=2) for i in (0, 4)])
        np.testing.assert_allclose(scores[method], ours.numpy(), rtol=1e-4, atol=1e-5)
    assert scores["bcos"].mean() > scores["ixg"].mean() + 0.2, scores  # the project measured 0.97 vs 0.44
