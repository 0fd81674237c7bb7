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


def ort_int8_peak(threads: int, n: int = 2048, reps: int = 8) -> float | None:
    """u8×s8 ``MatMulInteger`` in ONNX Runtime: the VNNI kernel its int8 convolutions use."""
    try:
        import onnxruntime as ort  # noqa: PLC0415 - optional
        from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-100, 100, (n, n)).astype(np.int8), "B")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "peak",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [n, n])], [weight],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    a = rng.integers(0, 255, (n, n)).astype(np.uint8)
    return _best_rate(lambda: session.run(None, {"A": a}), 2 * n**3, reps)


def measure_peaks(threads: int = 2, n: int = 2048) -> list[Peak]:
    """fp32, bf16 (where native) and int8 GEMM rates on ``threads`` threads (best of a few runs)."""
    from ..deploy.inference import bf16_supported  # noqa: PLC0415

    torch.set_num_threads(threads)
    peaks = [Peak("fp32", torch_peak(torch.float32, n), f"torch.mm fp32 {n}×{n}")]
    if bf16_supported():
        peaks.append(Peak("bf16", torch_peak(torch.bfloat16, n), f"torch.mm bf16 {n}×{n}"))
    int8 = [(torch_peak(torch.int8, n), f"torch._int_mm s8×s8 {n}×{n}")]
    ort_rate = ort_int8_peak(threads, n)
    if ort_rate is not None:
        int8.append((ort_rate, f"onnxruntime MatMulInteger u8×s8 {n}×{n}"))
    rate, how = max(int8)
    peaks.append(Peak("int8", rate, how))
    return peaks
