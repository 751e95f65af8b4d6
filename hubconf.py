"""torch.hub entry points: one per registered bcos-zoo architecture.

    torch.hub.load("<owner>/bcos-zoo", "bcos_resnet50", pretrained=True)
"""

dependencies = ["torch", "torchvision", "safetensors", "huggingface_hub", "requests", "PIL"]

import bcos_zoo as _bcos_zoo  # noqa: E402

globals().update({_name: _bcos_zoo.model_entrypoint(_name) for _name in _bcos_zoo.list_models()})
