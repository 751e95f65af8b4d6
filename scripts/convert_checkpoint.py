#!/usr/bin/env python
"""Convert an official B-cos ``.pth`` checkpoint to safetensors plus its model card (same as ``bcos-zoo convert``).

    python scripts/convert_checkpoint.py resnet_50_long-ef38a88533.pth --weights resnet50_long --out-dir converted/
"""

from __future__ import annotations

import sys

from bcos_zoo.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    """``bcos-zoo convert ARGV``."""
    return cli_main(["convert", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
