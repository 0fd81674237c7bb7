"""The paper's cost tables beside ours, with a verdict for each printed number.

Accuracy columns are ImageNet results and are not re-derived here; every Mult-Adds and parameter
figure is. Where the paper contradicts itself, the row names the inconsistency instead of hiding it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .cost import model_cost, reduction_factor, single_layer_cost

M = 1e6


@dataclass(frozen=True)
class PaperRow:
    table: str
    row: str
    quantity: str  # "Mult-Adds (M)", "Params (M)", "Mult-Adds share (%)", ...
    paper: float  # as printed
    ours: float  # exact, in the printed unit
    decimals: int  # printed precision
    note: str = ""  # the known inconsistency, if any

    @property
    def verdict(self) -> str:
        if round(self.ours, self.decimals) == round(self.paper, self.decimals):
            return "match"
        return "paper inconsistent" if self.note else "MISMATCH"

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}


def _network_rows(table: str, row: str, *, mult_adds: float, params: float, ma_note: str = "", **kw) -> list[PaperRow]:
    report = model_cost(**kw)
    ma_decimals = 0 if mult_adds >= 10 else 1
    p_decimals = len(str(params).split(".")[1]) if "." in str(params) else 0
    return [
        PaperRow(table, row, "Mult-Adds (M)", mult_adds, report.mult_adds / M, ma_decimals, ma_note),
        PaperRow(table, row, "Params (M)", params, report.params / M, p_decimals),
    ]


def _without_fc(**kw) -> str:
    body = model_cost(num_classes=0, **kw).mult_adds / M
    return f"printed value matches the network without its FC layer ({body:.1f}M); the other rows include the FC"


def paper_rows() -> list[PaperRow]:
    rows: list[PaperRow] = []
    # Table 2: resource per layer type, 1.0 MobileNet-224.
    shares = model_cost().shares
    printed = {
        "Conv 1x1": (94.86, 74.59),
        "Conv DW 3x3": (3.06, 1.06),
        "Conv 3x3": (1.19, 0.02),
        "Fully Connected": (0.18, 24.33),
    }
    for label, (ma, p) in printed.items():
        note = ""
        if label == "Conv 3x3":
            note = "typo for 1.91%: only 1.91 makes the column sum to 100%"
        rows.append(PaperRow("2", label, "Mult-Adds share (%)", ma, shares[label]["mult_adds"], 2, note))
        rows.append(PaperRow("2", label, "Params share (%)", p, shares[label]["params"], 2))

    # Table 3: one 3×3 layer, M = N = 512, D_F = 14.
    for row, kind, channels, size, ma, p in [
        ("Conv 3x3", "full", 512, 14, 462, 2.36),
        ("Depthwise Separable Conv", "separable", 512, 14, 52.3, 0.27),
        ("alpha = 0.75", "separable", 384, 14, 29.6, 0.15),
        ("rho = 0.714", "separable", 384, 10, 15.1, 0.15),
    ]:
        c = single_layer_cost(kind, channels, channels, size)
        rows.append(PaperRow("3", row, "Mult-Adds (M)", ma, c.mult_adds / M, 0 if ma >= 100 else 1))
        rows.append(PaperRow("3", row, "Params (M)", p, c.params / M, 2))

    # Table 4: depthwise separable vs full convolution MobileNet.
    rows += _network_rows(
        "4",
        "Conv MobileNet",
        mult_adds=4866,
        params=29.3,
        variant="full_conv",
        ma_note=_without_fc(variant="full_conv"),
    )
    rows += _network_rows("4", "MobileNet", mult_adds=569, params=4.2)
    # Table 5: narrow vs shallow.
    rows += _network_rows("5", "0.75 MobileNet", mult_adds=325, params=2.6, width_multiplier=0.75)
    rows += _network_rows("5", "Shallow MobileNet", mult_adds=307, params=2.9, variant="shallow")
    # Table 6: width multiplier.
    for alpha, ma, p in [(1.0, 569, 4.2), (0.75, 325, 2.6), (0.5, 149, 1.3), (0.25, 41, 0.5)]:
        rows += _network_rows("6", f"{alpha:.2f} MobileNet-224", mult_adds=ma, params=p, width_multiplier=alpha)
    # Table 7: resolution multiplier.
    for res, ma in [(224, 569), (192, 418), (160, 290), (128, 186)]:
        note = _without_fc(resolution=res) if res == 160 else ""
        rows.append(
            _network_rows("7", f"1.0 MobileNet-{res}", mult_adds=ma, params=4.2, resolution=res, ma_note=note)[0]
        )
    # Table 8 (MobileNet row) and Table 9.
    rows += _network_rows("8", "1.0 MobileNet-224", mult_adds=569, params=4.2)
    rows += _network_rows(
        "9",
        "0.50 MobileNet-160",
        mult_adds=76,
        params=1.32,
        width_multiplier=0.5,
        resolution=160,
        ma_note=_without_fc(width_multiplier=0.5, resolution=160),
    )
    return rows


@dataclass(frozen=True)
class PaperReport:
    rows: list[PaperRow]
    layer_reduction: float  # Eq. 5 at N = 512, D_K = 3: separable cost / full cost
    network_reduction: float  # full_conv / standard Mult-Adds at α = 1, 224

    def to_json(self) -> str:
        return json.dumps(
            {
                "rows": [r.to_dict() for r in self.rows],
                "layer_reduction": self.layer_reduction,
                "network_reduction": self.network_reduction,
            }
        )

    def markdown(self) -> str:
        lines = [
            "| Table | Row | Quantity | Paper | Ours | Verdict |",
            "|---|---|---|---:|---:|---|",
        ]
        for r in self.rows:
            verdict = r.verdict + (f": {r.note}" if r.note else "")
            lines.append(
                f"| {r.table} | {r.row} | {r.quantity} | {r.paper:.{r.decimals}f} | {r.ours:.{r.decimals + 2}f} "
                f"| {verdict} |"
            )
        lines.append("")
        lines.append(
            f"Eq. 5, 3×3 separable vs full at N = 512: 1/N + 1/D_K² = {self.layer_reduction:.4f} "
            f"({1 / self.layer_reduction:.2f}× less computation); whole network (Table 4): "
            f'{self.network_reduction:.2f}× — the paper\'s "8 to 9 times".'
        )
        return "\n".join(lines)


def paper_report() -> PaperReport:
    full = model_cost(variant="full_conv").mult_adds
    standard = model_cost().mult_adds
    return PaperReport(paper_rows(), reduction_factor(512, 3), full / standard)
