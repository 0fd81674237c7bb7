"""Compiling and loading the kernels' C sources (``csrc/``), and calling into them.

The sources are compiled with the system's C compiler (``$CC``, else ``cc``; ``-O3 -march=native -fopenmp``)
into the cache directory, one build per source, compiler and CPU, written atomically. Where there is no compiler,
no x86-64 CPU, or the build fails, :func:`load` returns None and training runs on PyTorch's operators.
``MOBILENET_V1_FUSED=0`` turns the kernels off.
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

from ..files import atomic_path, cache_dir

log = logging.getLogger(__name__)

SOURCES = ("bn_relu.c", "depthwise.c", "conv3x3.c", "gemm.c", "block.c")
_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SHAPE = [_I64, _I64, _I64, _I64, _I64, _I64, _INT]  # N, H, W, C, OH, OW, stride
_F64 = ctypes.c_double
_BN = [_P, _P, _P]  # mean, a, b of a batch norm + ReLU read in place of its output (NULL: none)
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
