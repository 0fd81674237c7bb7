"""Compiling and loading the kernels' C sources (``csrc/``), and calling into them.

The sources are compiled with the system's C compiler (``$CC``, else ``cc``; ``-O3 -march=native -fopenmp``)
into the cache directory, one build per source, compiler and CPU. Only a library this user built is loaded: the
cache and its ``kernels/`` directory (made with mode 0700) must belong to this user and be writable by no one else,
so must every directory above them (a sticky one such as /tmp excepted), and the library must belong to this user
and have the SHA-256 recorded when it was built. Where the cache fails that, the kernels are built in a private
temporary directory for this process, with a warning. A library that does not load, or lacks a function, is
rebuilt. Where there is no compiler, no x86-64 CPU, or the build fails, :func:`load` returns None and training runs
on PyTorch's operators. ``MOBILENET_V1_FUSED=0`` turns the kernels off.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import warnings
from importlib import resources
from pathlib import Path

import torch

from ..files import cache_dir, sha256_of

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


_FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC"]


def _sources() -> list[bytes]:
    return [resources.files("mobilenet_v1").joinpath("csrc", name).read_bytes() for name in SOURCES]


def library_path(cc: str | None = None) -> Path | None:
    """Where :func:`load` keeps the library built with ``cc`` (default ``$CC``, else ``cc``) from these sources for
    this CPU, in the cache directory; None where there is no compiler."""
    cc = cc or _compiler()
    if cc is None:
        return None
    key = hashlib.sha256(b"\0".join([*_sources(), cc.encode(), " ".join(_FLAGS).encode(), _cpu_id().encode()]))
    return cache_dir() / "kernels" / f"train-{key.hexdigest()[:16]}.so"


def _digest_path(lib_path: Path) -> Path:
    return lib_path.with_name(lib_path.name + ".sha256")


def _dir_problem(path: Path) -> str | None:
    """Why a file in the directory ``path`` (symlinks resolved) could be another user's, or None.

    Whoever can write to a directory, or to one above it, can swap what is in it. So ``path`` and every directory
    above it must belong to this user or root and be writable by no one else; above ``path`` a sticky directory
    (/tmp) may be: there others cannot rename or delete what is ours."""
    for d in (path, *path.parents):
        st = os.lstat(d)  # a symlink here (after realpath) was put there since: not followed
        if not stat.S_ISDIR(st.st_mode):
            return f"{d} is not a directory"
        if st.st_uid not in (os.geteuid(), 0):
            return f"{d} belongs to another user (uid {st.st_uid})"
        if st.st_mode & 0o022 and (d == path or not st.st_mode & stat.S_ISVTX):
            return f"{d} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _cache_problem(kernels: Path) -> str | None:
    """Make the cache's ``kernels/`` directory (mode 0700) and say why it cannot be trusted (see _dir_problem)."""
    if os.name != "posix":
        return "file owners cannot be checked on this system"
    try:
        kernels.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if problem := _dir_problem(kernels.parent):  # checked first: nothing is written into a cache others can
            return problem
        kernels.mkdir(mode=0o700, exist_ok=True)
        return _dir_problem(kernels)
    except OSError as e:
        return str(e)


def _open(path: Path) -> ctypes.CDLL:
    """Load the library and declare its functions; OSError where it cannot be loaded or lacks one."""
    lib = ctypes.CDLL(str(path))
    for name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, name, None)
        if fn is None:
            raise OSError(f"{path} has no function {name}")
        fn.argtypes, fn.restype = argtypes, _INT  # returns 0, or 1: out of memory (see _call)
    return lib


def _cached(lib_path: Path) -> ctypes.CDLL | None:
    """The library an earlier build left at ``lib_path`` (in a directory only we can write), if it is this user's,
    is what was built (its SHA-256 as recorded beside it) and has every function; else None, and whatever is there
    is removed to be rebuilt."""
    try:
        st = os.lstat(lib_path)  # a symlink is not followed: it is not a regular file
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        # only another user (while the directory was open to them), or root, leaves such a file here
        owner = f"a {stat.filemode(st.st_mode)} file of uid {st.st_uid}"
        warnings.warn(f"fused training kernels: not loading {lib_path}, {owner}; rebuilding it", stacklevel=3)
    else:
        # the record needs no owner check: it can only vouch for a file of ours that matches it
        try:
            if sha256_of(lib_path) != _digest_path(lib_path).read_text().strip():
                raise OSError("its SHA-256 is not the one recorded when it was built")
            return _open(lib_path)
        except OSError as e:
            log.info("fused training kernels: %s: %s; rebuilding it", lib_path, e)
    for path in (lib_path, _digest_path(lib_path)):
        with contextlib.suppress(OSError):  # a directory of root's: the build that follows fails, logged
            path.unlink(missing_ok=True)
    return None


def _build(cc: str, lib_path: Path | None) -> ctypes.CDLL | None:
    """Compile the sources in a new private directory (mkdtemp: mode 0700, a name no one can guess, so no one can
    swap a source or the output) and load the library from there; None where that fails (logged).

    With ``lib_path``, the directory is made beside it (one filesystem: the renames are atomic) and the library and
    its SHA-256 are then moved there. Without, it is for this process only, and deleted once loaded (a loaded library
    stays mapped)."""
    work = None
    try:
        if lib_path is None:
            work = Path(tempfile.mkdtemp(prefix="mobilenet-v1-kernels-"))
        else:
            work = Path(tempfile.mkdtemp(prefix=".build-", dir=lib_path.parent))
        if lib_path is None and (problem := _dir_problem(work)):
            raise OSError(f"no private directory either: {problem}")
        c_files = [work / name for name in SOURCES]
        for path, src in zip(c_files, _sources()):
            path.write_bytes(src)
        built = work / "train.so"
        subprocess.run([cc, *_FLAGS, *map(str, c_files), "-o", str(built)], check=True, capture_output=True)
        # loaded from here, not from lib_path: dlopen of a path it already holds (a predecessor that lacked a
        # function) returns that old library, whatever the file there is now
        lib = _open(built)
        if lib_path is not None:
            os.chmod(built, 0o755)  # not group-writable under a umask of 002, which the next load() would refuse
            _digest_path(built).write_text(sha256_of(built) + "\n")
            os.replace(_digest_path(built), _digest_path(lib_path))  # two builds racing: a mismatch, a rebuild
            os.replace(built, lib_path)
        return lib
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", b"") or b""
        first = detail.decode(errors="replace").strip().splitlines()[:1]
        log.info("fused training kernels: build failed (%s); training uses PyTorch's operators", first or e)
        return None
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled kernel library, building it on first use; None where it cannot be had (logged once)."""
    if os.environ.get("MOBILENET_V1_FUSED", "1") == "0" or platform.machine() not in ("x86_64", "AMD64"):
        return None
    cc = _compiler()
    if cc is None:
        log.info("fused training kernels: no C compiler found; training uses PyTorch's operators")
        return None
    lib_path = library_path(cc)
    kernels = Path(os.path.realpath(lib_path.parent))  # what is checked is the path that is loaded: no symlinks
    if problem := _cache_problem(kernels):
        warnings.warn(
            f"fused training kernels: not using the cache: {problem}; building them privately for this process",
            stacklevel=2,
        )
        return _build(cc, None)
    lib_path = kernels / lib_path.name
    lib = _cached(lib_path)
    return lib if lib is not None else _build(cc, lib_path)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _ptr_or_value(v):
    return v.data_ptr() if isinstance(v, torch.Tensor) else v


def _call(fn, *args) -> None:
    if fn(*args) != 0:
        raise MemoryError(f"{fn.__name__}: no memory for the kernel's scratch buffers")
