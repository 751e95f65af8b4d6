"""Pretrained weight tables; importing this package registers them.

- :mod:`.official`: the 34 official B-cos v2 ImageNet weights (one upstream release).
- :mod:`.shipped`: weights trained by bcos-zoo and shipped inside the package.
"""

from . import official, shipped  # noqa: F401  (registration)
