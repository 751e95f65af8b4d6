#!/usr/bin/env python
"""Train or fine-tune a bcos-zoo model (same as ``bcos-zoo train``); works under torchrun."""

import sys

from bcos_zoo.training import main

if __name__ == "__main__":
    sys.exit(main())
