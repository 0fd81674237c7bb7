"""Export for phones: ExecuTorch's ``.pte`` (PyTorch's on-device runtime), XNNPACK-delegated, fp32 or int8.

    mobilenet-v1 export runs/fmnist --format executorch -o fmnist.pte
    mobilenet-v1 export runs/fmnist --format executorch --int8 --calibration photos/ -o fmnist.int8.pte

Why ExecuTorch (``pip install 'mobilenet-v1[mobile]'``): it is PyTorch's own path to Android and iOS, installs beside
this package's torch without pulling another framework, and its XNNPACK delegate is the same kernel library on a
phone's ARM cores as on an x86 host, so the host can check and time what the phone will run. (LiteRT's converter,
``litert-torch``, pulls JAX and transformers in.)

The BN-folded model is captured with ``torch.export`` at batch 1 and the model's input size, lowered with
``to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])``; int8 goes through PyTorch's PT2E flow with
the XNNPACK quantizer (symmetric per-channel int8 weights, per-tensor activations), calibrated on real images.
Before int8, each filter is rounded onto XNNPACK's weight grid and the biases corrected, as for ONNX int8.
Every file is then loaded by ExecuTorch's own runtime and run: fp32 outputs must equal PyTorch's (≤ 1e-4 of their
scale), and every convolution must run inside XNNPACK (none left to the portable fallback); else nothing is
written. The preprocessing and class names go to a sidecar ``FILE.pte.json``, as ONNX exports hold them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..files import atomic_path
from .bias_correction import bias_correct
from .calibration import batches, model_calibration
from .fold import fold_bn
from .onnx_export import META_PREFIX, example_input, metadata_of
from .quantize import BIAS_CORRECTION_IMAGES
from .rounding import round_weights

RTOL = 1e-4  # the runtime's fp32 outputs against PyTorch's, relative to their scale
CALIBRATION_IMAGES = 300


@dataclass
class MobileReport:
    path: str
    format: str
    precision: str
    size_bytes: int
    max_abs_diff: float  # the runtime's output against PyTorch's, on a random input (fp32) or the calibration images
    delegated_convolutions: int  # convolutions running inside XNNPACK
    undelegated_ops: list[str]  # what runs outside it (ExecuTorch's portable kernels)
    calibration_images: int = 0
    top1_agreement: float | None = None  # int8: with PyTorch's fp32 model, on the calibration images

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@contextlib.contextmanager
def _quiet():
    """Keep ExecuTorch's start-up chatter off the user's terminal: torchao's import logs a deprecation warning of
    torch's, and XNNPACK's first load prints its CPU probing (/sys files an x86 host lacks) from C++ to fd 2.
    What was printed is passed on if the block fails."""
    pytree = logging.getLogger("torch.utils._pytree")
    level = pytree.level
    pytree.setLevel(logging.ERROR)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            pytree.setLevel(level)


def _lower():
    try:
        with _quiet():
            from executorch.exir import to_edge_transform_and_lower  # noqa: PLC0415
    except ImportError as e:
        raise ValueError(f"--format executorch needs ExecuTorch (pip install 'mobilenet-v1[mobile]'): {e}") from None
    return to_edge_transform_and_lower


def _partitioners() -> list:
    """The delegates the program is lowered to: XNNPACK (its kernels are a phone's as much as a host's)."""
    with _quiet():
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: PLC0415

    return [XnnpackPartitioner()]


def runtime_method(program: bytes | str | os.PathLike):
    """ExecuTorch's runtime: the ``forward`` method of a ``.pte`` (its bytes or its path), ready to execute."""
    with _quiet():
        from executorch.runtime import Runtime  # noqa: PLC0415

        runtime = Runtime.get()
        if isinstance(program, bytes):
            with tempfile.TemporaryDirectory() as work:  # the runtime reads programs from files
                path = Path(work) / "program.pte"
                path.write_bytes(program)
                return runtime.load_program(str(path)).load_method("forward")
        return runtime.load_program(str(program)).load_method("forward")


def set_threads(threads: int) -> None:
    """Size XNNPACK's thread pool in this process (by default it takes every core)."""
    with _quiet():
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool  # noqa: PLC0415

        _unsafe_reset_threadpool(threads)


def _decoded(value: str):
    try:
        return json.loads(value)
    except ValueError:
        return value


def _delegation(edge) -> tuple[int, list[str]]:
    """(convolutions inside XNNPACK, ops left outside it) of a lowered edge program."""
    graph = edge.exported_program().graph_module
    outside, inside = [], 0
    for node in graph.graph.nodes:
        if node.op == "call_function":
            name = getattr(node.target, "__name__", str(node.target))
            if "executorch_call_delegate" in name or name == "getitem":
                continue
            outside.append(name)
    for _, lowered in graph.named_children():  # the delegated subgraphs
        original = getattr(lowered, "original_module", None)
        if original is not None:
            inside += sum("convolution" in str(n.target) for n in original.graph.nodes if n.op == "call_function")
    return inside, sorted(set(outside))


def _quantize(graph: nn.Module, images: list[torch.Tensor]) -> nn.Module:
    with _quiet():
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config  # noqa: PLC0415
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e  # noqa: PLC0415

    quantizer = _clamp_fusing_quantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for x in images:  # batch 1, the exported shape
            prepared(x[None])
    return convert_pt2e(prepared)


def _clamp_fusing_quantizer():
    """XNNPACK's quantizer, plus one pattern it lacks: a convolution followed by ReLU6 (``hardtanh``).

    XNNPACK's quantizer fuses only ReLU into a convolution's output. Before ReLU6 it quantizes the convolution's raw
    output, whose range (negatives, and positives far past 6) is many times ReLU6's [0, 6], so every layer of
    Google's model loses most of its int8 levels: 77.6% top-1 agreement with fp32 on 219 photos against 83.6% with
    the pair annotated as one (95.9% with the weight rounding and bias correction of :func:`_corrected`). XNNPACK
    runs the pair as one convolution with an output clamp, as it does ReLU."""
    with _quiet():
        from executorch.backends.xnnpack.quantizer import xnnpack_quantizer_utils as utils  # noqa: PLC0415
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer  # noqa: PLC0415
        from torch.fx import Node  # noqa: PLC0415
        from torchao.quantization.pt2e.quantizer import QuantizationAnnotation  # noqa: PLC0415
        from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY  # noqa: PLC0415

    clamps = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)

    class ClampFusingQuantizer(XNNPACKQuantizer):
        def annotate(self, model):
            config = self.global_config
            for clamp in model.graph.nodes:
                conv = clamp.args[0] if clamp.op == "call_function" and clamp.target in clamps else None
                if not isinstance(conv, Node) or conv.target != torch.ops.aten.conv2d.default or len(conv.users) > 1:
                    continue
                specs = {conv.args[0]: utils.get_input_act_qspec(config), conv.args[1]: utils.get_weight_qspec(config)}
                if len(conv.args) > 2 and isinstance(conv.args[2], Node):
                    specs[conv.args[2]] = utils.get_bias_qspec(config)
                conv.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map=specs, _annotated=True)
                output = utils.get_output_act_qspec(config)
                clamp.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(output_qspec=output, _annotated=True)
            return super().annotate(model)  # the rest of the graph; it skips what is annotated here

    return ClampFusingQuantizer()


def _corrected(model: nn.Module, images: list[torch.Tensor]) -> nn.Module:
    """BN-folded, each filter rounded onto the XNNPACK quantizer's weight grid to keep its layer's output closest to
    float, biases pre-compensated for the mean rounding error: the recipe of the ONNX int8 export (``rounding.py``,
    ``bias_correction.py``). XNNPACK's grid is ONNX Runtime's 8-bit one: symmetric per-channel, [-127, 127]."""
    sample = torch.stack(images[:BIAS_CORRECTION_IMAGES])
    rounded, _ = round_weights(model, sample, reduce_range=False, weight_type="int8", dense=True)
    return bias_correct(rounded, sample, per_channel=True, reduce_range=False, weight_type="int8")


def export_executorch(
    model: nn.Module, path: str | os.PathLike, int8: bool = False, calibration=None,
    limit: int | None = CALIBRATION_IMAGES, correct: bool = True,
) -> MobileReport:  # fmt: skip
    """Model → ``.pte`` (XNNPACK, batch 1), run in ExecuTorch's runtime before it is written; see the module.

    ``correct`` (int8): round and bias-correct the weights first (:func:`_corrected`); False quantizes the float
    weights as they are (XNNPACK's plain recipe, for comparison)."""
    lower = _lower()
    path = Path(path)
    if path.suffix != ".pte":
        raise ValueError(f"{path}: an ExecuTorch program is a .pte file")
    model = model.eval()
    folded = fold_bn(model).float()
    x = example_input(model, 1)
    images: list[torch.Tensor] = []
    if int8:
        if calibration is None:
            raise ValueError("--int8 needs --calibration DIR (a directory of real images)")
        pre, sources = model_calibration(model, calibration)
        sources = sources[:limit] if limit else sources
        images = [torch.from_numpy(b) for batch in batches(sources, pre, 32) for b in batch]
        if correct:
            folded = _corrected(model, images).float()
    with torch.no_grad():
        graph = torch.export.export(folded, (x,)).module()
        if int8:
            graph = _quantize(graph, images)
        edge = lower(torch.export.export(graph, (x,)), partitioner=_partitioners())
    inside, outside = _delegation(edge)
    convs = sum(isinstance(m, nn.Conv2d) for m in folded.modules())
    if inside < convs:
        raise ValueError(f"{path}: XNNPACK takes {inside} of the {convs} convolutions ({', '.join(outside)} would run "
                         "on ExecuTorch's portable kernels); not written")  # fmt: skip
    program = edge.to_executorch().buffer
    method = runtime_method(program)
    with torch.inference_mode():
        if int8:  # against the float model, on the calibration images (what int8 must keep)
            got = np.stack([method.execute([im[None]])[0][0].numpy() for im in images])
            want = np.stack([model(im[None])[0].numpy() for im in images])
            agreement = 100.0 * float((got.argmax(1) == want.argmax(1)).mean())
            diff = float(np.abs(got - want).max())
        else:
            got, want = method.execute([x])[0].numpy(), model(x).numpy()
            diff, agreement = float(np.abs(got - want).max()), None
            if diff > RTOL * max(1.0, float(np.abs(want).max())):
                raise ValueError(f"{path}: ExecuTorch's output differs from PyTorch's by {diff:.3g}; not written")
    meta = metadata_of(model, {"format": "executorch", "precision": "int8" if int8 else "fp32", "batch": 1})
    sidecar = {k.removeprefix(META_PREFIX): _decoded(v) for k, v in meta.items()}
    with atomic_path(path) as tmp:
        tmp.write_bytes(program)
    with atomic_path(path.with_name(path.name + ".json")) as tmp:
        tmp.write_text(json.dumps(sidecar, indent=2) + "\n")
    return MobileReport(str(path), "executorch", "int8" if int8 else "fp32", len(program), diff, inside, outside,
                        len(images), agreement)  # fmt: skip
