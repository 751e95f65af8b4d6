"""torch.hub entry points: one per registered bcos-zoo architecture, documented from the weights registry.

torch.hub.load("<owner>/bcos-zoo", "bcos_resnet50", pretrained=True)            # its best weights
torch.hub.load("<owner>/bcos-zoo", "bcos_resnet50", pretrained="in1k")          # a tag
torch.hub.load("<owner>/bcos-zoo", "bcos_resnet50", pretrained="w.safetensors")  # a file
"""

dependencies = ["torch", "torchvision", "safetensors", "huggingface_hub", "requests", "PIL"]

from bcos_zoo._hub import hub_entrypoints as _hub_entrypoints

globals().update(_hub_entrypoints())
