"""Top-1 / top-5 / per-class accuracy and a confusion matrix, over one process or many."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from .distributed import DistInfo, all_sum
from .files import atomic_path


@dataclass
class Metrics:
    top1: float  # %
    top5: float  # %
    loss: float
    samples: int
    skipped: int  # unreadable images dropped
    per_class: dict[str, float]  # class name -> top-1 %
    confusion: list[list[int]]  # [true][predicted]
    class_names: list[str]

    def to_json(self) -> str:
        return json.dumps(asdict(self))


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """Autocast to bf16 or fp16 (fp16 training also needs loss scaling: the trainer's GradScaler)."""
    dtype = _AUTOCAST_DTYPES.get(precision)
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on GPUs that have it (Ampere and later), fp16 on older GPUs, bf16 on CPUs with
    native bf16 (AVX-512 BF16 / AMX), else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def for_evaluation(model: nn.Module, device: torch.device, precision: str) -> tuple[nn.Module, str]:
    """On a CPU, ``model`` on the deployment path (BN folded, convolutions fused with their ReLU, channels_last,
    malloc tuned: deploy/inference.py), and the autocast precision left for :func:`evaluate` to apply.

    Logits equal the eager model's to ~1e-6 (folding reassociates). 10,000 Fashion-MNIST images at 64 px took
    2.3× less time than on the eager NCHW model (2-core AVX2 CPU). bf16 stays on autocast where it is emulated, which
    optimize_for_inference refuses; GPUs keep the eager model.
    """
    from .deploy.inference import bf16_supported, optimize_for_inference  # noqa: PLC0415 - CPU only

    if device.type != "cpu" or not (precision == "fp32" or (precision == "bf16" and bf16_supported())):
        return model, precision
    return optimize_for_inference(model, precision=precision), "fp32"


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    class_names: list[str],
    dist_info: DistInfo | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
    label_offset: int = 0,
    progress: bool = False,
) -> Metrics:
    """Accuracy of ``model`` over ``loader`` (summed across ranks when distributed).

    ``label_offset`` = 1 for Google's 1001-class heads: logit 0 ("background") is dropped.
    """
    info = dist_info or DistInfo()
    model.eval()
    k = len(class_names)
    confusion = torch.zeros(k, k, dtype=torch.long)
    loss_sum, top5_hits, skipped = 0.0, 0, 0
    batches = loader
    if progress and info.is_main:
        from tqdm import tqdm

        batches = tqdm(loader, desc="eval", unit="batch", leave=False)
    for batch in batches:
        skipped += batch.skipped
        if not len(batch.labels):
            continue
        x = batch.images.to(info.device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = batch.labels.to(info.device)
        with autocast(info.device, precision):
            logits = model(x)
        logits = logits.float()[:, label_offset : label_offset + k]
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        pred = logits.argmax(1)
        confusion += torch.bincount(y.cpu() * k + pred.cpu(), minlength=k * k).view(k, k)
        top5_hits += (logits.topk(min(5, k), 1).indices == y[:, None]).any(1).sum().item()
    flat = all_sum(info, [loss_sum, float(top5_hits), float(skipped), *confusion.flatten().tolist()])
    loss_sum, top5_hits, skipped = flat[:3]
    confusion = torch.tensor(flat[3:], dtype=torch.long).view(k, k)
    n = int(confusion.sum())
    if n == 0:
        raise ValueError("evaluation saw no readable images")
    per_class = {
        name: 100.0 * confusion[i, i].item() / max(1, confusion[i].sum().item()) for i, name in enumerate(class_names)
    }
    return Metrics(
        top1=100.0 * confusion.diag().sum().item() / n,
        top5=100.0 * top5_hits / n,
        loss=loss_sum / n,
        samples=n,
        skipped=int(skipped),
        per_class=per_class,
        confusion=confusion.tolist(),
        class_names=class_names,
    )


def plot_confusion(metrics: Metrics, path: str | os.PathLike) -> None:
    """Row-normalised confusion matrix as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    cm = torch.tensor(metrics.confusion, dtype=torch.float64)
    cm = cm / cm.sum(1, keepdim=True).clamp_min(1)
    k = len(metrics.class_names)
    size = max(5.0, 0.45 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm.numpy(), cmap="Blues", vmin=0, vmax=1)
    if k <= 40:
        ax.set_xticks(range(k), metrics.class_names, rotation=90)
        ax.set_yticks(range(k), metrics.class_names)
        for i in range(k):
            for j in range(k):
                if cm[i, j] >= 0.005:
                    ax.text(
                        j,
                        i,
                        f"{100 * cm[i, j]:.0f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if cm[i, j] > 0.5 else "black",
                    )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"top-1 {metrics.top1:.2f}% on {metrics.samples} images")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
