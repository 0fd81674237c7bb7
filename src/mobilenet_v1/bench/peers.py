"""The peers' exports: timm's MobileNet-V1 to ONNX the way a timm user would do it (BN left to the runtime)."""

from __future__ import annotations

import os

import torch

from ..files import atomic_path


def export_timm_onnx(model, path: str | os.PathLike, resolution: int = 224, opset: int = 18) -> None:
    """timm model → ONNX with a dynamic batch, via the same exporter as ours but without our BN folding."""
    import onnx  # noqa: PLC0415

    x = torch.randn(2, 3, resolution, resolution)
    program = torch.onnx.export(
        model.eval(), (x,), input_names=["input"], output_names=["logits"], opset_version=opset,
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), dynamo=True, verbose=False,
    )  # fmt: skip
    program.optimize()
    with atomic_path(path) as tmp:
        onnx.save_model(program.model_proto, str(tmp))
        onnx.checker.check_model(str(tmp))
