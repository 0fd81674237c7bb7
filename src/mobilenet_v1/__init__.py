"""MobileNet-V1 (Howard et al. 2017, arXiv:1704.04861) in PyTorch, with an exact cost model.

Names are loaded on first use: ``from mobilenet_v1 import model_cost`` reads the spec and the cost model
without importing torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module defining it
_EXPORTS = {
    "TABLE_1": "spec",
    "resolve": "spec",
    "ModelConfig": "config",
    "CostReport": "cost",
    "cost_of": "cost",
    "model_cost": "cost",
    "MobileNetV1": "model",
    "create_model": "registry",
    "list_models": "registry",
    "from_pretrained": "checkpoint",
    "save_pretrained": "checkpoint",
}
__all__ = [
    "TABLE_1",
    "CostReport",
    "MobileNetV1",
    "ModelConfig",
    "cost_of",
    "create_model",
    "from_pretrained",
    "list_models",
    "model_cost",
    "resolve",
    "save_pretrained",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
