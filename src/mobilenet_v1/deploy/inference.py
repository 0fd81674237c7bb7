"""The fast PyTorch inference path, in one call: :func:`optimize_for_inference`.

What it does, and why each step pays on a CPU:

- **fold BN** into conv weight + bias (``fold.py``): one fewer pass over each of 27 activation maps;
- **channels_last** (NHWC): oneDNN's convolutions, depthwise ones above all, are written for NHWC; in NCHW
  PyTorch reorders around every conv (at batch 32 NCHW eager is ~2.5× slower here);
- **inference_mode**: no autograd bookkeeping, no version counters;
- **bf16** (``precision="bf16"``, or ``"auto"`` where the CPU has native bf16 dot products, e.g. AVX-512
  BF16 / AMX): half the memory traffic and twice the multiply rate of fp32; outputs are returned as fp32;
- **fused oneDNN convolutions** (``fuse=True``, the default; ``onednn.py``): conv + bias + ReLU in one kernel
  with weights packed once into oneDNN's layout, instead of a weight reorder and a ReLU pass per layer per call
  (batch 1 on a 2-core AVX2 CPU: 21.7 → 16.6 ms, 1.21× → 1.58× timm eager);
- **torch.compile** (``compile=True``, instead of ``fuse``) with inductor *freezing*: weights become constants,
  so convolutions are pre-packed into oneDNN's blocked layout once and conv + bias + ReLU fuse.
- **freed activations kept for the next call** (``keep_memory=True``, the default; ``allocator.py``):
  PyTorch's CPU allocator is plain malloc, and glibc hands every block above 32 MiB (a batch-32 activation
  map at 224 is 51–103 MB) back to the kernel when it is freed, so each call re-faults its largest buffers
  page by page. ONNX Runtime and OpenVINO keep a memory arena for the same reason. This tunes glibc's
  malloc *process-wide* and for the rest of the process (as ``MALLOC_MMAP_THRESHOLD_`` etc. would): batch 32
  on a 2-core AVX2 CPU, 714 → 459 ms; batch 1 is unaffected (its buffers stay in the heap
  anyway).

    from mobilenet_v1.deploy import optimize_for_inference
    fast = optimize_for_inference(model, precision="auto", compile=True)
    logits = fast(images)   # fp32 NCHW in, fp32 logits out
"""

from __future__ import annotations

import torch
from torch import nn

from ..allocator import keep_freed_memory
from . import onednn
from .fold import fold_bn

PRECISIONS = ("fp32", "bf16", "auto")


def bf16_supported() -> bool:
    """True when oneDNN runs bf16 natively on this CPU (AVX-512 BF16 or AMX), not by emulation.

    Without native support bf16 convolutions are emulated and slower than fp32, so "auto" must not pick it.
    """
    mkldnn = torch.backends.mkldnn
    if not mkldnn.is_available():
        return False
    native = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(native()) if native is not None else False


def vnni_supported() -> bool:
    """True when the CPU has AVX-512 VNNI, the int32-accumulating u8×s8 dot product int8 kernels want."""
    check = getattr(torch.cpu, "_is_vnni_supported", None)
    return bool(check()) if check is not None else False


def resolve_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_supported() else "fp32"
    return precision


class InferenceModel(nn.Module):
    """A folded, channels_last (optionally bf16, optionally compiled) model that takes and returns fp32.

    Callers keep passing ordinary NCHW fp32 tensors; the layout and dtype conversion happen here, once,
    at the input — cheaper than letting every layer reorder.
    """

    def __init__(self, module: nn.Module, precision: str, channels_last: bool, compiled: bool, fused: bool = False,
                 malloc_tuned: bool = False):  # fmt: skip
        super().__init__()
        self.module = module
        self.precision = precision
        self.dtype = _dtype(precision)
        self.channels_last = channels_last
        self.compiled = compiled
        self.fused = fused
        self.malloc_tuned = malloc_tuned  # keep_memory=True took effect (glibc only)
        self.config = getattr(module, "config", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = self.module(_prepare(x, self.dtype, self.channels_last))
            return out.float() if isinstance(out, torch.Tensor) else [o.float() for o in out]

    def extra_repr(self) -> str:
        return (f"precision={self.precision}, channels_last={self.channels_last}, fused={self.fused}, "
                f"compiled={self.compiled}")  # fmt: skip


def optimize_for_inference(
    model: nn.Module, *, precision: str = "fp32", compile: bool = False, channels_last: bool = True,
    fuse: bool = True, keep_memory: bool = True,
) -> InferenceModel:  # fmt: skip
    """Fold BN, go channels_last, cast to ``precision`` ("fp32", "bf16" or "auto"), fuse or compile.

    ``fuse``: conv + bias + activation as one pre-packed oneDNN call (where oneDNN is available; ignored
    with ``compile``, whose freezing pass does the same fusion itself). ``keep_memory``: tune this process's
    malloc to reuse freed activation buffers (:func:`~mobilenet_v1.allocator.keep_freed_memory`; it holds
    up to 2 GiB of freed heap for reuse instead of returning it). It is process-wide and stays: ``False``
    only skips it, it does not undo an earlier call. The input ``model`` is not modified.
    fp32 outputs match the original model to ~1e-5 (folding and fusion reassociate float arithmetic;
    nothing else changes numerics); bf16 outputs differ by bf16 rounding.
    """
    precision = resolve_precision(precision)
    if precision == "bf16" and not bf16_supported():
        raise ValueError("precision='bf16' requested but this CPU has no native bf16 support (use 'fp32' or 'auto')")
    module = fold_bn(model)
    malloc_tuned = keep_memory and keep_freed_memory()
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    if precision == "bf16":
        module = module.to(torch.bfloat16)
    fused = fuse and not compile and onednn.available()
    if fused:
        config = getattr(model, "config", None)
        size = config.resolution if config is not None else 224
        chans = config.in_chans if config is not None else 3
        example = _prepare(torch.zeros(1, chans, size, size), _dtype(precision), channels_last)
        module = onednn.fuse_convolutions(module, example)
    if compile:
        # freezing turns parameters into constants so inductor can pre-pack conv weights for oneDNN and
        # fold the bias/ReLU epilogues; it requires inference (no grad), which forward() guarantees.
        module = torch.compile(module, options={"freezing": True})
    return InferenceModel(module, precision, channels_last, compile, fused, malloc_tuned).eval()


def _dtype(precision: str) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


def _prepare(x: torch.Tensor, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """The model's input in its dtype and layout: converted once here rather than by every layer."""
    fmt = torch.channels_last if channels_last and x.ndim == 4 else torch.contiguous_format
    return x.to(dtype=dtype, memory_format=fmt)
