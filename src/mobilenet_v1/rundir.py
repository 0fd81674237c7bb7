"""A training run's directory: config, weights, resumable state, metrics and curves.

    RUN_DIR/config.json          model + preprocessing + class names + the training config
    RUN_DIR/model.safetensors    best weights so far (by validation top-1) — what from_pretrained loads
    RUN_DIR/last.safetensors     weights after the last completed epoch
    RUN_DIR/train_state.pt       optimizer, EMA, step, RNG: tensors and plain containers only, so it
                                 loads with torch.load(weights_only=True)
    RUN_DIR/metrics.csv          one row per epoch
    RUN_DIR/curves.png           loss and accuracy curves

Every file is written atomically: a run killed at any instant leaves the previous complete set.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import torch

from .files import atomic_path

STATE_NAME = "train_state.pt"
METRICS_NAME = "metrics.csv"
CURVES_NAME = "curves.png"
LAST_NAME = "last.safetensors"
METRIC_FIELDS = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_top1",
    "val_loss",
    "val_top1",
    "val_top5",
    "images_per_s",
    "epoch_seconds",
    "skipped",
)


def save_state(run_dir: Path, state: dict) -> None:
    with atomic_path(run_dir / STATE_NAME) as tmp:
        torch.save(state, tmp)


def load_state(run_dir: Path) -> dict:
    path = run_dir / STATE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training state to resume from (has an epoch completed?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise ValueError(f"{path}: unreadable training state ({type(e).__name__}: {e})") from None


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in METRIC_FIELDS})
    with atomic_path(run_dir / METRICS_NAME) as tmp:
        tmp.write_text(buf.getvalue())


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_curves(run_dir: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [float(r["train_loss"]) for r in rows], "o-", label="train")
    ax_loss.plot(epochs, [float(r["val_loss"]) for r in rows], "o-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, [float(r["train_top1"]) for r in rows], "o-", label="train top-1")
    ax_acc.plot(epochs, [float(r["val_top1"]) for r in rows], "o-", label="val top-1")
    ax_acc.set(xlabel="epoch", ylabel="%", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(run_dir / CURVES_NAME) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
