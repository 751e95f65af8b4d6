"""Model families; importing this package registers every architecture."""

from .resnet import *  # noqa: F401,F403
from .densenet import *  # noqa: F401,F403
from .vgg import *  # noqa: F401,F403
from .convnext import *  # noqa: F401,F403
from .vit import *  # noqa: F401,F403
from .simple9 import *  # noqa: F401,F403
from .v1 import *  # noqa: F401,F403
from .standard_resnet import *  # noqa: F401,F403
from .coda import *  # noqa: F401,F403
from .bcosified import *  # noqa: F401,F403
