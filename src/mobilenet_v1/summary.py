"""Per-layer table of a model (what Keras's ``model.summary()`` prints, plus Mult-Adds)."""

from __future__ import annotations

from .cost import CostReport


def _shape(hwc: tuple[int, int, int]) -> str:
    return "x".join(map(str, hwc))


def format_summary(report: CostReport) -> str:
    c = report.config
    header = (
        f"MobileNet-V1  alpha={c.width_multiplier:g}  resolution={c.resolution} (rho={c.resolution / 224:.3f})  "
        f"variant={c.variant}  output_stride={c.output_stride}  padding={c.padding}  classes={c.num_classes}"
    )
    cols = ("Layer", "Op", "Kernel", "Stride", "Input", "Output", "Mult-Adds", "Params")
    body = [
        (
            r.name,
            r.op,
            f"{r.kernel}x{r.kernel}" + (f" d{r.dilation}" if r.dilation > 1 else ""),
            str(r.stride),
            _shape(r.input_shape),
            _shape(r.output_shape),
            f"{r.mult_adds:,}",
            f"{r.params:,}",
        )
        for r in report.layers
    ]
    widths = [max(len(col), *(len(row[i]) for row in body)) for i, col in enumerate(cols)]
    right = {3, 6, 7}

    def line(cells):
        return "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(cells, widths))
        )

    rule = "-" * len(line(cols))
    shares = "  ".join(
        f"{label}: {s['mult_adds']:.2f}% MA / {s['params']:.2f}% params" for label, s in report.shares.items()
    )
    return "\n".join(
        [
            header,
            rule,
            line(cols),
            rule,
            *map(line, body),
            rule,
            f"Total Mult-Adds: {report.mult_adds:,} ({report.mult_adds / 1e6:.1f}M)",
            f"Parameters (paper convention, weights only): {report.params:,} ({report.params / 1e6:.2f}M)",
            f"Trainable parameters of the module (with BN and bias): {report.trainable_params:,}",
            f"By layer type: {shares}",
        ]
    )
