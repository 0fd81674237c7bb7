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
import json
import os
from pathlib import Path

import torch

from .files import atomic_path

try:
    import fcntl  # POSIX: a run directory is locked while a process trains in it
except ImportError:  # Windows: no lock (two trainings into one directory are the user's to avoid)
    fcntl = None

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


LOCK_NAME = ".mobilenet-v1.lock"
RUN_FILES = ("config.json", "model.safetensors", LAST_NAME, STATE_NAME, METRICS_NAME, CURVES_NAME)


def is_run(path: Path) -> bool:
    """Whether ``path`` holds a training run (its state, or a config that records training)."""
    if (path / STATE_NAME).exists():
        return True
    try:
        return "train" in json.loads((path / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def _stale_temporaries(path: Path) -> list[Path]:
    """Temporary files of interrupted atomic writes (``files.atomic_path``) in ``path``."""
    return [p for p in path.glob(".*.tmp") if p.is_file()]


def check_target(run_dir: Path, overwrite: bool = False) -> None:
    """Refuse, before anything is written, a new run's directory that would lose someone's files: one that holds a
    training run, or anything else, unless ``overwrite``."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{run_dir}: exists and is not a directory")
    if overwrite or not run_dir.is_dir():
        return
    stale = set(_stale_temporaries(run_dir))
    if any(p.name != LOCK_NAME and p not in stale for p in run_dir.iterdir()):
        if is_run(run_dir):
            raise ValueError(f"{run_dir}: already holds a training run (--resume {run_dir} to continue it, "
                             "another --out, or --overwrite to replace it)")  # fmt: skip
        raise ValueError(f"{run_dir}: is not empty and holds no training run (another --out, or --overwrite to "
                         "write the run's files into it)")  # fmt: skip


def claim(run_dir: Path, resume: bool, overwrite: bool = False):
    """Take ``run_dir`` for this training process: lock it (a second process training into it is refused until
    this one exits), check it again under the lock (:func:`check_target`, for a new run), and remove the temporary
    files an interrupted save left. Returns the lock, held for as long as the object lives."""
    run_dir = Path(run_dir)
    if not resume:
        check_target(run_dir, overwrite)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = open(run_dir / LOCK_NAME, "a+")  # noqa: SIM115 - held open for the whole run
    try:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise ValueError(
            f"{run_dir}: in use by a training process ({holder}); wait for it or use another --out"
        ) from None
    try:
        if not resume:
            check_target(run_dir, overwrite)  # again: another process may have finished a run here meanwhile
    except ValueError:
        lock.close()
        raise
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()}\n")
    lock.flush()
    for tmp in _stale_temporaries(run_dir):  # ours: no other process writes here while we hold the lock
        tmp.unlink(missing_ok=True)
    if overwrite and not resume:
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
    return lock
