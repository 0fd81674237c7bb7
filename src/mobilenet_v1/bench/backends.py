"""Inference backends, each built inside its own worker process: ours here, others through :func:`register`.

A backend turns a prepared :class:`Job` (model config or directory, exported ONNX files) into a
zero-argument callable that runs one batch; everything outside that call (input creation, layout,
session set-up, compilation) happens once, during warm-up.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

import numpy as np

from ..checkpoint import from_pretrained
from ..deploy.fold import fold_bn
from ..deploy.inference import optimize_for_inference
from ..deploy.onnx_export import ort_session
from ..model import MobileNetV1, ModelConfig


@dataclass(frozen=True)
class Backend:
    name: str
    precision: str
    needs: tuple[str, ...] = ()  # artifacts the runner exports first: onnx, int8, int8_uint8
    requires: tuple[str, ...] = ()  # importable modules
    peer: bool = False
    note: str = ""
    default: bool = True  # part of `mobilenet-v1 bench`'s default set (candidates are asked for by name)
    builder: str | None = None  # "module:function" building it, for backends defined outside this package
    batches: tuple[int, ...] | None = None  # the only batch sizes it runs (None: any)

    def runs(self, batch: int) -> bool:
        return self.batches is None or batch in self.batches


BACKENDS = {b.name: b for b in [
    Backend("eager", "fp32", note="our MobileNetV1, eval, NCHW, inference_mode"),
    Backend("inference", "fp32", note="BN folded, channels_last, oneDNN conv+bias+ReLU fused, weights pre-packed"),
    Backend("inference-unfused", "fp32", note="BN folded, channels_last, inference_mode (no fusion)", default=False),
    Backend("inference-untuned", "fp32", note="the fused path without the malloc tuning (keep_memory=False)",
            default=False),
    Backend("inference-compile", "fp32", note="+ torch.compile (inductor, freezing)"),
    Backend("inference-bf16", "bf16", note="the same fused path in bf16 weights and activations"),
    Backend("inference-bf16-compile", "bf16", note="+ torch.compile (inductor, freezing)"),
    Backend("mkldnn", "fp32", note="BN folded, torch.utils.mkldnn: prepacked oneDNN weights, blocked layout",
            default=False),
    Backend("mkldnn-bf16", "bf16", note="the same in bf16", default=False),
    Backend("ort-fp32", "fp32", ("onnx",), ("onnxruntime",), note="our ONNX export, ORT_ENABLE_ALL"),
    Backend("ort-int8", "int8", ("int8",), ("onnxruntime",), note="our static QDQ int8 (per-channel) in ORT"),
    Backend("ort-int8-uint8", "int8", ("int8_uint8",), ("onnxruntime",), default=False,
            note="the same with uint8 weights (ORT's u8×u8 kernels: full 8-bit weights, no saturation)"),
    Backend("openvino-fp32", "fp32", ("onnx",), ("openvino",), note="our ONNX, INFERENCE_PRECISION_HINT=f32"),
    Backend("openvino-bf16", "bf16", ("onnx",), ("openvino",), note="our ONNX, INFERENCE_PRECISION_HINT=bf16"),
    Backend("openvino-int8", "int8", ("int8",), ("openvino",), note="our QDQ int8 ONNX, float parts f32"),
    Backend("executorch-fp32", "fp32", ("pte",), ("executorch",), batches=(1,), default=False,
            note="our .pte export in ExecuTorch's runtime, XNNPACK delegate (a phone's path), batch 1"),
    Backend("executorch-int8", "int8", ("pte_int8",), ("executorch",), batches=(1,), default=False,
            note="our PT2E int8 .pte (XNNPACK quantizer, per-channel) in ExecuTorch's runtime, batch 1"),
]}  # fmt: skip

DEFAULT_BACKENDS = [n for n, b in BACKENDS.items() if not b.peer and b.default]


def register(backend: Backend) -> None:
    """Add a backend defined elsewhere (its ``builder``, importable in the worker processes, builds it): the
    peers that ``benchmarks/inference_peers.py`` times beside ours are registered so."""
    if backend.builder is None or ":" not in backend.builder:
        raise ValueError(f"backend {backend.name!r} needs builder='module:function'")
    BACKENDS[backend.name] = backend


@dataclass
class Job:
    """What a worker needs to build one backend for one model (picklable: crosses a process boundary)."""
    backend: str
    config: dict  # ModelConfig.to_dict()
    model_dir: str | None = None
    files: dict[str, str] = field(default_factory=dict)  # artifact name -> path
    builder: str | None = None  # Backend.builder: a registered backend is built by it in the worker


def check_backends(names: list[str]) -> None:
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend {unknown[0]!r}; known backends: {', '.join(BACKENDS)}")


def missing_module(backend: str) -> str | None:
    """The first module this backend needs that is not installed (None if all are)."""
    import importlib.util  # noqa: PLC0415

    return next((m for m in BACKENDS[backend].requires if importlib.util.find_spec(m) is None), None)


def _our_model(job: Job):
    if job.model_dir:
        return from_pretrained(job.model_dir)
    return MobileNetV1(config=ModelConfig.from_dict(job.config)).eval()


def _torch_runner(module, x):
    import torch  # noqa: PLC0415

    def run():
        with torch.inference_mode():
            return module(x)

    return run


def _mkldnn_runner(model, x, dtype):
    """oneDNN's own tensor layout end to end: weights reordered once, activations never leave blocked form."""
    import torch  # noqa: PLC0415
    from torch.utils.mkldnn import to_mkldnn  # noqa: PLC0415

    module = to_mkldnn(fold_bn(model).eval(), dtype)

    def run():
        with torch.inference_mode():
            return module(x.to_mkldnn(dtype)).to_dense(torch.float32)

    return run


def _openvino_runner(path: str, hint: str, threads: int, x: np.ndarray):
    import openvino as ov  # noqa: PLC0415

    # The precision hint is always explicit: on CPUs with AVX-512 BF16 OpenVINO otherwise runs fp32
    # models in bf16. LATENCY: one stream using every thread, for both batch sizes.
    compiled = ov.Core().compile_model(
        path, "CPU",
        {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"},
    )  # fmt: skip
    request = compiled.create_infer_request()
    return lambda: request.infer({0: x})


def _executorch_runner(path: str, threads: int, x):
    from ..deploy.mobile import runtime_method, set_threads  # noqa: PLC0415

    set_threads(threads)
    method = runtime_method(path)
    return lambda: method.execute([x])


def build(job: Job, batch: int, threads: int):  # noqa: PLR0911 - one return per backend family
    """A callable running one batch of ``batch`` images on ``job.backend`` (a fixed random input)."""
    import torch  # noqa: PLC0415

    torch.set_num_threads(threads)
    name, cfg = job.backend, job.config
    shape = (batch, cfg.get("in_chans", 3), cfg["resolution"], cfg["resolution"])
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(batch))
    if job.builder:
        module, function = job.builder.split(":")
        return getattr(importlib.import_module(module), function)(job, x, threads)
    if name == "eager":
        return _torch_runner(_our_model(job), x)
    if name.startswith("inference"):
        precision = "bf16" if "bf16" in name else "fp32"
        fast = optimize_for_inference(
            _our_model(job), precision=precision, compile=name.endswith("compile"),
            fuse=not name.endswith("unfused"), keep_memory=not name.endswith("untuned"),
        )  # fmt: skip
        return lambda: fast(x)
    if name.startswith("mkldnn"):
        return _mkldnn_runner(_our_model(job), x, torch.bfloat16 if name.endswith("bf16") else torch.float32)
    key = next(iter(BACKENDS[name].needs))
    path = job.files[key]
    if name.startswith("executorch-"):
        return _executorch_runner(path, threads, x)
    if name.startswith("ort-"):
        session, feed = ort_session(path, threads), {"input": x.numpy()}
        input_name = session.get_inputs()[0].name
        return lambda: session.run(None, {input_name: feed["input"]})
    hint = "bf16" if name.endswith("bf16") else "f32"
    return _openvino_runner(path, hint, threads, x.numpy())
