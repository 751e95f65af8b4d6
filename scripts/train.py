#!/usr/bin/env python
"""Train or fine-tune a bcos-zoo model (same as ``bcos-zoo train``); works under torchrun."""

from __future__ import annotations

import sys

from bcos_zoo.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    """``bcos-zoo train ARGV``."""
    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
