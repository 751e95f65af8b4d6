"""Pretrained weight tables; importing this package registers them.

- :mod:`.official`: the 34 official B-cos v2 ImageNet weights (one upstream release).
- :mod:`.shipped`: weights trained by bcos-zoo and shipped inside the package.
- :mod:`.v1_coda`: the official B-cos v1 and CoDA-Nets weights (no published hashes: trusted on first use).
"""

from . import official, shipped, v1_coda  # noqa: F401  (registration; shipped weights are their architectures' defaults)
