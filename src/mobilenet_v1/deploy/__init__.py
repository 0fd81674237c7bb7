"""Deployment: BN folding, the fast PyTorch inference path, ONNX/TorchScript export and int8 quantization.

ONNX, ONNX Runtime and OpenVINO are optional (the ``deploy`` extra); modules that need them import them
where used, so ``fold`` and ``inference`` work with torch alone.
"""

from .fold import fold_bn, fold_conv_bn
from .inference import InferenceModel, bf16_supported, optimize_for_inference

__all__ = ["InferenceModel", "bf16_supported", "fold_bn", "fold_conv_bn", "optimize_for_inference"]
