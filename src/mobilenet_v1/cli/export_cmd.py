"""``mobilenet-v1 export MODEL_DIR --format onnx|pt2|executorch|torchscript [--int8 --calibration DIR] -o FILE``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .model_args import positive_int

FORMATS = ("onnx", "pt2", "executorch", "torchscript")  # torchscript: deprecated by PyTorch; pt2 succeeds it


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="model directory (config.json + model.safetensors)")
    p.add_argument("--format", default="onnx",
                   help="onnx (servers; ONNX Runtime, OpenVINO), pt2 (torch.export), executorch (.pte for phones: "
                        "XNNPACK, the mobile extra) or torchscript (deprecated by PyTorch); default onnx")  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="file to write (atomically: all or nothing)")
    p.add_argument("--int8", action="store_true",
                   help="static int8 quantization: ONNX Runtime QDQ (onnx), PT2E with XNNPACK's quantizer (executorch)")
    p.add_argument("--calibration", help="directory of images for int8 calibration (a few hundred real images)")
    p.add_argument("--calibration-images", type=positive_int, default=300, help="use at most this many (default 300)")
    p.add_argument("--calibration-method", default="minmax", help="minmax, entropy or percentile")
    p.add_argument(
        "--per-tensor",
        action="store_true",
        help="one weight scale per tensor instead of per channel (shows MobileNet's int8 collapse)",
    )
    p.add_argument(
        "--no-bias-correction",
        action="store_true",
        help="skip bias correction for int8 weight rounding (Nagel et al. 2019; on by default)",
    )
    p.add_argument(
        "--rounding",
        choices=("all", "depthwise", "nearest"),  # deploy.quantize.ROUNDINGS, not imported here: keeps --help fast
        default="all",
        help="which filters are rounded up or down to keep each layer's output closest to float (deploy/rounding.py)"
        " rather than to the nearest int8 level: all (default: the best on every weight range measured), "
        "depthwise, or nearest (ONNX Runtime's own rounding)",
    )
    p.add_argument(
        "--reduce-range",
        choices=("auto", "on", "off"),
        default="auto",
        help="7-bit weights, for x86 CPUs without VNNI whose u8×s8 dot product saturates "
        "(auto: on for int8 weights when this CPU has no VNNI, off for uint8 ones, which don't saturate)",
    )
    p.add_argument(
        "--weight-type",
        choices=("int8", "uint8"),
        default="int8",
        help="int8 weights (u8×s8, fastest) or uint8 (ONNX Runtime's u8×u8: full 8-bit weights without "
        "saturation on CPUs without VNNI, more accurate there and ~1.3× slower)",
    )
    p.add_argument(
        "--qat-steps",
        type=int,
        default=0,
        help="quantization-aware fine-tuning before quantizing: this many Adam steps distilling the float "
        "model on random crops of the calibration images (no labels needed; 0 = post-training only)",
    )
    p.add_argument("--qat-lr", type=float, default=None, help="QAT learning rate (default 2e-5)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    p.add_argument("--json", action="store_true", help="print the export report as one JSON object")


def check_output(out: Path) -> None:
    """The export is a file: never a directory, nor one of a training run's own files."""
    from ..rundir import RUN_FILES, is_run  # noqa: PLC0415 - keep `mobilenet-v1 --help` fast

    if out.is_dir():
        raise ValueError(f"{out}: is a directory; --output names the file to write")
    if out.name in RUN_FILES and is_run(out.parent):
        raise ValueError(f"{out}: is a file of the training run in {out.parent}; export to another path")


def run(args: argparse.Namespace) -> int:
    if args.format not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}; got {args.format!r}")
    if args.int8 and args.format not in ("onnx", "executorch"):
        raise ValueError("--int8 is available for --format onnx and executorch")
    if args.int8 and not args.calibration:
        raise ValueError("--int8 needs --calibration DIR (a directory of real images)")
    if args.calibration and not args.int8:
        raise ValueError("--calibration is only used with --int8")
    onnx_int8 = args.int8 and args.format == "onnx"
    if not onnx_int8 and (args.weight_type != "int8" or args.reduce_range != "auto" or args.rounding != "all"):
        raise ValueError("--weight-type, --reduce-range and --rounding are only used with --int8 --format onnx")
    if not onnx_int8 and (args.qat_steps or args.qat_lr is not None):
        raise ValueError("--qat-steps and --qat-lr are only used with --int8 --format onnx")
    check_output(Path(args.output))
    if args.qat_steps < 0 or (args.qat_lr is not None and not args.qat_lr > 0):
        raise ValueError("--qat-steps must be >= 0 and --qat-lr > 0")
    from ..checkpoint import from_pretrained  # noqa: PLC0415 - keep `mobilenet-v1 --help` fast
    from ..deploy.calibration import list_images  # noqa: PLC0415

    if args.int8:
        list_images(args.calibration)  # fail on a missing/empty directory before loading anything
    model = from_pretrained(args.path)
    exporter = {"onnx": _int8 if args.int8 else _onnx, "pt2": _pt2, "executorch": _executorch,
                "torchscript": _torchscript}[args.format]  # fmt: skip
    report, summary = exporter(model, args)
    print(report.to_json() if args.json else summary)
    return 0


def _int8(model, args):
    from ..deploy.quantize import export_int8  # noqa: PLC0415

    report = export_int8(model, args.output, args.calibration, per_channel=not args.per_tensor,
                         method=args.calibration_method, limit=args.calibration_images,
                         bias_correction=not args.no_bias_correction, rounding=args.rounding,
                         reduce_range={"auto": None, "on": True, "off": False}[args.reduce_range],
                         weight_type=args.weight_type, qat_steps=args.qat_steps, qat_lr=args.qat_lr)  # fmt: skip
    weights = (("per-channel" if report.per_channel else "per-tensor") + (" 7-bit" if report.reduce_range else "")
               + (" uint8" if report.weight_type == "uint8" else ""))  # fmt: skip
    summary = (f"wrote {report.path}: int8 QDQ ({weights} "
               f"weights, {report.method} calibration on {report.calibration_images} images), "
               + (f"after {report.qat['steps']} QAT steps (distillation loss {report.qat['first_loss']:.4f} → "
                  f"{report.qat['last_loss']:.4f}), " if report.qat else "")
               + f"{report.size_bytes / 1e6:.2f} MB (fp32 {report.fp32_size_bytes / 1e6:.2f} MB); "
               f"runs in ONNX Runtime at batch {', '.join(map(str, report.verified_batches))}")  # fmt: skip
    return report, summary


def _onnx(model, args):
    from ..deploy.onnx_export import DEFAULT_OPSET, export_onnx  # noqa: PLC0415

    report = export_onnx(model, args.output, opset=args.opset or DEFAULT_OPSET)
    return report, (f"wrote {report.path}: ONNX opset {report.opset}, dynamic batch, {report.size_bytes / 1e6:.2f} "
                    f"MB; onnx.checker ok; ONNX Runtime vs PyTorch max |diff| {report.max_abs_diff:.2e}")  # fmt: skip


def _pt2(model, args):
    from ..deploy.onnx_export import export_pt2  # noqa: PLC0415

    report = export_pt2(model, args.output)
    return report, (f"wrote {report.path}: torch.export program, dynamic batch, {report.size_bytes / 1e6:.2f} MB; "
                    f"torch.export.load vs PyTorch max |diff| {report.max_abs_diff:.2e}")  # fmt: skip


def _executorch(model, args):
    from ..deploy.mobile import export_executorch  # noqa: PLC0415

    report = export_executorch(model, args.output, int8=args.int8, calibration=args.calibration,
                               limit=args.calibration_images)  # fmt: skip
    check = (f"top-1 agreement with fp32 {report.top1_agreement:.1f}% on the {report.calibration_images} "
             "calibration images" if args.int8 else f"vs PyTorch max |diff| {report.max_abs_diff:.2e}")  # fmt: skip
    return report, (f"wrote {report.path} (+ .json): ExecuTorch {report.precision}, XNNPACK runs all "
                    f"{report.delegated_convolutions} convolutions, batch 1, {report.size_bytes / 1e6:.2f} MB; "
                    f"run in ExecuTorch's runtime: {check}")  # fmt: skip


def _torchscript(model, args):
    from ..deploy.onnx_export import export_torchscript  # noqa: PLC0415

    report = export_torchscript(model, args.output)
    return report, (f"wrote {report.path}: TorchScript (frozen; deprecated by PyTorch: --format pt2 succeeds it), "
                    f"max |diff| vs PyTorch {report.max_abs_diff:.2e}")  # fmt: skip
