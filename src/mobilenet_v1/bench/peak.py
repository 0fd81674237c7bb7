"""The machine's GEMM peak per precision, so achieved GFLOP/s can be read as a share of what is possible.

A large square matmul is the most favourable workload a CPU has; its rate bounds what any convolution
(which these libraries lower to similar micro-kernels) can reach on the same threads.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .results import Peak


def _best_rate(fn, flops: float, reps: int) -> float:
    fn()  # warm-up: packs buffers, spins up the thread pool
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def torch_peak(dtype: torch.dtype, n: int = 2048, reps: int = 8) -> float:
    g = torch.Generator().manual_seed(0)
    if dtype == torch.int8:
        a = torch.randint(-100, 100, (n, n), dtype=torch.int8, generator=g)
        b = torch.randint(-100, 100, (n, n), dtype=torch.int8, generator=g)
        return _best_rate(lambda: torch._int_mm(a, b), 2 * n**3, reps)
    a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)
    return _best_rate(lambda: a @ b, 2 * n**3, reps)


def ort_peak(precision: str, threads: int, n: int = 2048, reps: int = 8) -> float | None:
    """ONNX Runtime's own GEMM: fp32 ``MatMul`` (MLAS) or u8×s8 ``MatMulInteger`` (its VNNI kernel).

    MKL's sgemm behind ``torch.mm`` takes a generic path on AMD CPUs and reaches about half of what
    MLAS or oneDNN do here; the peak is the best library's rate, not the first one tried.
    """
    try:
        import onnxruntime as ort  # noqa: PLC0415 - optional
        from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    if precision == "int8":
        op, a_type, y_type = "MatMulInteger", TensorProto.UINT8, TensorProto.INT32
        b = rng.integers(-100, 100, (n, n)).astype(np.int8)
        a = rng.integers(0, 255, (n, n)).astype(np.uint8)
    else:
        op, a_type, y_type = "MatMul", TensorProto.FLOAT, TensorProto.FLOAT
        b = rng.standard_normal((n, n)).astype(np.float32)
        a = rng.standard_normal((n, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node(op, ["A", "B"], ["Y"])], "peak",
        [helper.make_tensor_value_info("A", a_type, [n, n])],
        [helper.make_tensor_value_info("Y", y_type, [n, n])], [numpy_helper.from_array(b, "B")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return _best_rate(lambda: session.run(None, {"A": a}), 2 * n**3, reps)


def measure_peaks(threads: int = 2, n: int = 2048) -> list[Peak]:
    """fp32, bf16 (where native) and int8 GEMM rates on ``threads`` threads (best of a few runs)."""
    from ..deploy.inference import bf16_supported, vnni_supported  # noqa: PLC0415

    torch.set_num_threads(threads)
    fp32 = [(torch_peak(torch.float32, n), f"torch.mm fp32 {n}×{n}")]
    # Without VNNI torch._int_mm falls back to a reference kernel (1.2 GOP/s on an AVX2-only CPU: 133 s
    # for one 2048³ measurement), so it is only a candidate where VNNI exists, and a small one otherwise.
    int8 = [(torch_peak(torch.int8, n), f"torch._int_mm s8×s8 {n}×{n}")] if vnni_supported() else []
    for precision, found, how in (("fp32", fp32, "MatMul fp32"), ("int8", int8, "MatMulInteger u8×s8")):
        rate = ort_peak(precision, threads, n)
        if rate is not None:
            found.append((rate, f"onnxruntime {how} {n}×{n}"))
    if not int8:
        int8.append((torch_peak(torch.int8, 256, reps=2), "torch._int_mm s8×s8 256×256 (no VNNI, no onnxruntime)"))
    peaks = [Peak("fp32", *max(fp32))]
    if bf16_supported():
        peaks.append(Peak("bf16", torch_peak(torch.bfloat16, n), f"torch.mm bf16 {n}×{n}"))
    peaks.append(Peak("int8", *max(int8)))
    return peaks
