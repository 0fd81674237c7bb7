"""Quantization-aware fine-tuning for the ONNX Runtime int8 export, by self-distillation: no labels needed.

Post-training quantization rounds weights the training never saw rounded. QAT (Jacob et al. 2018;
Krishnamoorthi 2018, §3) fine-tunes *through* the rounding: the forward pass computes what ONNX Runtime's
int8 graph will compute, and gradients pass straight through the rounding (the straight-through estimator).
Here the forward pass mirrors the QDQ graph ``quantize.quantize_onnx`` writes:

- each convolution's BN-folded weight rounded to ORT's grid (``bias_correction.rounded_weight``: per-channel
  or per-tensor, int8/uint8, 7-bit with ``reduce_range``), recomputed from the latent float weight at every step,
  and its bias rounded to int32 at ORT's bias scale (input scale × weight scale);
- every activation ORT quantizes — the model input and each conv + ReLU output — fake-quantized to uint8 with
  the range ORT's MinMax calibration gives on the same calibration images (min/max over all of them, zero
  included), held fixed while the weights adapt; the classifier stays float, as in the export.

The target is the float model itself (knowledge distillation, Hinton et al. 2015: the KL divergence from
the float model's class distribution to the quantized one's), on random crops and flips of the calibration
images, so any model — Google's ImageNet weights included — can be fine-tuned with nothing but the images
it is calibrated on; it learns only what they show. Fine-tuning starts from the bias-corrected weights
(``bias_correction.py``) when the export uses bias correction; the teacher is always the float model.
Afterwards the latent float weights are exported as usual; ORT rounds them to the same grid and
recalibrates the activation ranges.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.func import functional_call
from torchvision.transforms import v2

from ..checkpoint import Preprocessing
from ..layers import ConvBNAct
from ..preprocess import load_image
from .calibration import batches
from .fold import fold_bn
from .grids import WEIGHT_GRIDS, resolve_reduce_range, rounded_weight, weight_scale

DEFAULT_STEPS = 200
DEFAULT_LR = 2e-5  # Adam; large enough to move weights across a rounding step in a few hundred steps
DEFAULT_BATCH = 16
CROP_SCALE = (0.25, 1.0)  # random-resized-crop area range for the distillation views


@dataclass
class QATReport:
    steps: int
    batch_size: int
    lr: float
    first_loss: float  # distillation KL on a fixed batch of calibration images, before fine-tuning
    last_loss: float  # ... and after
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def _straight_through(x: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    """``rounded`` in the forward pass, identity in the backward pass."""
    return x + (rounded - x).detach()


INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def smallest_bias_scale(b: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """ORT's smallest int32 bias scale that holds ``b`` (with its 1.0001 margin): per channel, or one (shape 1)."""
    biggest = b.double().abs() if per_channel else b.double().abs().max().expand(1)
    return 1.0001 * 2.0 * biggest / (float(INT32_MAX) - float(INT32_MIN + 1))


@torch.no_grad()
def ort_scales(w: torch.Tensor, b: torch.Tensor, input_scale: float, grid: tuple[bool, bool, str]):
    """The weight scale(s) and bias scale(s) ORT's QDQ quantizer uses for a conv with weight ``w``, bias ``b``.

    The bias is stored as int32 at scale input_scale × weight_scale. When that scale is too small for the
    bias to fit (a channel with near-zero weights and a real bias, common after BN folding), ORT enlarges
    the *weight* scale of symmetric int8 weights until it fits (``_adjust_weight_scale_for_int32_bias``,
    factor 1.0001 of the minimum); uint8 weights (zero point 128) are not adjusted and their bias is clipped.
    """
    per_channel, _, weight_type = grid
    scale = weight_scale(w, *grid).double()
    if weight_type == "int8":
        smallest = smallest_bias_scale(b, per_channel) / input_scale  # as a weight scale
        grow = (scale.flatten() < smallest) & (scale.flatten() > 0)
        scale = torch.where(grow, smallest, scale.flatten()).view_as(scale)
    scale = scale.float()
    return scale, (input_scale * scale).flatten()


class _SimulatedConv(nn.Module):
    """A folded convolution with the weight and bias ORT's QDQ graph will use: the weight rounded to its grid,
    the bias to int32 at scale input_scale × weight_scale (``quantize_bias_static``; see :func:`ort_scales`)."""

    def __init__(self, conv: nn.Conv2d, input_scale: float, grid: tuple[bool, bool, str]):
        super().__init__()
        self.conv, self.input_scale, self.grid = conv, input_scale, grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.conv.weight, self.conv.bias
        scale, bias_scale = ort_scales(w, b, self.input_scale, self.grid)
        weight = _straight_through(w, rounded_weight(w, *self.grid, scale=scale))
        bias = _straight_through(b, torch.round(b / bias_scale).clamp(INT32_MIN, INT32_MAX) * bias_scale)
        return functional_call(self.conv, {"weight": weight, "bias": bias}, (x,))


class _FakeQuantUint8(nn.Module):
    """uint8 asymmetric per-tensor fake quantization with ORT's scale and zero point for range [lo, hi]."""

    def __init__(self, lo: float, hi: float):
        super().__init__()
        lo, hi = min(lo, 0.0), max(hi, 0.0)  # ORT's compute_scale_zp keeps zero exactly representable
        self.scale = (hi - lo) / 255.0 if hi > lo else 1.0
        self.zero_point = int(round(-lo / self.scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, 0, 255)


class QuantSim:
    """A BN-folded copy of a model whose forward pass simulates the int8 export (see the module docstring).

    ``student`` is the simulated model (trainable: its conv weights and biases); :meth:`finish` removes the
    simulation and returns the plain folded model with the fine-tuned float weights.
    """

    def __init__(self, model: nn.Module, calibration: torch.Tensor, per_channel: bool = True,
                 reduce_range: bool | None = None, weight_type: str = "int8"):  # fmt: skip
        reduce_range = resolve_reduce_range(reduce_range, weight_type)
        self.student = fold_bn(model)
        self.blocks = [m for m in self.student.modules() if isinstance(m, ConvBNAct)]
        ranges = self._activation_ranges(calibration)
        self.input_quant = _FakeQuantUint8(float(calibration.min()), float(calibration.max()))
        self.output_quants = [_FakeQuantUint8(*ranges[i]) for i in range(len(self.blocks))]
        self._hooks = [self.student.register_forward_pre_hook(lambda _m, args: (self.input_quant(args[0]),))]
        for block, quant in zip(self.blocks, self.output_quants):
            self._hooks.append(block.register_forward_hook(lambda _m, _a, out, q=quant: q(out)))
        # MobileNet's convolutions form one chain: each one's input is the previous block's quantized output.
        input_scales = [self.input_quant.scale] + [q.scale for q in self.output_quants[:-1]]
        for block, input_scale in zip(self.blocks, input_scales):
            block.conv = _SimulatedConv(block.conv, input_scale, (per_channel, reduce_range, weight_type))
        for p in self.parameters():
            p.requires_grad_(True)

    @torch.no_grad()
    def _activation_ranges(self, x: torch.Tensor, batch_size: int = 50) -> dict[int, tuple[float, float]]:
        """(min, max) of each block's output over all of ``x``: what ORT's MinMax calibration records."""
        ranges: dict[int, tuple[float, float]] = {}

        def record(i):
            def hook(_module, _args, out):
                lo, hi = ranges.get(i, (math.inf, -math.inf))
                ranges[i] = (min(lo, float(out.min())), max(hi, float(out.max())))

            return hook

        handles = [b.register_forward_hook(record(i)) for i, b in enumerate(self.blocks)]
        try:
            for i in range(0, len(x), batch_size):
                self.student(x[i : i + batch_size])
        finally:
            for h in handles:
                h.remove()
        return ranges

    def parameters(self) -> list[nn.Parameter]:
        return [p for block in self.blocks for p in (block.conv.conv.weight, block.conv.conv.bias)]

    def finish(self) -> nn.Module:
        for h in self._hooks:
            h.remove()
        for block in self.blocks:
            block.conv = block.conv.conv
        for p in self.student.parameters():
            p.requires_grad_(False)
        return self.student.eval()


@torch.no_grad()
def widen_filters_for_int32_biases(
    model: nn.Module, calibration: torch.Tensor, per_channel: bool = True, reduce_range: bool | None = None,
    weight_type: str = "uint8",
) -> tuple[nn.Module, int]:  # fmt: skip
    """A BN-folded copy of ``model`` in which every filter's weight range is wide enough for its int32 bias.

    For uint8 weights ORT does not enlarge the weight scale of a filter whose bias would overflow int32 at
    scale input_scale × weight_scale (it does so only for int8 weights, see :func:`ort_scales`): it clips the
    bias, and its integer kernels then overflow on that channel. Such filters have near-zero weights beside a
    real bias (BN folding makes them). Here the filter's largest weight is set to the smallest peak whose scale
    fits the bias — what ORT's int8 adjustment amounts to; the output changes by < 2e-5 of the bias.
    Returns the model and the number of filters widened. ``calibration``: the calibration inputs, whose
    activation ranges give the input scales, as ORT's MinMax calibration will.
    """
    reduce_range = resolve_reduce_range(reduce_range, weight_type)
    sim = QuantSim(model, calibration, per_channel, reduce_range, weight_type)
    scales = [block.conv.input_scale for block in sim.blocks]
    folded = sim.finish()
    qmin, qmax = WEIGHT_GRIDS[weight_type, reduce_range]
    widened = 0
    for block, input_scale in zip((m for m in folded.modules() if isinstance(m, ConvBNAct)), scales):
        w = block.conv.weight
        peak_needed = smallest_bias_scale(block.conv.bias, per_channel) / input_scale * (qmax - qmin) / 2
        flat = w.view(w.shape[0], -1) if per_channel else w.view(1, -1)
        peak = flat.abs().amax(1).double()
        for i in torch.nonzero(peak < peak_needed).flatten().tolist():
            j = int(flat[i].abs().argmax())
            flat[i, j] = float(peak_needed[i]) * (1.0 if flat[i, j] >= 0 else -1.0)
            widened += 1
    return folded, widened


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) over classes, averaged over the batch."""
    return F.kl_div(F.log_softmax(student_logits, 1), F.log_softmax(teacher_logits, 1), log_target=True,
                    reduction="batchmean")  # fmt: skip


def distillation_views(pre: Preprocessing) -> v2.Compose:
    """Random crops and flips of a calibration image, normalised as the model expects."""
    return v2.Compose([
        v2.Grayscale(1) if pre.grayscale else v2.RGB(),
        v2.RandomResizedCrop(pre.input_size, scale=CROP_SCALE, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pre.mean), list(pre.std)),
    ])  # fmt: skip


def qat_finetune(
    model: nn.Module, images: Sequence[str | os.PathLike | Image.Image], pre: Preprocessing, *,
    steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR, batch_size: int = DEFAULT_BATCH, per_channel: bool = True,
    reduce_range: bool | None = None, weight_type: str = "int8", seed: int = 0, augment: bool = True,
    start: nn.Module | None = None,
) -> tuple[nn.Module, QATReport]:  # fmt: skip
    """Fine-tune ``model`` (BN folded first) through the simulated int8 export; returns the folded model with
    the fine-tuned float weights and a report. ``images``: the calibration images (paths or PIL images).
    ``start``: the weights to fine-tune from, e.g. ``bias_correct(model, ...)``'s — the float ``model`` stays
    the teacher (a bias-corrected model is a worse *float* model: its biases anticipate rounding).

    Adam with a cosine-decayed learning rate; each step distils the float model's outputs on ``batch_size``
    random views of the images (``augment=False``: the images themselves, as the evaluation preprocessing
    gives them). The activation ranges are those of ``images`` under ``pre``'s evaluation
    preprocessing, as the export's calibration will see them.
    """
    if steps < 1:
        raise ValueError(f"QAT needs at least one step; got steps={steps}")
    if not images:
        raise ValueError("no calibration images given for quantization-aware fine-tuning")
    began = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    pictures = [im if isinstance(im, Image.Image) else load_image(im, grayscale=pre.grayscale) for im in images]
    fixed = torch.from_numpy(np.concatenate(list(batches(pictures, pre, 50))))
    teacher = fold_bn(model)
    sim = QuantSim(start if start is not None else model, fixed, per_channel, reduce_range, weight_type)
    student = sim.student.eval()  # folded: no BN left to train; eval keeps dropout off
    probe = fixed[torch.randperm(len(fixed), generator=generator)[: 2 * batch_size]]
    with torch.no_grad():
        probe_target = teacher(probe)
        first = float(distillation_loss(student(probe), probe_target))
    views = distillation_views(pre)
    optimizer = torch.optim.Adam(sim.parameters(), lr=lr)
    rng = torch.get_rng_state()
    torch.manual_seed(seed)  # the crops' randomness: torchvision draws from the global generator
    try:
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            picks = torch.randint(len(pictures), (batch_size,), generator=generator).tolist()
            x = torch.stack([views(pictures[i]) for i in picks]) if augment else fixed[picks]
            with torch.no_grad():
                target = teacher(x)
            loss = distillation_loss(student(x), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        torch.set_rng_state(rng)
    with torch.no_grad():
        last = float(distillation_loss(student(probe), probe_target))
    tuned = sim.finish()
    return tuned, QATReport(steps, batch_size, lr, first, last, time.perf_counter() - began)
