"""Model families; importing this package registers every architecture."""

from .resnet import *  # noqa: F401,F403
