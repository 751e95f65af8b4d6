"""The ``bcos-zoo`` command line.

Every command runs at least once as a subprocess (exit code, files, output); the many error and
option variants run in-process through ``bcos_zoo.cli.main``, which is what the console script
calls, to keep the suite fast. Models: a random-init Fashion-MNIST ``bcos_resnet20_cifar``
(in_chans=2) saved to a tmp ``.safetensors`` like a training run's ``model.safetensors``, and a
random-init ImageNet-shaped ``bcos_resnet18`` at 64 pixels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import bcos_zoo
from bcos_zoo import cli
from bcos_zoo.cli import inference
from bcos_zoo.data import FASHION_MNIST_CLASSES, load_fashion_mnist, to_model_input
from bcos_zoo.plotting import DPI, PANEL_INCHES
from bcos_zoo.transforms import load_image

PANEL_PX = round(PANEL_INCHES * DPI)
FMNIST_KWARGS = {"in_chans": 2, "norm_layer": "bnu-linear"}
ASSETS = sorted(inference.ASSETS.glob("*.png"))
COMMANDS = ["list", "info", "download", "predict", "explain", "evaluate", "localisation", "demo", "train", "finetune"]


pytestmark = pytest.mark.usefixtures("single_thread")
#: the heaviest subprocess tests (15-25 s each here): left out of the default run, CI runs them (.ci/run)
slow_subprocess = pytest.mark.slow


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def env(work) -> dict[str, str]:
    """Offline, a fresh weights cache, one thread: a fresh machine without network."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "BCOS_ZOO_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
            "BCOS_ZOO_CACHE": str(work / "cache"), "HF_HUB_CACHE": str(work / "hf")}  # fmt: skip


def run(env: dict[str, str], cwd: Path, *args: object, script: bool = False) -> subprocess.CompletedProcess:
    exe = [str(Path(sys.executable).with_name("bcos-zoo"))] if script else [sys.executable, "-m", "bcos_zoo.cli"]
    return subprocess.run(
        exe + [str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600, check=False
    )


def call(capsys, *args: object) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "error:" in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def fmnist(work):
    """A random-init Fashion-MNIST model whose predictions on the test images cover several classes."""
    images, _ = load_fashion_mnist(split="test")
    pool = images[:60]
    x = to_model_input(pool.float() / 255, 2)
    for seed in range(20):
        torch.manual_seed(seed)
        model = bcos_zoo.create_model("bcos_resnet20_cifar", **FMNIST_KWARGS).eval()
        with torch.no_grad():
            predictions = model(x).argmax(1)
        if predictions.unique().numel() >= 4:
            break
    path = work / "fmnist.safetensors"
    metadata = {"format": "pt", "arch": "bcos_resnet20_cifar", "model_kwargs": json.dumps(FMNIST_KWARGS),
                "classes": json.dumps(list(FASHION_MNIST_CLASSES))}  # fmt: skip
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=metadata)
    return path, model, pool, predictions


@pytest.fixture(scope="module")
def images(work) -> dict[str, Path]:
    d = work / "images"
    d.mkdir()
    rgb = Image.open(inference.ASSETS / "synthetic_shapes.png").convert("RGB")
    rgb.save(d / "shapes.jpg", quality=90)
    data = (d / "shapes.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "notes.png").write_text("not an image\n")
    return {"boot": ASSETS[0], "trouser": ASSETS[1], "jpg": d / "shapes.jpg", "truncated": d / "truncated.jpg",
            "text": d / "notes.png", "missing": d / "missing.png"}  # fmt: skip


@pytest.fixture(scope="module")
def folder(work, fmnist) -> Path:
    """An ImageFolder whose labels are the random model's own predictions, so images count as correct."""
    _, _, pool, predictions = fmnist
    root = work / "folder"
    for c in range(10):
        (root / f"{c:02d}_class").mkdir(parents=True)
    for i, (img, label) in enumerate(zip(pool, predictions.tolist())):
        Image.fromarray(img[0].numpy()).save(root / f"{label:02d}_class" / f"{i}.png")
    for c in range(10):  # ImageFolder needs every class folder non-empty
        if not any((root / f"{c:02d}_class").iterdir()):
            Image.fromarray(pool[0, 0].numpy()).save(root / f"{c:02d}_class" / "filler.png")
    return root


# ------------------------------------------------------------------------------------------ subprocesses


def test_predict_json_matches_python_api(env, work, fmnist, images):
    path, _, _, _ = fmnist
    r = run(env, work, "predict", images["boot"], images["jpg"], "--weights", path, "--top-k", 3, "--json", script=True)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout)
    model = bcos_zoo.create_model("bcos_resnet20_cifar", pretrained=str(path), **FMNIST_KWARGS).eval()
    for result, image in zip(results, [images["boot"], images["jpg"]]):
        with torch.no_grad():
            logits = model(model.transform(load_image(image))[None])[0]
        top = logits.topk(3)
        assert result["image"] == str(image)
        assert [p["index"] for p in result["predictions"]] == top.indices.tolist()
        assert [p["class"] for p in result["predictions"]] == [FASHION_MNIST_CLASSES[i] for i in top.indices]
        torch.testing.assert_close(
            torch.tensor([p["logit"] for p in result["predictions"]]), top.values, atol=1e-4, rtol=0
        )
        torch.testing.assert_close(torch.tensor([p["probability"] for p in result["predictions"]]),
                                   torch.sigmoid(top.values), atol=1e-5, rtol=0)  # fmt: skip


@slow_subprocess
def test_explain_fmnist_top_k(env, work, fmnist, images, png_size):
    out = work / "explain_fm"
    r = run(env, work, "explain", images["boot"], images["jpg"], "--weights", fmnist[0], "--top-k", 2, "-o", out)
    assert r.returncode == 0, r.stderr
    written = sorted(out.glob("*.png"))
    assert [p.name for p in written] == ["fmnist_test0000_ankle_boot_explained.png", "shapes_explained.png"]
    assert r.stdout.split() == [str(p) for p in [out / written[0].name, out / written[1].name]]
    for p in written:
        assert png_size(p) == (3 * PANEL_PX, 2 * PANEL_PX)  # input, explanation, contributions x 2 classes


@slow_subprocess
def test_explain_imagenet_shaped_targets_by_name_and_index(env, work, images, png_size):
    out = work / "resnet18.png"
    r = run(env, work, "explain", images["jpg"], "-m", "bcos_resnet18", "--random-init", "--image-size", 64,
            "--target", "Tench", "--target", 3, "--overlay", "-o", out)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert png_size(out) == (3 * PANEL_PX, 2 * PANEL_PX)


@slow_subprocess
def test_evaluate_fashion_mnist_and_write_card(env, work, fmnist):
    cards = work / "cards"
    r = run(env, work, "evaluate", "--weights", fmnist[0], "--data", "fashion-mnist", "--limit", 40,
            "--batch-size", 20, "--write-card", "--card-dir", cards)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "fashion-mnist (40 images): top-1" in r.stdout
    record = json.loads((cards / "fmnist.measured.json").read_text())["fashion-mnist"]
    assert record["n"] == 40 and 0 <= record["top1"] <= record["top5"] <= 100
    images, labels = load_fashion_mnist(split="test")
    with torch.no_grad():
        logits = fmnist[1](to_model_input(images[:40].float() / 255, 2))
    assert record["top1"] == pytest.approx(100 * (logits.argmax(1) == labels[:40]).float().mean().item(), abs=1e-6)


@slow_subprocess
def test_localisation_all_methods(env, work, fmnist, folder, png_size):
    plot = work / "loc.png"
    r = run(env, work, "localisation", "--weights", fmnist[0], "--data", folder, "--image-size", 28, "--grid", 2,
            "--n-grids", 2, "--conf-thresh", 0, "--methods", "bcos,ixg,intgrad,gradcam", "--json",
            "--plot", plot)  # fmt: skip
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout[: r.stdout.rindex("}") + 1])
    assert result["grids"] == 2 and result["grid"] == 2
    assert set(result["scores"]) == {"bcos", "ixg", "intgrad", "gradcam"}
    for s in result["scores"].values():
        assert s["n"] == 8 and 0 <= s["mean"] <= 1
    assert png_size(plot)[0] > 0


def test_demo_offline_on_a_fresh_machine(env, work, images, png_size):
    out = work / "demo"
    r = run(env, work, "demo", images["jpg"], "-o", out)
    assert r.returncode == 0, r.stderr
    expected = [f"{p.stem}_explained.png" for p in ASSETS] + ["shapes_explained.png", "overview.png"]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(expected)
    assert png_size(out / "shapes_explained.png") == (3 * PANEL_PX, PANEL_PX)
    assert inference.DEMO_MODEL in bcos_zoo.list_weights() and "RANDOM" not in r.stderr + r.stdout


@slow_subprocess
def test_train_delegates_to_training(env, work):
    out = work / "run"
    r = run(env, work, "train", "--model", "bcos_resnet20_cifar", "--model-kwargs", "in_chans=2", "--epochs", 1,
            "--max-steps-per-epoch", 1, "--batch-size", 8, "--eval-limit", 16, "--out", out)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (out / "model.safetensors").is_file() and json.loads(r.stdout.splitlines()[-1])["epoch"] == 1


def test_errors_are_one_line_without_traceback(env, work, images):
    r = run(env, work, "predict", images["boot"], "-m", "bcos_resnet_18", "--random-init")
    assert r.stdout == ""
    assert_one_line_error(r.returncode, r.stderr, "unknown model 'bcos_resnet_18'", "bcos_resnet18")


# --------------------------------------------------------------------------------------------- in-process


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help(capsys, command):
    with pytest.raises(SystemExit) as e:
        cli.main(([command] if command else []) + ["--help"])
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_finetune_requires_from(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["finetune", "--model", "bcos_resnet20_cifar"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--from" in err and len(err.strip().splitlines()) == 1


def test_finetune_from_a_checkpoint(capsys, work, fmnist):
    out = work / "finetuned"
    code = cli.main(["finetune", "--model", "bcos_resnet20_cifar", "--model-kwargs", "in_chans=2",
                     "norm_layer=bnu-linear", "--from", str(fmnist[0]), "--epochs", "1", "--max-steps-per-epoch", "1",
                     "--batch-size", "8", "--eval-limit", "16", "--out", str(out)])  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["epoch"] == 1
    assert (out / "model.safetensors").is_file()


def test_convert_delegates(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["convert", "--help"])
    assert e.value.code == 0
    assert "bcos-zoo convert" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("missing", ["missing.png", "not found"]),
        ("text", ["notes.png", "cannot read image"]),
        ("truncated", ["truncated.jpg", "cannot read image"]),
        ("unknown-class", ["unknown class 'Sneakers'", "'Sneaker'"]),
        ("class-index", ["class index 10 is out of range"]),
        ("target-and-topk", ["either --target or --top-k"]),
        ("bad-layer", ["no layer 'layer9'"]),
        ("no-model", ["--model NAME"]),
        ("bad-kwargs", ["--model-kwargs", "key=value"]),
    ],
)
def test_bad_input_gives_one_line_error(capsys, env, work, fmnist, images, case, needles):
    weights = ["--weights", fmnist[0]]
    argv = {
        "missing": ["predict", images["boot"], images["missing"], *weights],
        "text": ["explain", images["text"], *weights],
        "truncated": ["explain", images["truncated"], "-m", "bcos_resnet18", "--random-init"],
        "unknown-class": ["explain", images["boot"], *weights, "--target", "Sneakers"],
        "class-index": ["explain", images["boot"], *weights, "--target", "10"],
        "target-and-topk": ["explain", images["boot"], *weights, "--target", "1", "--top-k", "2"],
        "bad-layer": ["explain", images["boot"], *weights, "--layer", "layer9"],
        "no-model": ["predict", images["boot"]],
        "bad-kwargs": ["predict", images["boot"], *weights, "--model-kwargs", "in_chans"],
    }[case]
    if case in ("missing", "text", "truncated", "unknown-class"):  # the cases, through the console script
        r = run(env, work, *argv, script=True)
        code, out, err = r.returncode, r.stdout, r.stderr
    else:
        code, out, err = call(capsys, *argv)
    assert out == ""
    assert_one_line_error(code, err, *needles)


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["predict"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "bcos-zoo predict: error:" in err and "--help" in err


def test_debug_shows_the_traceback(fmnist, images):
    with pytest.raises(FileNotFoundError):
        cli.main(["predict", str(images["missing"]), "--weights", str(fmnist[0]), "--debug"])


def test_explain_layer_channel(capsys, work, fmnist, images, png_size):
    out = work / "layer.png"
    code, stdout, err = call(capsys, "explain", images["trouser"], "--weights", fmnist[0], "--layer", "layer3.1",
                             "--channel", 5, "-o", out)  # fmt: skip
    assert code == 0, err
    assert stdout.strip() == str(out) and png_size(out) == (3 * PANEL_PX, PANEL_PX)


def test_predict_table_batches_images_of_different_sizes(capsys, fmnist, images):
    code, out, err = call(capsys, "predict", images["boot"], images["jpg"], images["trouser"], "--weights", fmnist[0],
                          "--top-k", 1, "--batch-size", 1)  # fmt: skip
    assert code == 0, err
    assert out.splitlines()[0].startswith("model: bcos_resnet20_cifar (fmnist.safetensors)")
    assert [line for line in out.splitlines() if not line.startswith(" ")][1:] == [
        str(images["boot"]), str(images["jpg"]), str(images["trouser"])]  # fmt: skip


def test_list_and_info(capsys):
    code, out, _ = call(capsys, "list", "resnet18")
    assert code == 0 and out.splitlines()[0].split()[:2] == ["architecture", "weights"]
    assert any(line.startswith("bcos_resnet18 ") for line in out.splitlines())
    code, out, _ = call(capsys, "list", "cifar")
    row = next(line for line in out.splitlines() if line.startswith("bcos_resnet44_cifar "))
    assert code == 0 and row.split()[-1] == "1.32M"  # parameters counted on the meta device, without weights
    weights = bcos_zoo.list_weights()
    code, out, _ = call(capsys, "list", "--pretrained")
    assert code == 0 and out.splitlines()[0].split() == ["weight", "dataset", "top-1", "top-5", "params", "cached"]
    assert {line.split()[0] for line in out.splitlines()[2:]} == set(weights)
    code, out, _ = call(capsys, "info", weights[0])
    assert code == 0 and weights[0] in out and "cached:" in out
    code, out, _ = call(capsys, "info", "bcos_resnet44_cifar")
    assert code == 0 and "- parameters: 1.32M" in out and "none registered" in out
    code, _, err = call(capsys, "info", "bcos_resnet18.nope")
    assert_one_line_error(code, err, "bcos_resnet18.nope")
    code, _, err = call(capsys, "list", "no_such_model")
    assert_one_line_error(code, err, "nothing matches")


def test_download_errors(capsys, monkeypatch, tmp_path):
    code, _, err = call(capsys, "download")
    assert code == 2 and "--all" in err
    code, _, err = call(capsys, "download", "bcos_resnet18.nope")
    assert_one_line_error(code, err, "unknown weights")
    monkeypatch.setenv("BCOS_ZOO_OFFLINE", "1")
    monkeypatch.setenv("BCOS_ZOO_CACHE", str(tmp_path))
    code, _, err = call(capsys, "download", "bcos_resnet18.in1k")
    assert_one_line_error(code, err, "bcos_resnet18.in1k", "Offline mode is on (BCOS_ZOO_OFFLINE=1)")


@slow_subprocess
def test_list_info_download_as_subprocesses(env, work):
    r = run(env, work, "list", "cifar", "--pretrained", script=True)
    assert r.returncode == 0 and "bcos_resnet20_cifar.fmnist" in r.stdout and "shipped" in r.stdout
    r = run(env, work, "info", "bcos_simple9_cifar.fmnist", script=True)
    assert r.returncode == 0 and "90.19" in r.stdout
    r = run(env, work, "download", "bcos_resnet50.in1k", script=True)  # offline, not cached
    assert_one_line_error(r.returncode, r.stderr, "bcos_resnet50.in1k")
