"""Inference backends, ours and the peers', each built inside its own worker process.

A backend turns a prepared :class:`Job` (model config or directory, exported ONNX files) into a
zero-argument callable that runs one batch; everything outside that call (input creation, layout,
session set-up, compilation) happens once, during warm-up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

TIMM_NAME = "mobilenetv1_100"  # timm's MobileNet-V1 at α = 1 (the peer), built without pretrained weights


@dataclass(frozen=True)
class Backend:
    name: str
    precision: str
    needs: tuple[str, ...] = ()  # artifacts: onnx, int8, int8_uint8, timm_onnx, timm_int8
    requires: tuple[str, ...] = ()  # importable modules
    peer: bool = False
    note: str = ""
    default: bool = True  # part of `mobilenet-v1 bench`'s default set (candidates are asked for by name)


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
    Backend("timm-eager", "fp32", (), ("timm",), True, f"timm {TIMM_NAME}, eval, NCHW, inference_mode"),
    Backend("timm-eager-tuned", "fp32", (), ("timm",), True,
            "timm eager with the malloc tuning our inference path applies (MALLOC_* variables' effect)"),
    Backend("timm-compile", "fp32", (), ("timm",), True, "timm, channels_last + torch.compile (freezing)"),
    Backend("timm-ort-fp32", "fp32", ("timm_onnx",), ("timm", "onnxruntime"), True, "timm → ONNX → ORT"),
    Backend("timm-ort-int8", "int8", ("timm_int8",), ("timm", "onnxruntime"), True,
            "timm → ONNX → ORT static QDQ int8, same recipe"),
    Backend("timm-openvino-fp32", "fp32", ("timm_onnx",), ("timm", "openvino"), True, "timm → ONNX → OpenVINO f32"),
    Backend("timm-openvino-bf16", "bf16", ("timm_onnx",), ("timm", "openvino"), True, "timm → ONNX → OpenVINO bf16"),
    Backend("timm-openvino-int8", "int8", ("timm_int8",), ("timm", "openvino"), True,
            "timm → ONNX → ORT QDQ int8 → OpenVINO"),
    Backend("keras-torch", "fp32", (), ("keras",), True, "keras.applications.MobileNet, KERAS_BACKEND=torch"),
]}  # fmt: skip

DEFAULT_BACKENDS = [n for n, b in BACKENDS.items() if not b.peer and b.default]
PEER_BACKENDS = [n for n, b in BACKENDS.items() if b.peer]


@dataclass
class Job:
    """What a worker needs to build one backend for one model (picklable: crosses a process boundary)."""

    backend: str
    config: dict  # ModelConfig.to_dict()
    model_dir: str | None = None
    files: dict[str, str] = field(default_factory=dict)  # artifact name -> path


def check_backends(names: list[str]) -> None:
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend {unknown[0]!r}; known backends: {', '.join(BACKENDS)}")


def missing_module(backend: str) -> str | None:
    """The first module this backend needs that is not installed (None if all are)."""
    import importlib.util  # noqa: PLC0415

    return next((m for m in BACKENDS[backend].requires if importlib.util.find_spec(m) is None), None)


def _our_model(job: Job):
    from ..checkpoint import from_pretrained  # noqa: PLC0415
    from ..model import MobileNetV1, ModelConfig  # noqa: PLC0415

    if job.model_dir:
        return from_pretrained(job.model_dir)
    return MobileNetV1(config=ModelConfig.from_dict(job.config)).eval()


def _timm_model(job: Job):
    import timm  # noqa: PLC0415

    if job.config.get("width_multiplier") != 1.0:
        raise ValueError(f"the timm peer ({TIMM_NAME}) exists at alpha 1.0 only")
    return timm.create_model(TIMM_NAME, pretrained=False, num_classes=job.config.get("num_classes", 1000)).eval()


def _torch_runner(module, x):
    import torch  # noqa: PLC0415

    def run():
        with torch.inference_mode():
            return module(x)

    return run


def _compiled(module, channels_last: bool = True):
    import torch  # noqa: PLC0415

    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    return torch.compile(module, options={"freezing": True})


def _mkldnn_runner(model, x, dtype):
    """oneDNN's own tensor layout end to end: weights reordered once, activations never leave blocked form."""
    import torch  # noqa: PLC0415
    from torch.utils.mkldnn import to_mkldnn  # noqa: PLC0415

    from ..deploy.fold import fold_bn  # noqa: PLC0415

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


def build(job: Job, batch: int, threads: int):  # noqa: PLR0911 - one return per backend family
    """A callable running one batch of ``batch`` images on ``job.backend`` (a fixed random input)."""
    import torch  # noqa: PLC0415

    torch.set_num_threads(threads)
    name, cfg = job.backend, job.config
    shape = (batch, cfg.get("in_chans", 3), cfg["resolution"], cfg["resolution"])
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(batch))
    if name == "eager":
        return _torch_runner(_our_model(job), x)
    if name.startswith("inference"):
        from ..deploy.inference import optimize_for_inference  # noqa: PLC0415

        precision = "bf16" if "bf16" in name else "fp32"
        fast = optimize_for_inference(
            _our_model(job), precision=precision, compile=name.endswith("compile"),
            fuse=not name.endswith("unfused"), keep_memory=not name.endswith("untuned"),
        )  # fmt: skip
        return lambda: fast(x)
    if name.startswith("mkldnn"):
        return _mkldnn_runner(_our_model(job), x, torch.bfloat16 if name.endswith("bf16") else torch.float32)
    if name.startswith("timm-eager"):
        if name.endswith("tuned"):
            from ..allocator import keep_freed_memory  # noqa: PLC0415

            if not keep_freed_memory():
                raise RuntimeError("malloc tuning needs glibc (Linux)")
        return _torch_runner(_timm_model(job), x)
    if name == "timm-compile":
        return _torch_runner(_compiled(_timm_model(job)), x.to(memory_format=torch.channels_last))
    if name == "keras-torch":
        return _keras_runner(cfg, x)
    key = next(iter(BACKENDS[name].needs))
    path = job.files[key]
    if name.startswith(("ort-", "timm-ort-")):
        from ..deploy.onnx_export import ort_session  # noqa: PLC0415

        session, feed = ort_session(path, threads), {"input": x.numpy()}
        input_name = session.get_inputs()[0].name
        return lambda: session.run(None, {input_name: feed["input"]})
    hint = "bf16" if name.endswith("bf16") else "f32"
    return _openvino_runner(path, hint, threads, x.numpy())


def _keras_runner(cfg: dict, x):
    os.environ["KERAS_BACKEND"] = "torch"  # must precede the first keras import in this (worker) process
    import keras  # noqa: PLC0415
    import torch  # noqa: PLC0415

    if keras.backend.backend() != "torch":
        raise ValueError(f"keras already imported with the {keras.backend.backend()} backend")
    r = cfg["resolution"]
    model = keras.applications.MobileNet(
        input_shape=(r, r, 3), alpha=cfg["width_multiplier"], weights=None, classes=cfg.get("num_classes", 1000)
    )
    nhwc = x.permute(0, 2, 3, 1).contiguous()  # Keras is channels-last by convention

    def run():
        with torch.inference_mode():
            return model(nhwc, training=False)

    return run
