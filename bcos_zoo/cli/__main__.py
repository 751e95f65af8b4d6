"""``python -m bcos_zoo.cli``: the same as the ``bcos-zoo`` command."""

import sys

from . import main

sys.exit(main())
