"""torch.hub entry points: one per registered bcos-zoo architecture, documented from the weights registry.

torch.hub.load("bcos-zoo/bcos-zoo", "bcos_resnet50", pretrained=True)            # its best weights
torch.hub.load("bcos-zoo/bcos-zoo", "bcos_resnet50", pretrained="in1k")          # a tag
torch.hub.load("bcos-zoo/bcos-zoo", "bcos_resnet50", pretrained="w.safetensors")  # a file

(The repository is [project.urls] Repository of pyproject.toml; a fork passes its own.)
"""

dependencies = ["torch", "torchvision", "safetensors", "huggingface_hub", "requests", "PIL", "filelock"]

from bcos_zoo.torchhub import hub_entrypoints as _hub_entrypoints

globals().update(_hub_entrypoints())
