#!/usr/bin/env python
"""Convert an official B-cos ``.pth`` checkpoint to safetensors plus its model card (same as ``bcos-zoo convert``).

    python scripts/convert_checkpoint.py resnet_50_long-ef38a88533.pth --weights resnet50_long --out-dir converted/
"""

import sys

from bcos_zoo.convert import main

if __name__ == "__main__":
    sys.exit(main())
