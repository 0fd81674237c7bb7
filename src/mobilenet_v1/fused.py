"""CPU training kernels for the conv-BN-ReLU blocks: small C sources, compiled on first use.

In a CPU training step of MobileNet-V1 a third of the time goes to batch norm and ReLU, which PyTorch runs as
separate memory-bound passes over every activation map, and the depthwise convolutions take far longer than
their Mult-Adds (BENCHMARKS.md, "where the step's time goes"). Two kernels for them:

- ``csrc/bn_relu.c``: batch norm with batch statistics fused with ReLU, two passes forward and two backward, on
  float32 maps or the bfloat16 ones convolutions give under bf16 autocast;
- ``csrc/depthwise.c``: the 3×3 depthwise convolution (padding 1, stride 1 or 2), and both its gradients in one
  pass, float32. It can read the previous block's batch norm + ReLU in place of that block's output map, computing
  it row by row as it reads (and that batch norm's gradient sums as it writes dL/da), so the map is never stored;
  and it can take on its own block's batch norm: summing its statistics from each output row as it writes it, and
  in the backward computing dL/dy through that batch norm + ReLU row by row from dL/dz, so dL/dy is never stored.

The 1×1 convolutions run as matrix products on the channels-last views, ``csrc/gemm.c``: faster here than oneDNN's
convolutions, and for the weight gradient than MKL's ``torch.mm`` too, from 32 input channels up (forward: at every
width; :class:`PointwiseConv`). The forward product sums the batch statistics of its output as it writes it, for
the batch norm after it; and it can read a batch norm + ReLU in place of its input, as the weight gradient's can,
so that a 1×1 convolution runs inside the depthwise block before it and that block's output map is never stored.
The stem's 3×3 convolution (3 or 1 input channels) takes its weight gradient from ``csrc/conv3x3.c``
(:class:`Conv3x3`).
``csrc/block.c`` runs a whole depthwise block's kernels, forward or backward, in one call (:class:`DepthwiseBlock`).

:func:`enable` marks a model's ``ConvBNAct`` blocks; in training mode each then uses a kernel where it applies —
a channels-last CPU tensor with a multiple of 8 channels; a plain ``nn.BatchNorm2d`` tracking running statistics
followed by ReLU; an ``nn.Conv2d`` of that depthwise shape outside autocast — and PyTorch's own operators
everywhere else (evaluation, GPUs, SyncBatchNorm, TF 'SAME' padding, hooked modules, ``torch.compile``).
:func:`sequential` (the model's training forward) hands each marked block's batch norm + ReLU to the depthwise
block after it, together with that block's own (:class:`DepthwiseBlock`; :class:`BatchNormReLUDepthwise` where
only the first may), and that one's to the 1×1 convolution after it: per depthwise layer, three maps fewer written
and read, and one pass fewer over its output and over the 1×1 convolution's.
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
from torch.nn.modules import module as _module_hooks  # the global module hooks

log = logging.getLogger(__name__)

SOURCES = ("bn_relu.c", "depthwise.c", "conv3x3.c", "gemm.c", "block.c")
STREAM_BYTES = 4 << 20  # maps above this are written with streaming stores (they leave the caches anyway; was 8 MiB
# until session 18: 4 MiB measured ~1% faster at 128 px on a Zen 2 with a 16 MB L3, 6 of 6 alternating pairs)
SUMS_IN_PLACE_BYTES = 8 << 20  # maps above this get batch-norm gradient sums inside the depthwise kernel (was 32
# MiB until session 18; 8 MiB measured 3.4% faster at 128 px, 1.3% at 224 on a Zen 2 with a 16 MB L3: BENCHMARKS.md)
GEMM_MIN_CHANNELS = 32  # 1×1 convolutions with this many input channels or more: both gradients by gemm.c (64
# until session 18, when the products' prefetching made 32 ~1% faster at 128 px and level at 224: BENCHMARKS.md)
STEM_MAX_CHANNELS = 4  # dense 3×3 convolutions with at most this many input channels: weight gradient by conv3x3.c
_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SHAPE = [_I64, _I64, _I64, _I64, _I64, _I64, _INT]  # N, H, W, C, OH, OW, stride
_F64 = ctypes.c_double
_BN = [_P, _P, _P]  # mean, a, b of a batch norm + ReLU read in place of its output (NULL: none)
_NO_BN = (None, None, None)  # no batch norm + ReLU read in place of a product's input
_BN_MODULE = [_P, _P, _P, _P, _F64, _F64]  # an nn.BatchNorm2d's weight, bias, running mean and var, momentum, eps
_BN_GRAD = [_P] * 7  # y, mean, a, b, p, q, r: dL/dy through the next batch norm + ReLU of y (NULL: none)
_SIGNATURES = {  # the C functions' arguments (csrc/*.c)
    "bn_relu_stats": [_P, _I64, _I64, _P, _P, _P, _INT],
    "bn_relu_apply": [_P, _P, _I64, _I64, _P, _P, _P, _INT, _INT],
    "bn_relu_grad_sums": [_P, _P, _I64, _I64, _P, _P, _P, _P, _P, _INT],
    "bn_relu_grad_apply": [_P, _P, _P, _I64, _I64, _P, _P, _P, _P, _P, _P, _INT, _INT],
    "bn_finish_stats": [_P, _P, _P, _I64, _F64, _P, _P, _P, _F64, _F64, _P, _P, _P, _P],
    "bn_grad_coefficients": [_P, _P, _P, _P, _P, _P, _I64, _F64, _P, _P, _P, _P, _P],
    "dw3x3_forward": [_P, *_BN, _P, _P, *_SHAPE, _P, _P],  # x, BN, taps, y, shape, y's shift and statistics
    "conv3x3_grad_weight": [_P, _P, _P, *[_I64] * 7, _INT],  # gy, x, gw, N, H, W, C_in, C_out, OH, OW, stride
    "gemm_at_b": [_P, _I64, _P, _I64, _P, _I64, _I64, _I64, *_BN],  # A, lda, B, ldb, C, K, M, N, BN: C[M, N] = Aᵀ·B
    "gemm_a_w": [_P, _I64, _P, _I64, _INT, _P, _I64, _I64, _I64, _P, _P, *_BN],  # A, lda, W, ldw, trans_w, C, M, K, N,
    # shift, sums, BN: C = A·op(W) and (sums not NULL) C's batch statistics
    "dw3x3_backward": [_P, _P, _P, _P, _P, *_SHAPE, *_BN, _P, *_BN_GRAD],  # gy, x, taps, gx, gw, shape, BN, its sums
    # x, its shift and sums, dw, N, H, W, C, stride, bn1 and bn2 (weight, bias, running mean, var, momentum, eps),
    # s64, s32, y, pw, C_out, out, its shift and sums, stream
    "dw_block_forward": [*[_P] * 4, *[_I64] * 4, _INT, *_BN_MODULE, *_BN_MODULE, *[_P] * 4, _I64, *[_P] * 3, _INT],
    # g_out, x, y, N, H, W, C, stride, bn1 weight, bias, bn2 weight, bias, s64, s32, pw, C_out, gx, g_dw, g_pw,
    # bn1's weight and bias gradients, bn2's, sums_in_place, stream
    "dw_block_backward": [*[_P] * 3, *[_I64] * 4, _INT, *[_P] * 7, _I64, *[_P] * 7, _INT, _INT],
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


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _ptr_or_value(v):
    return v.data_ptr() if isinstance(v, torch.Tensor) else v


def _call(fn, *args) -> None:
    if fn(*args) != 0:
        raise MemoryError(f"{fn.__name__}: no memory for the kernel's scratch buffers")


def _new_stats(c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Room for a map's batch statistics as :func:`_map_stats` returns them, for the kernel that writes the map"""
    return torch.empty(c), torch.empty(2, c, dtype=torch.float64)


def _map_stats(lib, x, stats=None):
    """(shift [C] float32, sums [2, C] float64): the sums of x - shift and (x - shift)² per channel, shift being the
    first pixel's values (against cancellation); ``stats`` when given, summed by the kernel that wrote x."""
    if stats is not None:
        return stats
    n, c, h, w = x.shape
    shift, sums = _new_stats(c)
    shift.copy_(x[0, :, 0, 0])
    bf16 = int(x.dtype == torch.bfloat16)
    _call(lib.bn_relu_stats, _ptr(x), n * h * w, c, _ptr(shift), _ptr(sums[0]), _ptr(sums[1]), bf16)
    return shift, sums


def fill_stats(x: torch.Tensor, stats=None) -> torch.Tensor:
    """x, after writing its batch statistics into ``stats`` (shift, sums) where given: for a map whose writer could not
    sum them (:func:`_map_stats`)"""
    if stats is not None:
        for got, want in zip(stats, _map_stats(load(), x)):
            got.copy_(want)
    return x


def _bn_forward(lib, x, weight, bias, running_mean, running_var, momentum: float, eps: float, stats=None):
    """Batch statistics of x (updating the running ones as ``F.batch_norm`` does) and the float32 scale/shift
    (mean32, a, b) of y = max((x - mean32)·a + b, 0); returns (mean, mean32, invstd, a, b). ``stats``: x's sums, as
    :func:`_map_stats` returns them, where the kernel that wrote x summed them."""
    n, c, h, w = x.shape
    shift, sums = _map_stats(lib, x, stats)
    return _bn_from_stats(sums, shift, n * h * w, weight, bias, running_mean, running_var, momentum, eps)


def _bn_from_stats(stats, shift, m: int, weight, bias, running_mean, running_var, momentum: float, eps: float):
    """:func:`_bn_forward` from the sums stats [2, C] of x - shift and (x - shift)² over m values per channel
    (``bn_finish_stats``: F.batch_norm's unbiased variance into the running estimate)"""
    c = stats.shape[1]
    mean_invstd = torch.empty(2, c, dtype=torch.float64)
    mean32_a = torch.empty(2, c)
    out = (mean_invstd[0], mean_invstd[1], mean32_a[0], mean32_a[1])
    with torch.no_grad():  # running_mean and running_var are updated in place, as F.batch_norm does
        args = (stats[0], stats[1], shift, c, float(m), weight, running_mean, running_var)
        _call(load().bn_finish_stats, *map(_ptr_or_value, args), float(momentum), float(eps), *map(_ptr, out))
    # the backward pass re-derives the ReLU mask from the same float32 values
    return mean_invstd[0], mean32_a[0], mean_invstd[1], mean32_a[1], bias.detach().float().contiguous()


def _bn_grad_sums(lib, g, x, mean32, a, b) -> torch.Tensor:
    """[2, C] float64: Σ m·g and Σ m·g·(x - mean32) over the map (m: the forward's ReLU mask)"""
    n, c, h, w = x.shape
    sums = torch.empty(2, c, dtype=torch.float64)
    args = (_ptr(g), _ptr(x), n * h * w, c, _ptr(mean32), _ptr(a), _ptr(b), _ptr(sums[0]), _ptr(sums[1]))
    _call(lib.bn_relu_grad_sums, *args, int(x.dtype == torch.bfloat16))
    return sums


def _bn_grad_coefficients(x, weight, mean, mean32, invstd, sums):
    """(p, q, r) of dL/dx = p·m·g + q·(x - mean32) + r for y = relu(batch_norm(x)) and g = dL/dy, from the gradient
    sums (sg, sgx) = (Σ m·g, Σ m·g·(x - mean32)) (m: the ReLU mask; :func:`_bn_grad_sums`); and dL/dγ, dL/dβ
    (``bn_grad_coefficients``)."""
    n, c, h, w = x.shape
    pqr, grad_weight, grad_bias = torch.empty(3, c), torch.empty(c), torch.empty(c)  # gradients: not views
    args = (sums[0], sums[1], mean, mean32, invstd, weight.detach(), c, float(n * h * w), *pqr, grad_weight, grad_bias)
    _call(load().bn_grad_coefficients, *map(_ptr_or_value, args))
    return (pqr[0], pqr[1], pqr[2]), grad_weight, grad_bias


def _bn_backward(lib, g, x, weight, mean, mean32, invstd, a, b, sums):
    """dL/dx, dL/dγ, dL/dβ of y = relu(batch_norm(x)) from g = dL/dy (masked or not) and the gradient sums
    (:func:`_bn_grad_coefficients`)."""
    n, c, h, w = x.shape
    m = n * h * w
    (p, q, r), grad_weight, grad_bias = _bn_grad_coefficients(x, weight, mean, mean32, invstd, sums)
    gx = torch.empty_like(x, memory_format=torch.channels_last)
    big = int(x.nbytes > STREAM_BYTES)
    bf16 = int(x.dtype == torch.bfloat16)
    args = (_ptr(g), _ptr(x), _ptr(gx), m, c, _ptr(mean32), _ptr(a), _ptr(b), _ptr(p), _ptr(q), _ptr(r), big, bf16)
    _call(lib.bn_relu_grad_apply, *args)
    return gx, grad_weight, grad_bias


def _bn_relu_apply(lib, x, mean32, a, b):
    n, c, h, w = x.shape
    y = torch.empty_like(x, memory_format=torch.channels_last)
    big, bf16 = int(x.nbytes > STREAM_BYTES), int(x.dtype == torch.bfloat16)  # bf16: computed in float32
    _call(lib.bn_relu_apply, _ptr(x), _ptr(y), n * h * w, c, _ptr(mean32), _ptr(a), _ptr(b), big, bf16)
    return y


class BatchNormReLU(torch.autograd.Function):
    """relu(batch_norm(x, training=True)) with the running statistics updated as ``nn.BatchNorm2d`` does."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum: float, eps: float, stats=None):
        lib = load()
        bn = (weight, bias, running_mean, running_var, momentum, eps)
        mean, mean32, invstd, a, b = _bn_forward(lib, x, *bn, stats)
        y = _bn_relu_apply(lib, x, mean32, a, b)
        ctx.save_for_backward(x, weight, mean, mean32, invstd, a, b)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        lib = load()
        x, weight, mean, mean32, invstd, a, b = ctx.saved_tensors
        gy = gy.to(x.dtype).contiguous(memory_format=torch.channels_last)
        sums = _bn_grad_sums(lib, gy, x, mean32, a, b)
        return *_bn_backward(lib, gy, x, weight, mean, mean32, invstd, a, b, sums), None, None, None, None, None


def _fast_input(x: torch.Tensor, dtypes: tuple[torch.dtype, ...] = (torch.float32,), channel_multiple: int = 8) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype in dtypes
        and x.dim() == 4
        and x.numel() > 0
        and x.shape[1] % channel_multiple == 0
        and x.is_contiguous(memory_format=torch.channels_last)
        and not torch.compiler.is_compiling()
    )


def _bn_module_applies(bn: nn.Module, channels: int) -> bool:
    """A training ``nn.BatchNorm2d`` of ``channels`` whose parameters and running statistics the C code may read and
    update through raw pointers: float32, on the CPU, one value per channel in contiguous memory (a mismatch is left
    to PyTorch's operators, which raise their own error)."""
    if not (
        type(bn) is nn.BatchNorm2d
        and bn.training
        and bn.affine
        and bn.track_running_stats
        and bn.momentum is not None
        and bn.num_features == channels
    ):
        return False
    tensors = (bn.weight, bn.bias, bn.running_mean, bn.running_var)
    return all(
        t.dtype == torch.float32 and t.device.type == "cpu" and t.shape == (channels,) and t.is_contiguous()
        for t in tensors
    )


def applies(bn: nn.Module, x: torch.Tensor) -> bool:
    """Whether the fused kernel can stand in for ``relu(bn(x))`` here (see the module docstring)."""
    return (
        x.dim() == 4
        and _bn_module_applies(bn, x.shape[1])
        and x.shape[0] * x.shape[2] * x.shape[3] > 1
        and _fast_input(x, (torch.float32, torch.bfloat16))  # bf16: a map from a convolution under autocast
    )


def _plain_conv(conv: nn.Module, x: torch.Tensor, channel_multiple: int = 8) -> bool:
    """A bias-free, undilated float32 ``nn.Conv2d`` (not a subclass: TF-'SAME' padding) on a kernel-ready input,
    outside autocast (which would run it in bf16)."""
    return (
        type(conv) is nn.Conv2d
        and conv.dilation == (1, 1)
        and conv.bias is None
        and conv.weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and _fast_input(x, channel_multiple=channel_multiple)
    )


def depthwise_applies(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether the depthwise kernel can stand in for ``conv(x)``: a bias-free 3×3 depthwise ``nn.Conv2d``,
    padding 1 with zeros, stride 1 or 2, no dilation."""
    return (
        _plain_conv(conv, x)
        and conv.groups == conv.in_channels == conv.out_channels
        and conv.kernel_size == (3, 3)
        and conv.padding == (1, 1)
        and conv.stride in ((1, 1), (2, 2))
        and conv.padding_mode == "zeros"
    )


def pointwise_applies(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether :class:`PointwiseConv` can stand in for ``conv(x)``: a bias-free 1×1 ``nn.Conv2d``, stride 1, of x's
    channels (else PyTorch's convolution raises its error)."""
    return (
        _plain_conv(conv, x)
        and conv.groups == 1
        and conv.weight.shape[1] == x.shape[1]
        and conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding == (0, 0)
    )


def _out_size(size: int, stride: int) -> int:
    return (size - 1) // stride + 1  # 3×3, padding 1


def conv3x3_applies(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether :class:`Conv3x3` can stand in for ``conv(x)``: the stem's shape — a bias-free dense 3×3 ``nn.Conv2d``
    with at most :data:`STEM_MAX_CHANNELS` input channels (any number: the input map needs no multiple of 8) and a
    multiple of 8 output channels, padding 1 with zeros, stride 1 or 2."""
    return (
        _plain_conv(conv, x, channel_multiple=1)
        and conv.groups == 1
        and conv.in_channels == x.shape[1] <= STEM_MAX_CHANNELS
        and conv.out_channels % 8 == 0
        and conv.kernel_size == (3, 3)
        and conv.padding == (1, 1)
        and conv.stride in ((1, 1), (2, 2))
        and conv.padding_mode == "zeros"
    )


class Conv3x3(torch.autograd.Function):
    """``F.conv2d(x, weight, stride=stride, padding=1)`` for the stem's few input channels: oneDNN's forward (and input
    gradient, when one is wanted), the weight gradient by ``conv3x3_grad_weight`` (oneDNN's backward-weights runs
    this reduction at ~16 GFLOP/s; BENCHMARKS.md, session 12)."""

    @staticmethod
    def forward(ctx, x, weight, stride: int):
        ctx.save_for_backward(x, weight)
        ctx.stride = stride
        return torch.nn.functional.conv2d(x, weight, stride=stride, padding=1)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        gy = gy.contiguous(memory_format=torch.channels_last)
        s = ctx.stride
        gx = gw = None
        if ctx.needs_input_grad[0]:
            args = (None, [s, s], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False])
            gx = torch.ops.aten.convolution_backward(gy, x, weight, *args)[0]
        if ctx.needs_input_grad[1]:
            n, ci, h, w = x.shape
            co, oh, ow = gy.shape[1:]
            sums = torch.empty(3, 3, ci, co, dtype=torch.float64)
            _call(load().conv3x3_grad_weight, _ptr(gy), _ptr(x), _ptr(sums), n, h, w, ci, co, oh, ow, s)
            gw = torch.empty_like(weight)  # the weight's own strides, as DDP's gradient buckets expect
            gw.copy_(sums.permute(3, 2, 0, 1))
        return gx, gw, None


def conv3x3(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return Conv3x3.apply(x, conv.weight, conv.stride[0])


def _depthwise_forward(lib, x, weight, stride: int, bn=_NO_BN):
    """3×3 depthwise convolution of x (or, bn = (mean32, a, b), of max((x - mean32)·a + b, 0)); returns (y, taps)
    (the kernel's batch statistics of y: ``csrc/block.c``)"""
    n, c, h, w = x.shape
    oh, ow = _out_size(h, stride), _out_size(w, stride)
    taps = weight.detach().reshape(c, 9).t().contiguous()  # [9, C]: a tap's channels are contiguous
    y = torch.empty(n, c, oh, ow, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    args = (_ptr(x), *map(_ptr, bn), _ptr(taps), _ptr(y), n, h, w, c, oh, ow, stride, None, None)
    _call(lib.dw3x3_forward, *args)
    return y, taps


def _depthwise_backward(lib, gy, x, taps, stride: int, grads=(True, True), bn=_NO_BN, sums=None):
    """(dL/dx, dL/dw) of :func:`_depthwise_forward` in one pass over gy (grads: which of the two; None for the
    other). With bn, the input is the batch norm + ReLU a of x: dL/da in place of dL/dx, and that batch norm's
    gradient sums into sums [2, C] unless sums is None. (gy read as dL/dz through the next batch norm + ReLU:
    ``csrc/block.c``.)"""
    n, c, h, w = x.shape
    gx = torch.empty_like(x, memory_format=torch.channels_last) if grads[0] else None
    gw = torch.empty(9, c, dtype=torch.float64) if grads[1] else None
    shape = (n, h, w, c, *gy.shape[2:], stride)
    args = (_ptr(gy), _ptr(x), _ptr(taps), _ptr(gx), _ptr(gw), *shape, *map(_ptr, bn), _ptr(sums), *(None,) * 7)
    _call(lib.dw3x3_backward, *args)
    return gx, None if gw is None else gw.t().contiguous().reshape(c, 1, 3, 3).to(taps.dtype)  # the weight's strides


class DepthwiseConv3x3(torch.autograd.Function):
    """``F.conv2d(x, weight, stride=stride, padding=1, groups=C)`` for 3×3 depthwise weights [C, 1, 3, 3]."""

    @staticmethod
    def forward(ctx, x, weight, stride: int):
        y, taps = _depthwise_forward(load(), x, weight, stride)
        ctx.save_for_backward(x, taps)
        ctx.stride = stride
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        lib = load()
        x, taps = ctx.saved_tensors
        gy = gy.contiguous(memory_format=torch.channels_last)
        gx, gw = _depthwise_backward(lib, gy, x, taps, ctx.stride, ctx.needs_input_grad[:2])
        return gx, gw, None


class PointwiseConv(torch.autograd.Function):
    """``F.conv2d(x, weight)`` for 1×1 weights [C_out, C_in, 1, 1], as matrix products on the channels-last [N·H·W, C]
    views (``csrc/gemm.c``): the forward y = x·Wᵀ and, from :data:`GEMM_MIN_CHANNELS` input channels up, the input
    gradient dL/dx = dL/dy·W by ``gemm_a_w``, and the weight gradient dL/dW = dL/dyᵀ·x by ``gemm_at_b``. Below that,
    oneDNN's gradients (measured faster there: BENCHMARKS.md, sessions 14, 16 and 18). A weight not stored as
    [C_out][C_in] rows takes oneDNN's forward too."""

    @staticmethod
    def forward(ctx, x, weight, stats=None):
        """``stats``: None, or (shift, sums) that the product fills with y's batch statistics as it writes y
        (:func:`_map_stats`), for the batch norm after it"""
        ctx.save_for_backward(x, weight)
        lib = load()
        if lib is None or not _rows_layout(weight):
            return fill_stats(torch.nn.functional.conv2d(x, weight), stats)
        return _pointwise_forward(lib, x, weight, stats)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        gy = gy.contiguous(memory_format=torch.channels_last)
        lib = load()
        by_gemm = lib is not None and x.shape[1] >= GEMM_MIN_CHANNELS and _rows_layout(weight)
        mask = [ctx.needs_input_grad[0] and not by_gemm, ctx.needs_input_grad[1] and not by_gemm, False]
        gx = gw = None
        if any(mask):
            args = (None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1, mask)  # bias sizes, stride, padding, ...
            gx, gw, _ = torch.ops.aten.convolution_backward(gy, x, weight, *args)
            if gw is not None and gw.stride() != weight.stride():  # oneDNN's are channels-last's
                gw = torch.empty_like(weight).copy_(gw)  # the weight's own, as DDP's gradient buckets expect
        if by_gemm:
            gx, gw = _pointwise_backward(lib, gy, x, weight, ctx.needs_input_grad[:2])
        return gx, gw, None


def _pointwise_forward(lib, x, weight, stats=None):
    """y = x·Wᵀ on the channels-last views by ``gemm_a_w``, with y's batch statistics into ``stats`` where given"""
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    y = torch.empty(n, c_out, h, w, memory_format=torch.channels_last)
    shift, sums = stats or (None, None)
    args = (_ptr(x), c_in, _ptr(weight), c_in, 1, _ptr(y), n * h * w, c_in, c_out, _ptr(shift), _ptr(sums))
    _call(lib.gemm_a_w, *args, *_NO_BN)
    return y


def _pointwise_backward(lib, gy, x, weight, needs=(True, True)):
    """(dL/dx, dL/dW) of :func:`_pointwise_forward` (each None unless ``needs`` it): ``gemm_a_w`` and ``gemm_at_b``"""
    n, c_in, h, w = x.shape
    c_out = weight.shape[0]
    gx = gw = None
    if needs[0]:
        gx = torch.empty_like(x, memory_format=torch.channels_last)
        args = (_ptr(gy), c_out, _ptr(weight), c_in, 0, _ptr(gx), n * h * w, c_out, c_in, None, None, *_NO_BN)
        _call(lib.gemm_a_w, *args)
    if needs[1]:
        gw = torch.empty_like(weight)  # the weight's own strides, as DDP's gradient buckets expect
        _call(lib.gemm_at_b, _ptr(gy), c_out, _ptr(x), c_in, _ptr(gw), n * h * w, c_out, c_in, *_NO_BN)
    return gx, gw


def _rows_layout(weight: torch.Tensor) -> bool:
    """Whether a 1×1 weight [C_out, C_in, 1, 1] is [C_out][C_in] rows in memory (contiguous or channels-last)."""
    return weight.stride()[:2] == (weight.shape[1], 1)


def _depthwise_backward_through_bn(lib, gy, x, taps, stride: int, need_gw: bool, mean32, a, b):
    """(dL/da, dL/dw, the batch norm's gradient sums) for a depthwise convolution of a = relu(batch_norm(x))"""
    bn = (mean32, a, b)
    if x.nbytes > SUMS_IN_PLACE_BYTES:  # the batch norm's gradient sums from each row of dL/da as it is written
        sums = torch.empty(2, x.shape[1], dtype=torch.float64)
        ga, gw = _depthwise_backward(lib, gy, x, taps, stride, (True, need_gw), bn, sums)
    else:  # a map the caches hold: a separate pass is faster
        ga, gw = _depthwise_backward(lib, gy, x, taps, stride, (True, need_gw), bn, None)
        sums = _bn_grad_sums(lib, ga, x, mean32, a, b)
    return ga, gw, sums


class BatchNormReLUDepthwise(torch.autograd.Function):
    """``depthwise(relu(batch_norm(x)))``: one block's batch norm + ReLU read by the next block's depthwise
    convolution as it reads its input, so that the map between them is never stored (forward or backward)."""

    @staticmethod
    def forward(
        ctx,
        x,
        bn_weight,
        bn_bias,
        running_mean,
        running_var,
        momentum: float,
        eps: float,
        weight,
        stride: int,
        stats=None,
    ):
        lib = load()
        bn = (bn_weight, bn_bias, running_mean, running_var, momentum, eps)
        mean, mean32, invstd, a, b = _bn_forward(lib, x, *bn, stats)
        y, taps = _depthwise_forward(lib, x, weight, stride, (mean32, a, b))
        ctx.save_for_backward(x, bn_weight, mean, mean32, invstd, a, b, taps)
        ctx.stride = stride
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        lib = load()
        x, bn_weight, mean, mean32, invstd, a, b, taps = ctx.saved_tensors
        gy = gy.contiguous(memory_format=torch.channels_last)
        need_gw = ctx.needs_input_grad[7]
        ga, gw, sums = _depthwise_backward_through_bn(lib, gy, x, taps, ctx.stride, need_gw, mean32, a, b)
        gx, g_bn_weight, g_bn_bias = _bn_backward(lib, ga, x, bn_weight, mean, mean32, invstd, a, b, sums)
        return gx, g_bn_weight, g_bn_bias, None, None, None, None, gw, None, None


class DepthwiseBlock(torch.autograd.Function):
    """``relu(bn2(depthwise(relu(bn1(x)))))``: :class:`BatchNormReLUDepthwise` followed by the depthwise block's own
    batch norm + ReLU, whose batch statistics the depthwise kernel sums from each output row as it writes it, and
    whose backward the depthwise gradient kernels compute row by row as they read dL/dy (never stored).

    With ``pw_weight``, the 1×1 convolution after it too: ``conv1x1(relu(bn2(...)))``, whose matrix products read
    ``relu(bn2(y))`` from the depthwise output y as they go (forward and weight gradient), so that map is never
    stored; its batch statistics into ``pw_stats`` (:func:`_map_stats`).

    Each direction is one call into ``csrc/block.c``, which runs the kernels in turn and the per-channel steps
    between them: in the step, a dozen calls from Python per block cost ~3% of it at 128 px (BENCHMARKS.md,
    session 18)."""

    @staticmethod
    def forward(ctx, x, bn1_weight, bn1_bias, rm1, rv1, momentum1: float, eps1: float, weight, stride: int,
                bn2_weight, bn2_bias, rm2, rv2, momentum2: float, eps2: float, x_stats=None, pw_weight=None,
                pw_stats=None):  # fmt: skip
        lib = load()
        n, c, h, w = x.shape
        x_shift, x_sums = _map_stats(lib, x, x_stats)
        oh, ow = _out_size(h, stride), _out_size(w, stride)
        y = torch.empty(n, c, oh, ow, memory_format=torch.channels_last)
        s64, s32 = torch.empty(6, c, dtype=torch.float64), torch.empty(14, c)  # per-channel state (csrc/block.c)
        c_out = c if pw_weight is None else pw_weight.shape[0]
        out = torch.empty(n, c_out, oh, ow, memory_format=torch.channels_last)
        out_shift, out_sums = pw_stats or (None, None)
        dw = weight.detach().contiguous()  # [C][9]
        bn1 = (bn1_weight, bn1_bias, rm1, rv1, momentum1, eps1)
        bn2 = (bn2_weight, bn2_bias, rm2, rv2, momentum2, eps2)
        # the kernel moves the running statistics in place, as F.batch_norm moves them
        args = (x, x_shift, x_sums, dw, n, h, w, c, stride, *bn1, *bn2, s64, s32, y, pw_weight, c_out, out)
        stream = int(pw_weight is None and out.nbytes > STREAM_BYTES)
        _call(lib.dw_block_forward, *map(_ptr_or_value, args), _ptr(out_shift), _ptr(out_sums), stream)
        ctx.save_for_backward(x, y, s64, s32, bn1_weight, bn1_bias, bn2_weight, bn2_bias, pw_weight)
        ctx.stride = stride
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out):
        lib = load()
        x, y, s64, s32, bn1_weight, bn1_bias, bn2_weight, bn2_bias, pw = ctx.saved_tensors
        n, c, h, w = x.shape
        g_out = g_out.contiguous(memory_format=torch.channels_last)
        gx = torch.empty_like(x, memory_format=torch.channels_last)
        g_dw = torch.empty(c, 1, 3, 3) if ctx.needs_input_grad[7] else None
        g_pw = torch.empty_like(pw) if pw is not None and ctx.needs_input_grad[16] else None  # the weight's strides
        g_bn = [torch.empty(c) for _ in range(4)]  # bn1 weight, bias, bn2 weight, bias: gradients, not views
        c_out = g_out.shape[1]
        args = (g_out, x, y, n, h, w, c, ctx.stride, bn1_weight, bn1_bias, bn2_weight, bn2_bias, s64, s32, pw, c_out)
        flags = int(x.nbytes > SUMS_IN_PLACE_BYTES), int(x.nbytes > STREAM_BYTES)
        _call(lib.dw_block_backward, *map(_ptr_or_value, args), *map(_ptr, (gx, g_dw, g_pw, *g_bn)), *flags)
        none4 = (None,) * 4
        return gx, g_bn[0], g_bn[1], *none4, g_dw, None, g_bn[2], g_bn[3], *none4, None, g_pw, None


def _count_batch(bn: nn.BatchNorm2d) -> None:
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)


def batch_norm_relu(bn: nn.BatchNorm2d, x: torch.Tensor, stats=None) -> torch.Tensor:
    """``relu(bn(x))``; ``stats``: x's batch statistics, where the kernel that wrote x summed them"""
    _count_batch(bn)
    return BatchNormReLU.apply(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.momentum, bn.eps, stats)


def depthwise(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return DepthwiseConv3x3.apply(x, conv.weight, conv.stride[0])


def pointwise(conv: nn.Conv2d, x: torch.Tensor, stats=None) -> torch.Tensor:
    return PointwiseConv.apply(x, conv.weight, stats)


def batch_norm_relu_depthwise(bn: nn.BatchNorm2d, conv: nn.Conv2d, x: torch.Tensor, stats=None) -> torch.Tensor:
    """``conv(relu(bn(x)))`` without storing ``relu(bn(x))``"""
    _count_batch(bn)
    args = (x, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.momentum, bn.eps, conv.weight, conv.stride[0])
    return BatchNormReLUDepthwise.apply(*args, stats)


def depthwise_block(
    bn1: nn.BatchNorm2d, conv: nn.Conv2d, bn2: nn.BatchNorm2d, x: torch.Tensor, stats=None, pointwise=None
) -> torch.Tensor:
    """``relu(bn2(conv(relu(bn1(x)))))`` without storing ``relu(bn1(x))`` or ``dL/dconv(...)``; with ``pointwise`` =
    (a 1×1 ``nn.Conv2d``, (shift, sums) for its output's batch statistics), that convolution of it, without storing
    ``relu(bn2(...))``"""
    _count_batch(bn1)
    _count_batch(bn2)
    args = (x, bn1.weight, bn1.bias, bn1.running_mean, bn1.running_var, bn1.momentum, bn1.eps, conv.weight)
    args2 = (bn2.weight, bn2.bias, bn2.running_mean, bn2.running_var, bn2.momentum, bn2.eps)
    pw_weight, pw_stats = (pointwise[0].weight, pointwise[1]) if pointwise else (None, None)
    return DepthwiseBlock.apply(*args, conv.stride[0], *args2, stats, pw_weight, pw_stats)


def _hooked(module: nn.Module) -> bool:
    """Whether hooks would see this module's call (its own, or global ones): a kernel would bypass them (pruning
    masks, profilers, ...), so hooked modules keep PyTorch's path."""
    m = _module_hooks
    own = module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
    return bool(
        own
        or m._global_forward_hooks
        or m._global_forward_pre_hooks
        or m._global_backward_hooks
        or m._global_backward_pre_hooks
    )


def _conv(block: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple | None]:
    """(``block.conv(x)``, its batch statistics where the 1×1 product summed them as it wrote it, else None)"""
    if _hooked(block.conv):
        return block.conv(x), None
    if depthwise_applies(block.conv, x):
        return depthwise(block.conv, x), None
    if pointwise_applies(block.conv, x):
        stats = _new_stats(block.conv.out_channels)
        return pointwise(block.conv, x, stats), stats
    if conv3x3_applies(block.conv, x):
        return conv3x3(block.conv, x), None
    return block.conv(x), None


def _unhooked_relu(block: nn.Module) -> bool:
    return isinstance(block.act, nn.ReLU) and not (_hooked(block.bn) or _hooked(block.act))


def _bn_relu_fusable(block: nn.Module, y: torch.Tensor) -> bool:
    return _unhooked_relu(block) and applies(block.bn, y)


def _depthwise_bn_relu_fusable(block: nn.Module, x: torch.Tensor) -> bool:
    """Whether the kernel can run this depthwise block's batch norm + ReLU on the output of its convolution of x (a
    map the depthwise kernel writes: float32, channels-last, x's channels)"""
    n, _, h, w = x.shape
    stride = block.conv.stride[0]
    return (
        _unhooked_relu(block)
        and _bn_module_applies(block.bn, x.shape[1])
        and n * _out_size(h, stride) * _out_size(w, stride) > 1
    )


def _bn_act(block: nn.Module, y: torch.Tensor, stats=None) -> torch.Tensor:
    return batch_norm_relu(block.bn, y, stats) if _bn_relu_fusable(block, y) else block.act(block.bn(y))


def conv_bn_act(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A ``ConvBNAct`` block's training forward, each part on a kernel where one applies."""
    return _bn_act(block, *_conv(block, x))


def _fused_block(m: nn.Module | None) -> bool:
    from .layers import ConvBNAct

    return type(m) is ConvBNAct and m.fused_training and m.training and not _hooked(m)  # a subclass keeps its forward


def _takes_depthwise_output(block: nn.Module | None, y: torch.Tensor) -> bool:
    """Whether ``block``'s 1×1 convolution may run inside the :class:`DepthwiseBlock` before it, reading its batch
    norm + ReLU on the fly: on the matrix products (from :data:`GEMM_MIN_CHANNELS` input channels, as
    :class:`PointwiseConv`'s gradients), of a map like y (the depthwise convolution's input: same channels, dtype,
    memory format)"""
    return (
        _fused_block(block)
        and not _hooked(block.conv)
        and pointwise_applies(block.conv, y)
        and block.conv.in_channels >= GEMM_MIN_CHANNELS
        and _rows_layout(block.conv.weight)
    )


def sequential(blocks: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``blocks(x)``, except that in training a kernel-enabled ``ConvBNAct`` followed by a depthwise one hands its
    batch norm + ReLU to that block's depthwise kernel, which reads it in place of the map it would have stored; and
    that block's own batch norm + ReLU to the 1×1 convolution after it, whose matrix products read it likewise."""
    mods = list(blocks)
    if _hooked(blocks) or not any(map(_fused_block, mods)):
        return blocks(x)
    i, y, stats = 0, None, None  # y: block i's convolution output, where the previous step computed it
    while i < len(mods):
        block, nxt = mods[i], mods[i + 1] if i + 1 < len(mods) else None
        if not _fused_block(block):
            x, i = block(x), i + 1
            continue
        if y is None:
            y, stats = _conv(block, x)
        if (
            _fused_block(nxt)
            and _bn_relu_fusable(block, y)
            and depthwise_applies(nxt.conv, y)
            and not _hooked(nxt.conv)
        ):
            if _depthwise_bn_relu_fusable(nxt, y):
                after = mods[i + 2] if i + 2 < len(mods) else None
                if _takes_depthwise_output(after, y):
                    pw_stats = _new_stats(after.conv.out_channels)
                    y = depthwise_block(block.bn, nxt.conv, nxt.bn, y, stats, (after.conv, pw_stats))
                    stats, i = pw_stats, i + 2  # block i + 2's convolution output
                    continue
                x = depthwise_block(block.bn, nxt.conv, nxt.bn, y, stats)
            else:
                x = _bn_act(nxt, batch_norm_relu_depthwise(block.bn, nxt.conv, y, stats))
            y, i = None, i + 2
            continue
        x, y, i = _bn_act(block, y, stats), None, i + 1
    return x


def enable(model: nn.Module, on: bool = True) -> int:
    """Let ``model``'s conv-BN-ReLU blocks use the kernels in training; returns how many may (0: unavailable)."""
    from .layers import ConvBNAct

    blocks = [m for m in model.modules() if isinstance(m, ConvBNAct)]
    on = on and bool(blocks) and load() is not None
    for m in blocks:
        m.fused_training = on
    return len(blocks) if on else 0
