"""The package's shape: imports run one way, ``import bcos_zoo`` stays light, modules stay small."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bcos_zoo"
SCRIPTS = PACKAGE.parent / "scripts"
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}


def imported_modules(path: Path) -> set[str]:
    """Every bcos_zoo module ``path`` imports, at the top or inside functions (lazy imports count)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("bcos_zoo"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base.startswith("bcos_zoo"):  # `from . import fetch` imports bcos_zoo.fetch, not bcos_zoo
                subs = {f"{base}.{a.name}" for a in node.names} & MODULES
                found |= subs if len(subs) == len(node.names) else {base}
    return {m for m in found if m in MODULES} - {name}


def test_no_import_cycles_counting_lazy_imports():
    """Arrows run one way: no module reaches itself through what it imports (the ``_builder <-> weights``
    cycle of old was a lazy import, so function-level imports count)."""
    graph = {module_name(p): imported_modules(p) for p in PACKAGE.rglob("*.py")}

    def find_cycle(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return path + [nxt]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [c for c in (find_cycle(m) for m in sorted(graph)) if c]
    assert not cycles, cycles[:3]


def test_import_bcos_zoo_stays_light():
    """Neither torchvision (whose import loads torchvision.models) nor the applications are loaded."""
    code = "import sys, bcos_zoo; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    heavy = ("torchvision", "bcos_zoo.cli", "bcos_zoo.training", "bcos_zoo.data", "bcos_zoo.localisation", "matplotlib")
    heavy += ("gradio",)  # the web demo's optional extra
    assert [m for m in loaded if m.startswith(heavy)] == []
    extras = ("captum", "quantus", "pytorch_grad_cam", "cv2")  # the interpretability extras load lazily
    assert [m for m in loaded if m.split(".")[0] in extras] == []


def test_modules_are_small():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > MAX_LINES} == {}


def test_applications_and_scripts_use_only_public_names():
    """The CLI, training and the scripts import no underscore module or name of bcos_zoo."""
    files = [*SCRIPTS.glob("*.py"), *(PACKAGE / "cli").glob("*.py"), *(PACKAGE / "training").glob("*.py")]
    private = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("bcos_zoo")):
                parts = (node.module or "").split(".") + [a.name for a in node.names]
                private += [f"{path.name}: {'.'.join(parts)}" for p in parts if p.startswith("_") and p != "__version__"]
    assert private == []
