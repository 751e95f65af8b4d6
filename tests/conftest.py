"""Shared fixtures. Keep this file small: fixtures used by one test file live in that file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (scripts/test.sh starts a worker per core) each worker computes on one thread:
    workers with a thread per core each would oversubscribe the machine."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread: tiny CPU forwards are ~100x slower when threads compete with other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def weights_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty bcos-zoo and Hugging Face caches, online, no mirrors; the weights registry is restored afterwards.

    Returns the bcos-zoo cache directory (``BCOS_ZOO_CACHE``).
    """
    from bcos_zoo import registry

    monkeypatch.setenv("BCOS_ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    for var in ("BCOS_ZOO_OFFLINE", "HF_HUB_OFFLINE", "BCOS_ZOO_RELEASE_URL", "HF_ENDPOINT", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    for name in ("_WEIGHTS", "_DEFAULTS", "_ALIASES"):
        monkeypatch.setattr(registry, name, dict(getattr(registry, name)))
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def load_script():
    """``load_script("gen_model_cards")`` imports ``scripts/gen_model_cards.py`` (scripts are not a package)."""
    import importlib.util

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"_script_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def png_size():
    """``png_size(path)``: check that ``path`` is a complete PNG file and return its ``(width, height)``."""
    from PIL import Image

    def size(path: Path) -> tuple[int, int]:
        with Image.open(path) as img:
            img.verify()  # the whole file is read and checked
        with Image.open(path) as img:
            assert img.format == "PNG"
            return img.size

    return size
