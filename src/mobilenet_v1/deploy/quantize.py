"""Post-training static int8 quantization through ONNX Runtime (QDQ format, per-channel weights).

Why per-channel: folding BN into MobileNet-V1's depthwise convolutions multiplies each channel's 3×3
filter by γ/√(σ²+ε), and a channel with tiny variance ends up with weights hundreds of times larger
than its neighbours'. One scale per tensor is then sized for the outlier, and every other channel
rounds to zero — Krishnamoorthi 2018 measured 0.1% ImageNet top-1 for per-tensor weights against ~70%
per-channel. ``per_channel=False`` is kept so the collapse can be shown (tests, benchmarks).

Activations are uint8 (per tensor), weights int8 — the u8×s8 form that VNNI's ``vpdpbusd`` consumes — with 7-bit
weights by default on CPUs without VNNI (``grids.py``), or uint8 weights (``weight_type="uint8"``, ORT's U8U8
kernels, which do not saturate): full 8-bit weights on any CPU, ~1.3× slower there.

The pipeline (:func:`export_int8`): fold BN, round the filters for their outputs (``rounding.py``), correct the
biases (``bias_correction.py``), optionally fine-tune through a simulation of the int8 graph (``qat.py``), export
fp32 ONNX and let ORT quantize it (:func:`quantize_onnx`).

The same U8U8 kernels let any x86 CPU *evaluate* a file with full 8-bit int8 weights exactly as a VNNI (or
ARM) CPU runs it: :func:`exact_int8_session` stores each int8 weight ``q`` as the uint8 ``q + 128`` with zero
point 128, the same integers, whose products ORT then sums without saturating.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_path
from .bias_correction import bias_correct
from .calibration import batches, calibration_reader, model_calibration
from .grids import resolve_reduce_range
from .onnx_export import INPUT_NAME, META_PREFIX, OUTPUT_NAME, export_onnx, ort_session
from .qat import DEFAULT_LR, qat_finetune, widen_filters_for_int32_biases
from .rounding import round_weights

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# The classifier stays float: quantizing its output puts 1000 logits on 256 levels, so near-ties round to
# equal values and top-1 flips; it is 0.18% of the Mult-Adds (Table 2), so keeping it costs nothing.
KEEP_FLOAT = ("Gemm",)
BIAS_CORRECTION_IMAGES = 128  # the per-channel mean output error converges well before this
# Which filters rounding.py puts on ORT's grid. "all" is the default at every weight range: on Google's model and
# the 219 photos it agrees with fp32 best or as well as any other recipe, at the lowest KL, at 7-bit, 8-bit and
# uint8 weights alike (docs/int8.md); rounding the depthwise filters alone helped at 7 bits and not at 8.
ROUNDINGS = ("all", "depthwise", "nearest")


@dataclass
class QuantizeReport:
    path: str
    per_channel: bool
    method: str
    calibration_images: int
    size_bytes: int
    fp32_size_bytes: int
    verified_batches: list[int]
    reduce_range: bool = False
    weight_type: str = "int8"
    qat: dict | None = None  # qat.QATReport of the fine-tuning, when the export ran one

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def as_uint8_weights(proto):
    """A copy of a QDQ ONNX model with every int8 weight ``q`` (zero point 0) stored as uint8 ``q + 128`` with
    zero point 128: the same integers, multiplied by ONNX Runtime's u8×u8 kernels, which widen to int16 before
    multiplying and so never saturate. Activations, biases and scales are untouched."""
    import onnx  # noqa: PLC0415
    from onnx import numpy_helper  # noqa: PLC0415

    proto = copy.deepcopy(proto)
    inits = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        weight, zero = inits.get(node.input[0]), inits.get(node.input[2])
        if weight is None or zero is None or weight.data_type != onnx.TensorProto.INT8:
            continue
        if numpy_helper.to_array(zero).any():
            raise ValueError(f"weight {weight.name} has a non-zero int8 zero point: not a symmetric int8 weight")
        for tensor in (weight, zero):
            shifted = numpy_helper.to_array(tensor).astype(np.int16) + 128
            tensor.CopyFrom(numpy_helper.from_array(shifted.astype(np.uint8), tensor.name))
    return proto


def exact_int8_session(path: str | os.PathLike, threads: int = 2):
    """An ONNX Runtime session computing what ``path`` computes where int8 products are summed exactly (VNNI,
    ARM): on any x86 CPU, so that 8-bit and 7-bit int8 weights can both be evaluated anywhere. Equal, to the
    bit, to the plain session wherever the plain one does not saturate (7-bit weights; any VNNI CPU)."""
    import onnx  # noqa: PLC0415

    rewritten = as_uint8_weights(onnx.load(str(path)))
    with tempfile.TemporaryDirectory() as work:
        tmp = Path(work) / "exact.onnx"
        onnx.save_model(rewritten, str(tmp))
        return ort_session(tmp, threads)


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod  # noqa: PLC0415 - optional (deploy extra)

    if name not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}; got {name!r}")
    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]  # fmt: skip


def check_int8_runs(path: str | os.PathLike, batches=(1, 3)) -> list[int]:
    """Load the int8 model in ONNX Runtime and run it at several batch sizes (the batch axis stays dynamic)."""
    session = ort_session(path)
    shape = session.get_inputs()[0].shape
    for b in batches:
        x = np.random.default_rng(b).standard_normal((b, *shape[1:])).astype(np.float32)
        out = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        if out.shape[0] != b or not np.isfinite(out).all():
            raise ValueError(f"{path}: int8 model gave output of shape {out.shape} (non-finite?) at batch {b}")
    return list(batches)


def quantize_onnx(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    reader,
    per_channel: bool = True,
    method: str = "minmax",
    keep_float: tuple[str, ...] = KEEP_FLOAT,
    notes: dict | None = None,
    reduce_range: bool | None = None,
    weight_type: str = "int8",
) -> QuantizeReport:
    """Static QDQ quantization of an fp32 ONNX file, calibrated by ``reader``; written atomically.

    Nodes whose op type or name is in ``keep_float`` stay in float (default: the classifier; ``KEEP_FLOAT``).
    ``weight_type``: "int8" (u8×s8, the fast form) or "uint8" (u8×u8: no saturation without VNNI, slower).
    ``reduce_range``: 7-bit weights for CPUs without VNNI; None picks :func:`default_reduce_range` for int8
    weights and False for uint8 ones, which don't need it.

    The fp32 file's metadata (preprocessing, class names) is carried over, plus a ``quantization`` entry.
    """
    import onnx  # noqa: PLC0415
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static  # noqa: PLC0415
    from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415

    count = getattr(reader, "count", 0)
    reduce_range = resolve_reduce_range(reduce_range, weight_type)
    fp32 = onnx.load(str(fp32_path))
    meta = {p.key: p.value for p in fp32.metadata_props}
    meta[META_PREFIX + "quantization"] = json.dumps(
        {"format": "QDQ", "weights": f"{weight_type} " + ("per-channel" if per_channel else "per-tensor"),
         "reduce_range": reduce_range, "activations": "uint8 per-tensor", "calibration": method,
         "calibration_images": count, "float_ops": list(keep_float), **(notes or {})}
    )  # fmt: skip
    with atomic_path(out_path) as tmp, tempfile.TemporaryDirectory() as work:
        # ORT's recommended pre-pass (shape inference, BN/constant folding): a no-op on our already-folded
        # export, but it is what makes the same recipe fair to a peer's unfolded graph.
        quant_pre_process(str(fp32_path), str(Path(work) / "pre.onnx"), skip_symbolic_shape=True)
        quantize_static(
            str(Path(work) / "pre.onnx"),
            str(Path(work) / "q.onnx"),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QUInt8 if weight_type == "uint8" else QuantType.QInt8,
            calibrate_method=_method(method),
            nodes_to_exclude=[
                n.name
                for n in onnx.load(str(Path(work) / "pre.onnx")).graph.node
                if n.op_type in keep_float or n.name in keep_float
            ],  # fmt: skip
            reduce_range=reduce_range,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        model = onnx.load(str(Path(work) / "q.onnx"))
        del model.metadata_props[:]
        for k, v in meta.items():
            model.metadata_props.add(key=k, value=v)
        onnx.save_model(model, str(tmp))
        onnx.checker.check_model(str(tmp))
        verified = check_int8_runs(tmp)
    return QuantizeReport(
        str(out_path), per_channel, method, count, Path(out_path).stat().st_size,
        Path(fp32_path).stat().st_size, verified, reduce_range, weight_type,
    )  # fmt: skip


def export_int8(
    model, out_path: str | os.PathLike, calibration, per_channel: bool = True, method: str = "minmax",
    limit: int | None = 300, bias_correction: bool = True, reduce_range: bool | None = None,
    weight_type: str = "int8", qat_steps: int = 0, qat_lr: float | None = None, rounding: str = "all",
) -> QuantizeReport:  # fmt: skip
    """Model → (rounded, bias-corrected, QAT-fine-tuned) fp32 ONNX (verified) → int8 QDQ ONNX calibrated on
    ``calibration``.

    ``calibration``: a directory or list of images, prepared with the model's recorded preprocessing
    (``model.pretrained``), or the default for its input size when it has none. ``rounding`` (``rounding.py``;
    per-channel weights, without QAT) puts the conv filters on ORT's grid, each weight rounded up or down to keep
    the layer's output closest to float: ``"all"`` of them, only the ``"depthwise"`` ones, or none
    (``"nearest"``: ORT rounds each weight to the nearest level). ``bias_correction`` (``bias_correction.py``)
    pre-compensates the biases for the remaining int8 weight rounding. ``qat_steps`` > 0
    fine-tunes the weights through the simulated int8 graph first, distilling the float model on the
    calibration images (``qat.py``; ``qat_lr``: its Adam learning rate). ``reduce_range`` and
    ``weight_type``: see :func:`quantize_onnx`.
    """
    pre, sources = model_calibration(model, calibration)
    reader = calibration_reader(sources, pre, INPUT_NAME, limit=limit)  # fails early on an empty list
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}; got {rounding!r}")
    reduce_range = resolve_reduce_range(reduce_range, weight_type)
    source = model
    notes: dict = {"bias_correction": bias_correction, "optimal_rounding": 0}
    # QAT chooses its own rounding: started from on-grid depthwise filters its loss rose (Fashion-MNIST test)
    optimal_rounding = rounding != "nearest" and per_channel and not qat_steps
    if bias_correction or optimal_rounding:
        images = np.concatenate(list(batches(sources[:BIAS_CORRECTION_IMAGES], pre)))
    if optimal_rounding:
        source, notes["optimal_rounding"] = round_weights(source, images, reduce_range, weight_type,
                                                           dense=rounding == "all")  # fmt: skip
    if bias_correction:
        source = bias_correct(source, images, per_channel=per_channel, reduce_range=reduce_range,
                              weight_type=weight_type)  # fmt: skip
    calibration_sources = sources[:limit] if limit else sources
    if qat_steps:
        source, qat = qat_finetune(model, calibration_sources, pre, steps=qat_steps, lr=qat_lr or DEFAULT_LR,
                                   per_channel=per_channel, reduce_range=reduce_range, weight_type=weight_type,
                                   start=source)  # fmt: skip
        notes["qat"] = qat.to_dict()
    if weight_type == "uint8":  # last: ORT would clip int32 biases it cannot fit for uint8 weights (qat.py)
        inputs = torch.from_numpy(np.concatenate(list(batches(calibration_sources, pre))))
        source, notes["widened_filters"] = widen_filters_for_int32_biases(source, inputs, per_channel, reduce_range,
                                                                          weight_type)  # fmt: skip
    with tempfile.TemporaryDirectory() as work:
        fp32 = Path(work) / "fp32.onnx"
        # an intermediate graph, about to carry int8 errors ~1e-2: float32 noise relative to the logits' size is
        # allowed too (a random model's logits of ~30 differ by ~1e-4 between ORT and PyTorch)
        export_onnx(source, fp32, rtol=1e-5)
        report = quantize_onnx(fp32, out_path, reader, per_channel=per_channel, method=method, notes=notes,
                               reduce_range=reduce_range, weight_type=weight_type)  # fmt: skip
    report.qat = notes.get("qat")
    return report
