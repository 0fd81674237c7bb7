"""Export to ONNX (dynamic batch, checked, verified in ONNX Runtime), ``torch.export``'s ``.pt2`` and (deprecated)
TorchScript, atomically.

Every export is written to a temporary file beside the target, checked there, and only then renamed
into place: a failed check, a bad input or a crash leaves nothing partial behind.

    mobilenet-v1 export runs/fmnist --format onnx -o fmnist.onnx
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..checkpoint import Pretrained
from ..files import atomic_path
from .fold import fold_bn

INPUT_NAME, OUTPUT_NAME = "input", "logits"
DEFAULT_OPSET = 18
META_PREFIX = "mobilenet_v1."
ONNX_ATOL = 1e-4  # ONNX Runtime vs PyTorch, the bound (max |Δ| on logits)


@dataclass
class ExportReport:
    path: str
    format: str
    opset: int | None
    size_bytes: int
    max_abs_diff: float  # against the PyTorch model, on the verification batch
    verified_batches: list[int]
    metadata: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def metadata_of(model: nn.Module, extra: dict | None = None) -> dict[str, str]:
    """String metadata recorded in the export: config, preprocessing, class names, label offset.

    A runtime user then needs only the ``.onnx`` file to prepare inputs and name outputs.
    """
    info: Pretrained | None = getattr(model, "pretrained", None)
    config = getattr(model, "config", None)
    meta = {}
    if config is not None:
        meta["config"] = json.dumps(config.to_dict())
    if info is not None:
        meta["preprocessing"] = json.dumps(asdict(info.preprocessing))
        meta["class_names"] = json.dumps(info.class_names)
        meta["label_offset"] = str(info.label_offset)
    for k, v in (extra or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    return {META_PREFIX + k: v for k, v in meta.items()}


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``mobilenet_v1.*`` metadata of an exported ONNX file, JSON values decoded."""
    import onnx  # noqa: PLC0415 - optional (deploy extra)

    proto = onnx.load(str(path), load_external_data=False)
    out = {}
    for prop in proto.metadata_props:
        if prop.key.startswith(META_PREFIX):
            key = prop.key[len(META_PREFIX) :]
            try:
                out[key] = json.loads(prop.value)
            except json.JSONDecodeError:
                out[key] = prop.value
    return out


def example_input(model: nn.Module, batch: int = 2, seed: int = 0) -> torch.Tensor:
    config = model.config
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, config.in_chans, config.resolution, config.resolution, generator=g)


def ort_session(path: str | os.PathLike, threads: int = 2, optimize: bool = True):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (benchmarks pin them)."""
    import onnxruntime as ort  # noqa: PLC0415 - optional (deploy extra)

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def verify_onnx(
    path: str | os.PathLike, model: nn.Module, batches=(1, 3), atol: float = ONNX_ATOL, name: str | None = None,
    rtol: float = 0.0,
) -> tuple[float, list[int]]:  # fmt: skip
    """Run the file in ONNX Runtime at several batch sizes (proving the batch axis is dynamic) and compare:
    max |Δ| ≤ ``atol`` + ``rtol`` · max |logit|.

    ``name`` is the file the user asked for, used in messages (``path`` may be its temporary).
    """
    session = ort_session(path)
    path = name or path
    worst, bound = 0.0, atol
    for b in batches:
        x = example_input(model, b, seed=b)
        with torch.inference_mode():
            want = model(x).float().numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if got.shape != want.shape:
            raise ValueError(f"{path}: ONNX Runtime output shape {got.shape} != PyTorch {want.shape} at batch {b}")
        worst = max(worst, float(np.abs(got - want).max()))
        bound = max(bound, atol + rtol * float(np.abs(want).max()))
    if worst > bound:
        raise ValueError(f"{path}: ONNX Runtime differs from PyTorch by {worst:.3g} (> {bound:g}); not written")
    return worst, list(batches)


def to_onnx_proto(model: nn.Module, opset: int = DEFAULT_OPSET):
    """The BN-folded model as an ``onnx.ModelProto`` with a dynamic batch axis named ``batch``."""
    folded = fold_bn(model).float()
    x = example_input(folded, batch=2)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        folded,
        (x,),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamic_shapes=({0: batch},),
        dynamo=True,
        verbose=False,
    )
    program.optimize()
    return program.model_proto


def save_onnx_proto(proto, path: str | os.PathLike, metadata: dict[str, str]) -> None:
    import onnx  # noqa: PLC0415

    keep = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for k, v in metadata.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save_model(proto, str(path), save_as_external_data=False)
    onnx.checker.check_model(str(path), full_check=True)


def export_onnx(
    model: nn.Module, path: str | os.PathLike, opset: int = DEFAULT_OPSET, metadata: dict | None = None,
    rtol: float = 0.0,
) -> ExportReport:  # fmt: skip
    """Fold BN, export with a dynamic batch, record metadata, ``onnx.checker`` it, verify in ONNX Runtime
    (max |Δ| on the logits ≤ 1e-4, the issue's bound, + ``rtol`` · max |logit|).

    The file appears at ``path`` only when all checks pass.
    """
    model = model.eval()
    meta = metadata_of(model, {"format": "onnx", **(metadata or {})})
    with atomic_path(path) as tmp:
        save_onnx_proto(to_onnx_proto(model, opset), tmp, meta)
        diff, verified = verify_onnx(tmp, model, name=str(path), rtol=rtol)
    return ExportReport(str(path), "onnx", opset, Path(path).stat().st_size, diff, verified, meta)


def export_pt2(model: nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> ExportReport:
    """``torch.export`` of the BN-folded model with a dynamic batch (``.pt2``: PyTorch without Python, the successor
    of TorchScript): saved with metadata as an extra file, reloaded with ``torch.export.load`` and verified."""
    model = model.eval()
    meta = metadata_of(model, {"format": "pt2", **(metadata or {})})
    folded = fold_bn(model).float()
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.export.export(folded, (example_input(folded, 2),), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={"mobilenet_v1.json": json.dumps(meta)})
    worst = _write_verified(path, buffer, lambda f: torch.export.load(f).module(), model, "the exported program")
    return ExportReport(str(path), "pt2", None, Path(path).stat().st_size, worst, [1, 3], meta)


def export_torchscript(model: nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> ExportReport:
    """Trace the BN-folded model, freeze it, save with metadata as an extra file, reload and verify.

    TorchScript is deprecated by PyTorch (``torch.jit`` warns so): :func:`export_pt2` is its successor."""
    model = model.eval()
    meta = metadata_of(model, {"format": "torchscript", **(metadata or {})})
    folded = fold_bn(model).float()
    with torch.no_grad(), warnings.catch_warnings():
        # TF 'SAME' padding is traced as the constant of the example's size: the export is for that size, and the
        # comparison below checks it (the tracer's warning about it says nothing the user can act on)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.freeze(torch.jit.trace(folded, example_input(folded, 2)))
    extra = {"mobilenet_v1.json": json.dumps(meta)}
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files=extra)
    worst = _write_verified(path, buffer, torch.jit.load, model, "TorchScript")
    return ExportReport(str(path), "torchscript", None, Path(path).stat().st_size, worst, [1, 3], meta)


def _write_verified(path, buffer: io.BytesIO, load, model: nn.Module, what: str) -> float:
    """Write ``buffer`` (a program serialized in memory: a full disk is then Python's OSError, not a C++ abort) to
    ``path`` atomically, once ``load(file)`` of it computes what ``model`` does at batch 1 and 3 (a traced or exported
    graph records shapes: other batch sizes must still run and agree); the largest difference."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
        loaded = load(str(tmp))
        worst = 0.0
        for b in (1, 3):
            x = example_input(model, b, seed=b)
            with torch.inference_mode():
                worst = max(worst, float((loaded(x) - model(x)).abs().max()))
        if worst > ONNX_ATOL:
            raise ValueError(f"{path}: {what} differs from PyTorch by {worst:.3g}; not written")
    return worst
