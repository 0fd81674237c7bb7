"""MobileNet-V1 (Howard et al. 2017, arXiv:1704.04861) in PyTorch, with an exact cost model."""

from .cost import CostReport, cost_of, model_cost
from .model import MobileNetV1, ModelConfig
from .registry import create_model, list_models
from .spec import TABLE_1, resolve

__all__ = [
    "TABLE_1",
    "CostReport",
    "MobileNetV1",
    "ModelConfig",
    "cost_of",
    "create_model",
    "list_models",
    "model_cost",
    "resolve",
]
__version__ = "0.1.0"

from .checkpoint import from_pretrained, save_pretrained  # noqa: E402

__all__ += ["from_pretrained", "save_pretrained"]
