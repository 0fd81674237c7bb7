"""``torch.hub`` entry points: every named MobileNet-V1, with or without released weights.

    model = torch.hub.load("path/to/mobilenet-v1", "mobilenet_v1_100_224", source="local", pretrained=True)
    model = torch.hub.load("path/to/mobilenet-v1", "mobilenet_v1_050_160", source="local", num_classes=10)

Keyword arguments are ``mobilenet_v1.create_model``'s: ``pretrained`` (True, a source such as "keras", or a file),
``ModelConfig`` fields, and ``features_only`` / ``out_indices``.
"""

import os
import sys

dependencies = ["torch", "torchvision", "safetensors", "numpy", "PIL"]

# the package lives in src/; torch.hub imports this file from the repository's root
_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from mobilenet_v1.registry import create_model, list_models  # noqa: E402


def _entry(name: str):
    def load(pretrained=False, **kwargs):
        return create_model(name, pretrained=pretrained, **kwargs)

    load.__name__ = name
    load.__doc__ = f"``mobilenet_v1.create_model({name!r}, pretrained=..., **kwargs)``"
    return load


for _name in list_models():
    globals()[_name] = _entry(_name)
