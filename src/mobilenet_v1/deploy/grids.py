"""ONNX Runtime's int8 weight grids: which integers a weight may take, at what scale, and the 7-bit default.

x86 CPUs without VNNI (AVX2-only, e.g. AMD Zen 2 and Zen 3) multiply u8×s8 pairs with ``vpmaddubsw``, which adds two
products into a *saturating* int16: full-range weights overflow it and accuracy drops (a trained Fashion-MNIST
model lost 2.6 points, Google's ImageNet model agreed on 29% of photos instead of ~90%). ONNX Runtime's remedy
is ``reduce_range`` (7-bit weights); by default it is switched on exactly when the CPU doing the quantizing has
no VNNI (:func:`default_reduce_range`). uint8 weights (ORT's u8×u8 kernels) widen before multiplying and never
need it.
"""

from __future__ import annotations

import platform

import torch

from .inference import vnni_supported

# The integer grids ONNX Runtime rounds symmetric weights to (quant_utils.get_qmin_qmax_for_qType), by
# weight type and reduce_range. uint8 weights sit around a zero point of 128 (64 with reduce_range). ORT's own
# default for uint8 weights is asymmetric: this holds because quantize_onnx below passes WeightSymmetric=True.
WEIGHT_GRIDS = {("int8", False): (-127, 127), ("int8", True): (-64, 64),
                ("uint8", False): (0, 255), ("uint8", True): (0, 127)}  # fmt: skip
DTYPE_RANGES = {"int8": (-128, 127), "uint8": (0, 255)}  # ORT clips the rounded values to these
WEIGHT_TYPES = tuple(DTYPE_RANGES)


def default_reduce_range() -> bool:
    """True on x86 CPUs without VNNI, whose saturating u8×s8 dot product needs 7-bit weights (see above)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return False  # ARM's dot-product instructions accumulate in int32: no saturation
    return not vnni_supported()


def resolve_reduce_range(reduce_range: bool | None, weight_type: str) -> bool:
    """``reduce_range`` as given, or for None the default for ``weight_type`` on this CPU."""
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"weight type must be one of {', '.join(WEIGHT_TYPES)}; got {weight_type!r}")
    if reduce_range is None:  # only u8×s8 saturates; u8×u8 widens to int16 before multiplying
        return default_reduce_range() if weight_type == "int8" else False
    return reduce_range


def rounded_weight(
    w: torch.Tensor, per_channel: bool, reduce_range: bool = False, weight_type: str = "int8",
    scale: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """``w`` after ONNX Runtime's symmetric 8-bit weight rounding (round half to even), back in float.

    scale = 2·max|w| / (qmax − qmin) and zero point round((qmin + qmax) / 2), as ``compute_scale_zp`` does:
    int8 → ±127 levels (±64 with ``reduce_range``, ORT's 7-bit weights for CPUs without VNNI);
    uint8 → 0…255 around 128 (0…127 around 64; the largest weight may round to 128, which ORT keeps).
    ``scale``: use this scale instead of :func:`weight_scale`'s (ORT enlarges some, see ``qat.ort_scales``).
    """
    qmin, qmax = WEIGHT_GRIDS[weight_type, reduce_range]
    zero = round((qmin + qmax) / 2)
    scale = weight_scale(w, per_channel, reduce_range, weight_type) if scale is None else scale
    return (torch.round(w / scale) + zero).clamp(*DTYPE_RANGES[weight_type]).sub(zero) * scale


def weight_scale(
    w: torch.Tensor, per_channel: bool, reduce_range: bool = False, weight_type: str = "int8"
) -> torch.Tensor:
    """ORT's symmetric weight scale(s), shaped to broadcast against ``w`` (one per output channel, or one)."""
    qmin, qmax = WEIGHT_GRIDS[weight_type, reduce_range]
    peak = w.abs().amax(dim=tuple(range(1, w.ndim)), keepdim=True) if per_channel else w.abs().max()
    return torch.where(peak > 0, 2 * peak / (qmax - qmin), torch.ones_like(peak))
