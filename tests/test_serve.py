"""``bcos-zoo serve``: the app function (top-K, pictures equal to the Python API's, readable errors) and the
page itself, end to end in a real headless browser (Debian's chromium driven by Playwright)."""

from __future__ import annotations

import io
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bcos_zoo
from bcos_zoo.cli.inference import ASSETS, DEMO_MODEL
from bcos_zoo.cli.serve import MIN_SIDE, analyse, explanation_image, load_offline, offline_models
from bcos_zoo.localisation import default_smoothing

REPO = Path(__file__).resolve().parents[1]
SNEAKER = ASSETS / "fmnist_test0009_sneaker.png"
CHROMIUM = "/usr/bin/chromium"


def api_pictures(path: Path, target: int) -> tuple[np.ndarray, np.ndarray]:
    """The explanation and contribution pictures of ``target`` through the public API and the plotting
    module alone (one ``explain`` call per class, matplotlib's own normalisation of the colour map)."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    from bcos_zoo.plotting import clip_symmetric, evidence_rgb

    model = bcos_zoo.create_model(DEMO_MODEL, pretrained=True).eval()
    x = model.transform(Image.open(path))[None]
    e = bcos_zoo.explain(model, x, target=target, smooth=default_smoothing(x.shape[-1]))
    clipped, vrange = clip_symmetric(e.contribution_map[0])
    contributions = colormaps["bwr"](Normalize(-vrange, vrange)(clipped))[..., :3]
    to_png = lambda rgb: (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
    return to_png(evidence_rgb(x[0], e.contribution_map[0])), to_png(contributions)


def assert_same_picture(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal pixels, up to one level of 255 where float rounding of the batched backward pass differs."""
    assert actual.shape == expected.shape and actual.dtype == np.uint8
    diff = np.abs(actual.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99, (diff.max(), (diff == 0).mean())
    assert expected.std() > 10  # a picture with content, not a flat one that would match anything


@pytest.fixture(scope="module")
def demo():
    """The shipped demo model as the app loads it, and its logits for the sneaker image."""
    loaded = load_offline(DEMO_MODEL)
    with torch.no_grad():
        logits = loaded.model(loaded.model.transform(Image.open(SNEAKER))[None])[0]
    return loaded, logits


def test_analyse_returns_the_top_k_classes_in_order_with_their_probabilities(demo, single_thread):
    loaded, logits = demo
    result = analyse(SNEAKER, DEMO_MODEL, 4)
    top = logits.topk(4).indices.tolist()
    assert list(result.labels) == [loaded.classes[c] for c in top] and top[0] == loaded.classes.index("Sneaker")
    probs = list(result.labels.values())
    assert probs == sorted(probs, reverse=True)
    # B-cos models give per-class sigmoids (trained with binary cross-entropy), not a softmax summing to 1
    assert np.allclose(probs, torch.sigmoid(logits[top]).tolist(), atol=1e-6)
    assert "sigmoid" in result.message and "Sneaker" in result.message
    assert len(result.images) == 1 + 2 * 4  # the input, then per class explanation + contributions
    every = analyse(SNEAKER, DEMO_MODEL, 10)  # K = all classes: each appears once
    assert sorted(every.labels) == sorted(loaded.classes)


def test_analyse_pictures_equal_the_python_api_rendering(demo, single_thread):
    loaded, logits = demo
    result = analyse(SNEAKER, DEMO_MODEL, 2)
    (seen, _), *panels = result.images
    x = loaded.model.transform(Image.open(SNEAKER))
    assert np.array_equal(seen, np.repeat((x[:1].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), 3, -1))
    for rank, target in enumerate(logits.topk(2).indices.tolist()):
        (explanation, caption), (contributions, _) = panels[2 * rank], panels[2 * rank + 1]
        assert caption.startswith(loaded.classes[target])
        expected_explanation, expected_contributions = api_pictures(SNEAKER, target)
        assert_same_picture(explanation, expected_explanation)
        assert_same_picture(contributions, expected_contributions)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims ``width x height`` pixels, with no pixel data (the size check must not decode)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")))
    return path


def test_analyse_reports_bad_input_as_a_readable_message(tmp_path, weights_env):
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    tiny = tmp_path / "tiny.png"
    Image.new("L", (4, 4)).save(tiny)
    cases = {
        text: "notes.txt is not an image: upload a PNG, JPEG",
        tiny: f"tiny.png is 4x4 pixels, too small to classify: use an image of at least {MIN_SIDE}x{MIN_SIDE}",
        _png_header_only(tmp_path / "huge.png", 8000, 6000): "huge.png is 8000x6000 pixels, larger than the 40 mega",
        _png_header_only(tmp_path / "bomb.png", 20000, 20000): "bomb.png is too large for the demo",
        None: "Upload an image or pick a bundled one",
    }
    for image, expected in cases.items():
        result = analyse(image, DEMO_MODEL, 3)
        assert expected in result.message and result.labels == {} and result.images == [], result.message
    not_local = analyse(SNEAKER, "bcos_resnet50", 3).message  # weights_env: an empty cache
    assert "bcos_resnet50.long_in1k is not available offline" in not_local
    assert "bcos-zoo download bcos_resnet50.long_in1k" in not_local
    assert "unknown weights 'bcos_resnet5O'" in analyse(SNEAKER, "bcos_resnet5O", 3).message
    assert "K must be a whole number from 1 to 10, got 0" in analyse(SNEAKER, DEMO_MODEL, 0).message


def test_colour_models_show_the_bcos_rgba_view_over_black(single_thread):
    """Grayscale models get the evidence heat map (above); colour models the papers' RGBA explanation."""
    torch.manual_seed(0)
    model = bcos_zoo.create_model("bcos_resnet20_cifar", in_chans=6, num_classes=3).eval()
    x = bcos_zoo.AddInverse()(torch.rand(1, 3, 16, 16))
    e = bcos_zoo.explain(model, x)
    picture = explanation_image(x, e)
    assert picture.shape == (16, 16, 3)
    alpha = e.explanation[0, ..., 3].numpy()
    assert np.allclose(picture, e.explanation[0, ..., :3].numpy() * alpha[..., None], atol=1e-6)


def test_serve_help_names_its_options(capsys):
    from bcos_zoo.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(option in out for option in ("--model", "--port", "--host", "127.0.0.1"))


def test_serve_refuses_a_model_that_is_not_available_offline(weights_env, capsys, monkeypatch):
    from bcos_zoo.cli import main

    for var, value in (("BCOS_ZOO_OFFLINE", "1"), ("GRADIO_ANALYTICS_ENABLED", "False")):
        monkeypatch.setenv(var, value)  # serve sets them for itself; here they are restored afterwards

    assert main(["serve", "--model", "bcos_resnet50", "--port", str(_free_port())]) == 1
    assert "bcos_resnet50.long_in1k is not available offline" in capsys.readouterr().err


def test_offline_models_are_the_shipped_and_cached_weights(weights_env):
    assert offline_models() == ["bcos_resnet20_cifar.fmnist", "bcos_simple9_cifar.fmnist",
                                "bcosified_resnet20_cifar.fmnist_bcosified", "coda_simple9_cifar.fmnist"]


def test_the_app_logic_runs_without_gradio(demo):
    """Gradio is the optional extra: only building the page imports it (``import bcos_zoo`` never does:
    tests/test_layout.py). Checked in this process, which imports no Gradio (the browser test runs the server
    in a subprocess)."""
    assert analyse(SNEAKER, DEMO_MODEL, 1).labels and "gradio" not in sys.modules


# ------------------------------------------------------------------------------------ in a real browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_serving(proc: subprocess.Popen, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"bcos-zoo serve exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"bcos-zoo serve did not answer at {url} within {timeout} s")


@pytest.fixture
def server():
    """``bcos-zoo serve`` on a free port of 127.0.0.1, stopped afterwards; yields its URL."""
    port = _free_port()
    cmd = [sys.executable, "-m", "bcos_zoo.cli", "serve", "--model", DEMO_MODEL, "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_until_serving(proc, url, timeout=40)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.slow
def test_the_page_explains_an_uploaded_image_as_the_python_api_does(server, tmp_path):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: run 'bash scripts/setup.sh' (apt-get install chromium)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], timeout=20_000)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.set_default_timeout(60_000)  # the first page load took over 20 s beside two training runs
            page.goto(server, wait_until="load")
            upload = page.locator("input[type=file]").first
            upload.set_input_files(str(SNEAKER))
            first = page.locator("#bcos-gallery img").first
            first.wait_for(state="visible")
            assert first.get_attribute("alt").startswith("Sneaker (p=")
            assert "Sneaker" in page.inner_text("#bcos-message")
            with urllib.request.urlopen(first.get_attribute("src"), timeout=10) as r:
                shown = np.asarray(Image.open(io.BytesIO(r.read())).convert("RGB"))
            sneaker = bcos_zoo.create_model(DEMO_MODEL, pretrained=True).pretrained_cfg.classes.index("Sneaker")
            assert_same_picture(shown, api_pictures(SNEAKER, sneaker)[0])
            page.locator("#bcos-gallery img").nth(5).wait_for(state="visible")  # K = 3: six pictures
            page.screenshot(path=tmp_path / "serve.png", full_page=True)
            text = tmp_path / "notes.txt"
            text.write_text("not a picture")
            page.locator("#bcos-upload button[aria-label=Clear]").click()
            upload.set_input_files(str(text))
            page.get_by_text("notes.txt is not an image").wait_for()
            page.screenshot(path=tmp_path / "serve-error.png", full_page=True)
            page.locator("#bcos-bundled input").click()  # a bundled image, then K = 10: twenty pictures
            page.get_by_role("option", name="fmnist_test0000_ankle_boot.png").click()
            page.get_by_text("by bcos_resnet20_cifar.fmnist").wait_for()
            assert page.inner_text("#bcos-message").startswith("Ankle boot (p = ")
            page.locator("#bcos-k input[type=number]").fill("10")
            page.locator("#bcos-gallery img").nth(19).wait_for(state="attached")
        finally:
            browser.close()
    artefacts = REPO / "test-artefacts"
    artefacts.mkdir(exist_ok=True)
    for name in ("serve.png", "serve-error.png"):
        shutil.copy(tmp_path / name, artefacts / name)
