#!/usr/bin/env python
"""How long ``import bcos_zoo`` takes, against ``import torch, torchvision`` measured in the same run.

    python scripts/bench_import.py --repeats 5

Each import runs in a fresh interpreter (``-X importtime`` is not used: it slows imports down); the
median wall time of the repeats is printed, with the ratio. ``import bcos_zoo`` needs torch but not
torchvision (it loads neither ``torchvision.models`` nor the training, data or CLI modules), so it can
be cheaper than the reference.
"""

from __future__ import annotations

import argparse
import functools
import subprocess
import sys

from benchutil import interleaved_medians

_TIMED = "import time; t = time.perf_counter(); {stmt}; print(time.perf_counter() - t)"
UNWANTED = ("torchvision", "bcos_zoo.cli", "bcos_zoo.training", "bcos_zoo.data", "matplotlib")
_LIST = "import sys, bcos_zoo; print(' '.join(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))"


def unwanted_after_import() -> list[str]:
    """Modules among :data:`UNWANTED` that a fresh ``import bcos_zoo`` loads."""
    code = _LIST.format(prefixes=UNWANTED)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()


def timed(stmt: str) -> float:
    out = subprocess.run([sys.executable, "-c", _TIMED.format(stmt=stmt)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    statements = {"torch, torchvision": "import torch, torchvision", "bcos_zoo": "import bcos_zoo"}
    medians = interleaved_medians({name: functools.partial(timed, stmt) for name, stmt in statements.items()},
                                  args.repeats)  # fmt: skip
    for name, value in medians.items():
        print(f"import {name}: {value * 1000:.0f} ms (median of {args.repeats})")
    print(f"ratio bcos_zoo / (torch, torchvision): {medians['bcos_zoo'] / medians['torch, torchvision']:.2f}")
    print(f"modules of {UNWANTED} loaded by import bcos_zoo: {unwanted_after_import() or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
