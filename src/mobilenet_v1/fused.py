"""CPU training kernels for the conv-BN-ReLU blocks: small C sources, compiled on first use.

In a CPU training step of MobileNet-V1 a third of the time goes to batch norm and ReLU, which PyTorch runs as
separate memory-bound passes over every activation map, and the depthwise convolutions take far longer than
their Mult-Adds (BENCHMARKS.md, "where the step's time goes"). Two kernels:

- ``csrc/bn_relu.c``: batch norm with batch statistics fused with ReLU, two passes forward and two backward, on
  float32 maps or the bfloat16 ones convolutions give under bf16 autocast;
- ``csrc/depthwise.c``: the 3×3 depthwise convolution (padding 1, stride 1 or 2) and both its gradients, float32.

:func:`enable` marks a model's ``ConvBNAct`` blocks; in training mode each then uses a kernel where it applies —
a channels-last CPU tensor with a multiple of 8 channels; a plain ``nn.BatchNorm2d`` tracking running statistics
followed by ReLU; an ``nn.Conv2d`` of that depthwise shape outside autocast — and PyTorch's own operators
everywhere else (evaluation, GPUs, SyncBatchNorm, TF 'SAME' padding, hooked modules, ``torch.compile``).
Results match PyTorch's to float rounding (``tests/test_fused.py``: against float64 references, about as close
as PyTorch's own float32 and bf16 operators).

The sources are compiled with the system's C compiler (``$CC``, else ``cc``; ``-O3 -march=native -fopenmp``)
into the cache directory, one build per source, compiler and CPU, written atomically. Where there is no
compiler, no AVX2/FMA, or the build fails, :func:`load` returns None and training runs on PyTorch's
operators. ``MOBILENET_V1_FUSED=0`` turns the kernels off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import torch
from torch import nn
from torch.autograd.function import once_differentiable

log = logging.getLogger(__name__)

SOURCES = ("bn_relu.c", "depthwise.c")
STREAM_BYTES = 8 << 20  # maps above this are written with streaming stores (they leave the caches anyway)
_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_DEPTHWISE = [_P, _P, _P, _I64, _I64, _I64, _I64, _I64, _I64, _INT]  # in, taps, out, N, H, W, C, OH, OW, stride
_SIGNATURES = {  # the C functions' arguments (csrc/*.c)
    "bn_relu_stats": [_P, _I64, _I64, _P, _P, _P, _INT],
    "bn_relu_apply": [_P, _P, _I64, _I64, _P, _P, _P, _INT, _INT],
    "bn_relu_grad_sums": [_P, _P, _I64, _I64, _P, _P, _P, _P, _P, _INT],
    "bn_relu_grad_apply": [_P, _P, _P, _I64, _I64, _P, _P, _P, _P, _P, _P, _INT, _INT],
    "dw3x3_forward": _DEPTHWISE,
    "dw3x3_grad_input": _DEPTHWISE,
    "dw3x3_grad_weight": _DEPTHWISE,
}


def _cpu_id() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags"))]
    return "\n".join(dict.fromkeys(keep))  # every core repeats them


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc"))


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled kernel library, building it on first use; None where it cannot be had (logged once)."""
    if os.environ.get("MOBILENET_V1_FUSED", "1") == "0" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    cc = _compiler()
    if cc is None:
        log.info("fused training kernels: no C compiler found; training uses PyTorch's operators")
        return None
    from .checkpoint import atomic_path  # here: layers.py imports this module, and these import layers.py
    from .pretrained import cache_dir

    sources = [resources.files("mobilenet_v1").joinpath("csrc", name).read_bytes() for name in SOURCES]
    flags = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]
    parts = [*sources, cc.encode(), " ".join(flags).encode(), _cpu_id().encode()]
    key = hashlib.sha256(b"\0".join(parts)).hexdigest()
    lib_path = cache_dir() / "kernels" / f"train-{key[:16]}.so"
    if not lib_path.exists():
        try:
            with atomic_path(lib_path) as tmp:
                c_files = [tmp.with_name(f"{tmp.name}-{name}") for name in SOURCES]
                try:
                    for path, src in zip(c_files, sources):
                        path.write_bytes(src)
                    subprocess.run([cc, *flags, *map(str, c_files), "-o", str(tmp)], check=True, capture_output=True)
                finally:
                    for path in c_files:
                        path.unlink(missing_ok=True)
        except (OSError, subprocess.CalledProcessError) as e:
            detail = getattr(e, "stderr", b"") or b""
            first = detail.decode(errors="replace").strip().splitlines()[:1]
            log.info("fused training kernels: build failed (%s); training uses PyTorch's operators", first or e)
            return None
    try:
        lib = ctypes.CDLL(str(lib_path))
    except OSError as e:
        log.info("fused training kernels: cannot load %s (%s)", lib_path, e)
        return None
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, _INT  # returns 0, or 1: out of memory (see _call)
    return lib


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _call(fn, *args) -> None:
    if fn(*args) != 0:
        raise MemoryError(f"{fn.__name__}: no memory for the kernel's scratch buffers")


class BatchNormReLU(torch.autograd.Function):
    """relu(batch_norm(x, training=True)) with the running statistics updated as ``nn.BatchNorm2d`` does."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum: float, eps: float):
        lib = load()
        n, c, h, w = x.shape
        m = n * h * w
        bf16 = int(x.dtype == torch.bfloat16)  # read and written as bfloat16, computed in float32
        s1 = torch.empty(c, dtype=torch.float64)
        s2 = torch.empty(c, dtype=torch.float64)
        shift = x[0, :, 0, 0].float().contiguous()  # the kernel sums x - shift (against cancellation)
        _call(lib.bn_relu_stats, _ptr(x), m, c, _ptr(shift), _ptr(s1), _ptr(s2), bf16)
        d = s1 / m
        mean = shift.double() + d
        var = (s2 / m - d * d).clamp_min(0)
        invstd = (var + eps).rsqrt()
        with torch.no_grad():  # as F.batch_norm: unbiased variance into the running estimate
            running_mean.lerp_(mean.to(running_mean.dtype), momentum)
            running_var.lerp_((var * (m / max(m - 1, 1))).to(running_var.dtype), momentum)
        # y = max((x - mean)·a + b, 0); the backward pass re-derives the ReLU mask from the same float32 values
        mean32 = mean.float()
        a = (weight.detach().double() * invstd).float()
        b = bias.detach().float().contiguous()
        y = torch.empty_like(x, memory_format=torch.channels_last)
        big = int(x.nbytes > STREAM_BYTES)
        _call(lib.bn_relu_apply, _ptr(x), _ptr(y), m, c, _ptr(mean32), _ptr(a), _ptr(b), big, bf16)
        ctx.save_for_backward(x, weight, mean, mean32, invstd, a, b)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        lib = load()
        x, weight, mean, mean32, invstd, a, b = ctx.saved_tensors
        gy = gy.to(x.dtype).contiguous(memory_format=torch.channels_last)
        n, c, h, w = x.shape
        m = n * h * w
        bf16 = int(x.dtype == torch.bfloat16)
        sg = torch.empty(c, dtype=torch.float64)
        sgx = torch.empty(c, dtype=torch.float64)
        _call(lib.bn_relu_grad_sums, _ptr(gy), _ptr(x), m, c, _ptr(mean32), _ptr(a), _ptr(b), _ptr(sg), _ptr(sgx), bf16)
        # g = dL/dy masked by the ReLU, d = x - mean32; sg = Σ g, sgx = Σ g·d; x̂ = (x - mean)·invstd.
        # dL/dx = γ·invstd·(g - Σg/m - x̂·Σ(g·x̂)/m) = p·g + q·d + r
        grad_weight = invstd * (sgx + (mean32 - mean) * sg)  # Σ g·x̂, with the float32 mean's rounding taken out
        p = weight.detach().double() * invstd
        q = -p * invstd * grad_weight / m
        r = -p * sg / m
        p, q, r = p.float(), q.float(), r.float()
        gx = torch.empty_like(x, memory_format=torch.channels_last)
        big = int(x.nbytes > STREAM_BYTES)
        _call(
            lib.bn_relu_grad_apply,
            _ptr(gy),
            _ptr(x),
            _ptr(gx),
            m,
            c,
            _ptr(mean32),
            _ptr(a),
            _ptr(b),
            _ptr(p),
            _ptr(q),
            _ptr(r),
            big,
            bf16,
        )
        return gx, grad_weight.to(weight.dtype), sg.to(weight.dtype), None, None, None, None


def _fast_input(x: torch.Tensor, dtypes: tuple[torch.dtype, ...] = (torch.float32,)) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype in dtypes
        and x.dim() == 4
        and x.shape[1] % 8 == 0
        and x.is_contiguous(memory_format=torch.channels_last)
        and not torch.compiler.is_compiling()
    )


def applies(bn: nn.Module, x: torch.Tensor) -> bool:
    """Whether the fused kernel can stand in for ``relu(bn(x))`` here (see the module docstring)."""
    return (
        type(bn) is nn.BatchNorm2d
        and bn.training
        and bn.affine
        and bn.track_running_stats
        and bn.momentum is not None
        and bn.weight.dtype == torch.float32
        and x.shape[0] * x.shape[2] * x.shape[3] > 1
        and _fast_input(x, (torch.float32, torch.bfloat16))  # bf16: a map from a convolution under autocast
    )


def depthwise_applies(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether the depthwise kernel can stand in for ``conv(x)``: a bias-free 3×3 depthwise ``nn.Conv2d``,
    padding 1 with zeros, stride 1 or 2, no dilation."""
    return (
        type(conv) is nn.Conv2d
        and conv.groups == conv.in_channels == conv.out_channels
        and conv.kernel_size == (3, 3)
        and conv.padding == (1, 1)
        and conv.stride in ((1, 1), (2, 2))
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        and conv.bias is None
        and conv.weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")  # autocast would run this convolution in bf16
        and _fast_input(x)
    )


class DepthwiseConv3x3(torch.autograd.Function):
    """``F.conv2d(x, weight, stride=stride, padding=1, groups=C)`` for 3×3 depthwise weights [C, 1, 3, 3]."""

    @staticmethod
    def forward(ctx, x, weight, stride: int):
        lib = load()
        n, c, h, w = x.shape
        oh, ow = (h - 1) // stride + 1, (w - 1) // stride + 1
        taps = weight.detach().reshape(c, 9).t().contiguous()  # [9, C]: a tap's channels are contiguous
        y = torch.empty(n, c, oh, ow, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
        _call(lib.dw3x3_forward, _ptr(x), _ptr(taps), _ptr(y), n, h, w, c, oh, ow, stride)
        ctx.save_for_backward(x, taps)
        ctx.stride = stride
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        lib = load()
        x, taps = ctx.saved_tensors
        gy = gy.contiguous(memory_format=torch.channels_last)
        n, c, h, w = x.shape
        oh, ow = gy.shape[2:]
        gx = None
        if ctx.needs_input_grad[0]:
            gx = torch.empty_like(x, memory_format=torch.channels_last)
            _call(lib.dw3x3_grad_input, _ptr(gy), _ptr(taps), _ptr(gx), n, h, w, c, oh, ow, ctx.stride)
        gw = None
        if ctx.needs_input_grad[1]:
            sums = torch.empty(9, c, dtype=torch.float64)
            _call(lib.dw3x3_grad_weight, _ptr(gy), _ptr(x), _ptr(sums), n, h, w, c, oh, ow, ctx.stride)
            gw = sums.t().reshape(c, 1, 3, 3).to(taps.dtype)
        return gx, gw, None


def batch_norm_relu(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
    return BatchNormReLU.apply(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.momentum, bn.eps)


def depthwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return DepthwiseConv3x3.apply(x, conv.weight, conv.stride[0])


def _hooked(module: nn.Module) -> bool:  # a kernel would bypass its hooks (pruning masks, profilers, ...)
    return bool(module._forward_hooks or module._forward_pre_hooks)


def conv_bn_act(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A ``ConvBNAct`` block's training forward, each part on a kernel where one applies."""
    if depthwise_applies(block.conv, x) and not _hooked(block.conv):
        x = depthwise(block.conv, x)
    else:
        x = block.conv(x)
    if isinstance(block.act, nn.ReLU) and applies(block.bn, x) and not (_hooked(block.bn) or _hooked(block.act)):
        return batch_norm_relu(block.bn, x)
    return block.act(block.bn(x))


def enable(model: nn.Module, on: bool = True) -> int:
    """Let ``model``'s conv-BN-ReLU blocks use the kernels in training; returns how many may (0: unavailable)."""
    from .layers import ConvBNAct

    blocks = [m for m in model.modules() if isinstance(m, ConvBNAct)]
    on = on and bool(blocks) and load() is not None
    for m in blocks:
        m.fused_training = on
    return len(blocks) if on else 0
