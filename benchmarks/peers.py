"""The peers timed beside our inference paths: timm's MobileNet-V1 (eager, compiled, through ONNX Runtime and
OpenVINO, fp32/bf16/int8) and Keras's, registered into ``mobilenet_v1.bench`` by :func:`register_peers`.

Each is built inside its own worker process (``mobilenet_v1.bench``'s), where this module is imported by name:
``benchmarks/`` must be on ``sys.path`` (it is, for a script run from it). timm's ONNX files are exported the way
a timm user would (BN left to the runtime) and quantized with our recipe, inside the worker, before timing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from mobilenet_v1.bench import Backend, Job, register
from mobilenet_v1.deploy.calibration import calibration_reader, synthetic_images
from mobilenet_v1.deploy.onnx_export import ort_session
from mobilenet_v1.deploy.quantize import quantize_onnx
from mobilenet_v1.files import atomic_path

TIMM_NAME = "mobilenetv1_100"  # timm's MobileNet-V1 at α = 1, built without pretrained weights
BUILDER = "peers:build"
PEERS = [
    Backend("timm-eager", "fp32", (), ("timm",), True, f"timm {TIMM_NAME}, eval, NCHW, inference_mode",
            builder=BUILDER),
    Backend("timm-eager-tuned", "fp32", (), ("timm",), True,
            "timm eager with the malloc tuning our inference path applies (MALLOC_* variables' effect)",
            builder=BUILDER),
    Backend("timm-compile", "fp32", (), ("timm",), True, "timm, channels_last + torch.compile (freezing)",
            builder=BUILDER),
    Backend("timm-ort-fp32", "fp32", (), ("timm", "onnxruntime"), True, "timm → ONNX → ORT", builder=BUILDER),
    Backend("timm-ort-int8", "int8", (), ("timm", "onnxruntime"), True,
            "timm → ONNX → ORT static QDQ int8, same recipe", builder=BUILDER),
    Backend("timm-openvino-fp32", "fp32", (), ("timm", "openvino"), True, "timm → ONNX → OpenVINO f32",
            builder=BUILDER),
    Backend("timm-openvino-bf16", "bf16", (), ("timm", "openvino"), True, "timm → ONNX → OpenVINO bf16",
            builder=BUILDER),
    Backend("timm-openvino-int8", "int8", (), ("timm", "openvino"), True, "timm → ONNX → ORT QDQ int8 → OpenVINO",
            builder=BUILDER),
    Backend("keras-torch", "fp32", (), ("keras",), True, "keras.applications.MobileNet, KERAS_BACKEND=torch",
            builder=BUILDER),
]  # fmt: skip


def register_peers() -> list[str]:
    for backend in PEERS:
        register(backend)
    return [b.name for b in PEERS]


def timm_model(job: Job):
    import timm  # noqa: PLC0415

    if job.config.get("width_multiplier") != 1.0:
        raise ValueError(f"the timm peer ({TIMM_NAME}) exists at alpha 1.0 only")
    return timm.create_model(TIMM_NAME, pretrained=False, num_classes=job.config.get("num_classes", 1000)).eval()


def export_timm_onnx(model, path: str | os.PathLike, resolution: int = 224, opset: int = 18) -> None:
    """timm model → ONNX with a dynamic batch, via the same exporter as ours but without our BN folding."""
    import onnx  # noqa: PLC0415

    x = torch.randn(2, 3, resolution, resolution)
    program = torch.onnx.export(
        model.eval(), (x,), input_names=["input"], output_names=["logits"], opset_version=opset,
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), dynamo=True, verbose=False,
    )  # fmt: skip
    program.optimize()
    with atomic_path(path) as tmp:
        onnx.save_model(program.model_proto, str(tmp))
        onnx.checker.check_model(str(tmp))


def _torch_runner(module, x):
    def run():
        with torch.inference_mode():
            return module(x)

    return run


def _timm_onnx(job: Job, work: Path, int8: bool) -> str:
    """timm's model as ONNX in ``work`` (quantized with our ORT recipe on synthetic calibration images if int8)."""
    from mobilenet_v1.checkpoint import Preprocessing  # noqa: PLC0415

    size = job.config["resolution"]
    fp32 = work / "timm.onnx"
    export_timm_onnx(timm_model(job), fp32, size)
    if not int8:
        return str(fp32)
    reader = calibration_reader(synthetic_images(64, size), Preprocessing(input_size=size), "input")
    quantize_onnx(fp32, work / "timm_int8.onnx", reader, per_channel=True)
    return str(work / "timm_int8.onnx")


def build(job: Job, x: torch.Tensor, threads: int):
    """A callable running one batch ``x`` on the peer ``job.backend`` (mobilenet_v1.bench calls it in a worker)."""
    name = job.backend
    if name.startswith("timm-eager"):
        if name.endswith("tuned"):
            from mobilenet_v1.allocator import keep_freed_memory  # noqa: PLC0415

            if not keep_freed_memory():
                raise RuntimeError("malloc tuning needs glibc (Linux)")
        return _torch_runner(timm_model(job), x)
    if name == "timm-compile":
        model = timm_model(job).to(memory_format=torch.channels_last)
        return _torch_runner(torch.compile(model, options={"freezing": True}), x.to(memory_format=torch.channels_last))
    if name == "keras-torch":
        return _keras_runner(job.config, x)
    work = Path(tempfile.mkdtemp(prefix="mnv1-peer-"))  # lives as long as the worker process
    path = _timm_onnx(job, work, int8=name.endswith("int8"))
    if name.startswith("timm-ort-"):
        session, feed = ort_session(path, threads), x.numpy()
        input_name = session.get_inputs()[0].name
        return lambda: session.run(None, {input_name: feed})
    import openvino as ov  # noqa: PLC0415

    hint = "bf16" if name.endswith("bf16") else "f32"  # explicit: AVX-512 BF16 CPUs would pick bf16 otherwise
    compiled = ov.Core().compile_model(
        path, "CPU", {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    )
    request, feed = compiled.create_infer_request(), x.numpy()
    return lambda: request.infer({0: feed})


def _keras_runner(cfg: dict, x):
    os.environ["KERAS_BACKEND"] = "torch"  # must precede the first keras import in this (worker) process
    import keras  # noqa: PLC0415

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
