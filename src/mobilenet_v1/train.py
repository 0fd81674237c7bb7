"""Training: one process on CPU/GPU, or many through torchrun (DistributedDataParallel).

    mobilenet-v1 train --out runs/fmnist --epochs 15 --alpha 1.0 --resolution 32
    torchrun --standalone --nproc_per_node 2 -m mobilenet_v1 train --out runs/ddp ...

Resumable at epoch boundaries: every epoch's randomness (sample order, augmentation, dropout) is
derived from (seed, epoch), so ``--resume`` reproduces an uninterrupted run exactly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from . import data as data_mod
from . import kernels, rundir
from .allocator import keep_freed_memory
from .checkpoint import WEIGHTS_NAME, Pretrained, read_config, save_weights
from .distributed import DistInfo, all_gather_objects, all_sum, average_buffers, barrier, setup, teardown
from .evaluate import Metrics, autocast, evaluate, for_evaluation, resolve_precision
from .files import write_json
from .model import MobileNetV1, ModelConfig
from .preprocess import default_preprocessing, train_transform
from .recipes import EMA, Recipe, build_optimizer, get_recipe, lr_at
from .train_config import TrainConfig, TrainResult


def _checksum(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _initial_model(cfg: TrainConfig, num_classes: int) -> MobileNetV1:
    model_cfg = replace(cfg.model, num_classes=num_classes)
    if not cfg.init:
        return MobileNetV1(config=model_cfg)
    from .finetune import load_init  # noqa: PLC0415 - pulls in the converters only when asked

    return load_init(cfg.init, model_cfg)


def _data(cfg: TrainConfig, info: DistInfo):
    pre = default_preprocessing(cfg.preset, cfg.model.resolution, grayscale=cfg.model.in_chans == 1)
    if cfg.init and cfg.dataset:  # keep the normalisation the pretrained weights were trained with
        from .finetune import init_preprocessing  # noqa: PLC0415

        pre = init_preprocessing(cfg.init, pre)
    train_tf = train_transform(pre, cfg.preset, cfg.augment, cfg.random_erasing)
    train_ds = data_mod.load_split(cfg.dataset, cfg.data, "train", train_tf)
    val_ds = data_mod.load_split(cfg.dataset, cfg.data, "val", train_transform(pre, cfg.preset, augment=False))
    names = data_mod.class_names(train_ds)
    if data_mod.class_names(val_ds) != names:
        raise ValueError(f"{cfg.data}: train/ and val/ have different class folders")
    train_ds = data_mod.subset(train_ds, cfg.train_subset, cfg.seed)
    val_ds = data_mod.subset(val_ds, cfg.val_subset, cfg.seed + 1)
    if len(train_ds) < cfg.batch_size * info.world:
        raise ValueError(
            f"{len(train_ds)} training images are fewer than one global batch of {cfg.batch_size * info.world}"
        )
    gpu = info.device.type == "cuda"
    train_loader = data_mod.train_loader(
        train_ds, cfg.batch_size, cfg.seed, info.rank, info.world, cfg.workers, pin_memory=gpu
    )
    # On a CPU the evaluation's model shares the cores with its loader: one worker; a GPU needs them all.
    val_workers = cfg.workers if gpu else min(cfg.workers, 1)
    val_loader = data_mod.eval_loader(val_ds, 2 * cfg.batch_size, info.rank, info.world, val_workers, pin_memory=gpu)
    return pre, names, train_loader, val_loader


def _check_resumable(run_dir: Path, cfg: TrainConfig) -> TrainConfig:
    recorded = json.loads((run_dir / "config.json").read_text()).get("train")
    if not isinstance(recorded, dict):
        raise ValueError(f"{run_dir}: holds a model but no training run to resume (--init {run_dir} fine-tunes it)")
    saved = TrainConfig.from_dict(recorded)
    if saved.model != cfg.model and cfg.model != ModelConfig():
        raise ValueError(f"{run_dir}: was trained with {saved.model}; cannot resume with different model options")
    # The run continues exactly as configured: the schedule depends on the epoch count, and the
    # augmentation stream on the number of loader workers (each worker has its own RNG). Only how it
    # reports may change.
    return replace(saved, progress=cfg.progress)


def train(cfg: TrainConfig, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Train (or resume) into ``cfg.out_dir``; returns the final metrics. Safe under torchrun.

    A new run refuses a directory that holds files (a run, or anything else) unless ``overwrite``; the
    directory is locked while this process trains in it."""
    info = setup(cfg.device)
    try:
        result = _train(cfg, info, resume, overwrite)
        barrier(info)  # no rank tears the process group down while another still uses it (see teardown)
        return result
    finally:
        teardown(info)


def _recipe(cfg: TrainConfig) -> Recipe:
    """The named recipe with the run's overrides applied."""
    names = ("weight_decay", "label_smoothing", "ema_decay")
    overrides = {k: getattr(cfg, k) for k in names if getattr(cfg, k) is not None}
    if "ema_decay" in overrides:
        overrides["ema_decay"] = overrides["ema_decay"] or None  # 0 means no EMA
    return replace(get_recipe(cfg.recipe), **overrides)


@dataclass
class _Run:
    """What one training process holds, built by :func:`_start` and advanced epoch by epoch."""

    cfg: TrainConfig
    info: DistInfo
    run_dir: Path
    recipe: Recipe
    precision: str
    names: list[str]
    train_loader: object
    val_loader: object
    model: MobileNetV1  # the parameters being trained
    eval_model: MobileNetV1  # a copy that receives the weights (or their EMA) to evaluate and save
    net: nn.Module  # model as the step runs it: with kernels, SyncBatchNorm, DDP, torch.compile as asked
    optimizer: torch.optim.Optimizer
    ema: EMA | None
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    base_lr: float
    steps_per_epoch: int
    memory_format: torch.memory_format
    info_out: Pretrained
    writer: object
    start_epoch: int = 0
    step: int = 0
    lr: float = 0.0
    best: float = -1.0
    history: list[dict] = field(default_factory=list)
    lock: object = None  # rundir.claim's: held while this process trains


def _train(cfg: TrainConfig, info: DistInfo, resume: bool, overwrite: bool = False) -> TrainResult:
    run = _start(cfg, info, resume, overwrite)
    started = time.perf_counter()
    final = None
    for epoch in range(run.start_epoch, run.cfg.epochs):
        sums, seconds = _train_epoch(run, epoch)
        final = _finish_epoch(run, epoch, sums, seconds)
    if final is None:  # resumed a finished run: report its weights
        final = _validate(run)
    checksums = all_gather_objects(info, _checksum(run.model))
    if run.writer:
        run.writer.close()
    return TrainResult(str(run.run_dir), run.cfg.epochs, run.best, final, time.perf_counter() - started, checksums)


def _start(cfg: TrainConfig, info: DistInfo, resume: bool, overwrite: bool = False) -> _Run:
    """Check the run directory, seed, build data, model, optimizer and the step's wrappers, and restore the state
    of a resumed run — in the order that makes a resumed run continue bit for bit."""
    run_dir = Path(cfg.out_dir)
    if resume:
        read_config(run_dir)  # a clear error if this is not a run directory
        cfg = _check_resumable(run_dir, cfg)
    lock = None  # rank 0 writes the run's files: it checks the directory first, and locks it
    if info.is_main and resume:
        lock = rundir.claim(run_dir, resume=True)
    elif info.is_main:
        rundir.check_target(run_dir, overwrite)  # before anything is built or written; claimed below
    recipe = _recipe(cfg)
    precision = resolve_precision(cfg.precision, info.device)
    torch.manual_seed(cfg.seed)
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels once
    if info.device.type == "cpu":
        torch.set_flush_denormal(True)  # denormal floats are ~100× slower on x86 and carry no signal here
        keep_freed_memory()  # reuse step buffers instead of re-faulting them from the kernel (allocator.py)
    pre, names, train_loader, val_loader = _data(cfg, info)
    model = _initial_model(cfg, len(names)).to(info.device)
    if cfg.freeze_features:
        model.features.requires_grad_(False)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    eval_model = MobileNetV1(config=model.config).to(info.device, memory_format=memory_format)
    base_lr = cfg.lr if cfg.lr is not None else recipe.lr * cfg.batch_size * info.world / recipe.base_batch
    optimizer = build_optimizer(model, recipe, base_lr, loss_scaling=precision == "fp16")
    steps_per_epoch = len(train_loader)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    run = _Run(
        cfg, info, run_dir, recipe, precision, names, train_loader, val_loader, model, eval_model, model, optimizer,
        EMA(model, recipe.ema_decay) if recipe.ema_decay else None,
        # fp16 gradients underflow without loss scaling; for other precisions the scaler passes everything through
        torch.amp.GradScaler(info.device.type, enabled=precision == "fp16"),
        nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing), base_lr, steps_per_epoch, memory_format,
        Pretrained(model.config, pre, names, 0, {"trained_with": cfg.to_dict()}), None, lr=base_lr, lock=lock,
    )  # fmt: skip
    if resume and (run_dir / rundir.STATE_NAME).exists():  # else: killed before the first checkpoint: start over
        _restore(run, rundir.load_state(run_dir))
    run.net = _wrap(model, cfg, info)
    if info.is_main:
        run.lock = run.lock or rundir.claim(run_dir, resume=False, overwrite=overwrite)
        _write_config(run_dir, run.info_out, cfg)
    run.writer = _tensorboard(run_dir, cfg, info)
    return run


def _restore(run: _Run, state: dict) -> None:
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    if run.ema:
        run.ema.state, run.ema.updates = state["ema"], state["ema_updates"]
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.start_epoch, run.step, run.best = state["epoch"], state["step"], state["best_top1"]
    run.history = state["history"]


def _wrap(model: MobileNetV1, cfg: TrainConfig, info: DistInfo) -> nn.Module:
    """The model as the training step runs it: the CPU kernels, SyncBatchNorm, DDP and torch.compile, as asked."""
    if info.device.type == "cpu" and cfg.fused_kernels and not cfg.compile:
        kernels.enable(model)  # a no-op where the kernels cannot be built (no compiler, not x86-64)
    net: nn.Module = model
    if cfg.sync_bn and info.enabled:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[info.local_rank] if info.device.type == "cuda" else None
        )
    return torch.compile(net) if cfg.compile else net


def _train_epoch(run: _Run, epoch: int) -> tuple[list[float], float]:
    """One pass over the training data; returns the sums [loss·n, correct, n, skipped] and the seconds taken."""
    cfg, info = run.cfg, run.info
    # All randomness of an epoch derives from (seed, epoch, rank): resume reproduces it exactly.
    data_mod.start_epoch(run.train_loader, cfg.seed, epoch, info.rank)
    run.net.train()
    if cfg.freeze_features:
        run.model.features.eval()  # linear probe: BN statistics stay the pretrained ones
    sums = [0.0, 0.0, 0.0, 0.0]  # loss·n, correct, n, skipped
    t0 = time.perf_counter()
    bar = _progress(cfg, info, epoch, run.steps_per_epoch)
    total_steps = run.steps_per_epoch * cfg.epochs
    for i, batch in enumerate(run.train_loader):
        if i >= run.steps_per_epoch:
            break
        sums[3] += batch.skipped
        if len(batch.labels):
            run.lr = lr_at(run.recipe, run.base_lr, run.step, run.steps_per_epoch, total_steps)
            for group in run.optimizer.param_groups:
                group["lr"] = run.lr
            x = batch.images.to(info.device, non_blocking=True).contiguous(memory_format=run.memory_format)
            y = batch.labels.to(info.device, non_blocking=True)
            run.optimizer.zero_grad(set_to_none=True)
            loss_sum, correct = _accumulate(run.net, run.criterion, x, y, cfg.accum_steps, info, run.precision,
                                            run.scaler)  # fmt: skip
            run.scaler.step(run.optimizer)  # optimizer.step() on unscaled gradients; skipped if fp16 overflowed
            run.scaler.update()
            if run.ema:
                run.ema.update(run.model)
            sums[0] += loss_sum
            sums[1] += correct
            sums[2] += len(y)
        run.step += 1
        if bar is not None:
            elapsed = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(
                loss=f"{sums[0] / max(1, sums[2]):.3f}",
                acc=f"{100 * sums[1] / max(1, sums[2]):.1f}",
                img_s=f"{sums[2] * info.world / max(elapsed, 1e-9):.0f}",
            )
    if bar is not None:
        bar.close()
    return sums, time.perf_counter() - t0


def _validate(run: _Run) -> Metrics:
    """The trained weights (or their EMA) evaluated on the validation split."""
    run.eval_model.load_state_dict(run.ema.state if run.ema else run.model.state_dict())
    return _evaluate(run.eval_model, run.val_loader, run.names, run.info, run.precision, run.cfg.channels_last)


def _finish_epoch(run: _Run, epoch: int, sums: list[float], seconds: float) -> Metrics:
    """Average over ranks, evaluate, record the epoch, checkpoint (rank 0); returns the validation metrics."""
    cfg, info = run.cfg, run.info
    loss_sum, correct, seen, skipped = all_sum(info, sums)
    average_buffers(info, run.model)
    if run.ema:  # the EMA copied each rank's own statistics; take the averaged ones
        run.ema.state.update(
            {k: v.detach().float().clone() for k, v in run.model.state_dict().items() if "running_" in k}
        )
    final = _validate(run)
    row = {
        "epoch": epoch + 1,
        "step": run.step,
        "lr": f"{run.lr:.6g}",
        "train_loss": f"{loss_sum / max(1, seen):.5f}",
        "train_top1": f"{100 * correct / max(1, seen):.3f}",
        "val_loss": f"{final.loss:.5f}",
        "val_top1": f"{final.top1:.3f}",
        "val_top5": f"{final.top5:.3f}",
        "images_per_s": f"{seen / seconds:.1f}",
        "epoch_seconds": f"{seconds:.1f}",
        "skipped": int(skipped),
    }
    run.history.append(row)
    if info.is_main:
        run.best = _save_epoch(run, epoch, final)
        if run.writer:
            for k in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "images_per_s"):
                run.writer.add_scalar(k, float(row[k]), epoch + 1)
        if cfg.progress:
            print(f"epoch {epoch + 1}/{cfg.epochs}: " + ", ".join(f"{k}={row[k]}" for k in METRIC_SHOWN), flush=True)
    run.best = float(all_sum(info, [run.best if info.is_main else 0.0])[0])
    barrier(info)
    return final


METRIC_SHOWN = ("train_loss", "train_top1", "val_top1", "val_top5", "images_per_s", "epoch_seconds")


def _accumulate(net, criterion, x, y, accum: int, info: DistInfo, precision: str, scaler) -> tuple[float, int]:
    """Forward/backward ``accum`` interleaved micro-batches (``x[j::accum]``) and sum their gradients.

    Interleaving splits a batch exactly as DistributedSampler splits it over ``accum`` processes, so
    ``--batch-size 2B --accum-steps 2`` on one process sees the same batch-norm groups as
    ``torchrun --nproc_per_node 2 ... --batch-size B``.
    """
    loss_sum, correct = 0.0, 0
    for j in range(accum):
        xj, yj = x[j::accum], y[j::accum]
        if not len(yj):
            continue
        sync = j == accum - 1 or not info.enabled
        with contextlib.nullcontext() if sync else net.no_sync(), autocast(info.device, precision):
            logits = net(xj)
            loss = criterion(logits.float(), yj)
        scaler.scale(loss * len(yj) / len(y)).backward()
        loss_sum += loss.item() * len(yj)
        correct += (logits.argmax(1) == yj).sum().item()
    return loss_sum, correct


def _evaluate(eval_model, val_loader, names, info: DistInfo, precision: str, channels_last: bool) -> Metrics:
    net, autocast_precision = for_evaluation(eval_model, info.device, precision)
    return evaluate(net, val_loader, names, info, autocast_precision, channels_last)


def _save_epoch(run: _Run, epoch: int, metrics: Metrics) -> float:
    """Weights first, then the state that points at them, then what is derived from the state; returns the best
    validation top-1 so far. A kill at any point leaves the previous epoch's complete checkpoint or this one's."""
    run_dir, best = run.run_dir, run.best
    save_weights(run.eval_model.state_dict(), run_dir / rundir.LAST_NAME)
    if metrics.top1 > best:
        best = metrics.top1
        save_weights(run.eval_model.state_dict(), run_dir / WEIGHTS_NAME)
        run.info_out.source = {**run.info_out.source, "epoch": epoch + 1, "val_top1": metrics.top1}
        _write_config(run_dir, run.info_out, run.cfg)
    state = {
        "epoch": epoch + 1,
        "step": run.step,
        "best_top1": best,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),  # empty unless fp16
        "ema": run.ema.state if run.ema else {},
        "ema_updates": run.ema.updates if run.ema else 0,
        "rng": torch.get_rng_state(),
        "history": run.history,
    }
    rundir.save_state(run_dir, state)
    rundir.write_metrics(run_dir, run.history)  # derived from the state, so a kill here loses nothing
    rundir.plot_curves(run_dir, run.history)
    return best


def _write_config(run_dir: Path, info_out: Pretrained, cfg: TrainConfig) -> None:
    write_json(run_dir / "config.json", {**info_out.to_dict(), "train": cfg.to_dict()})


def _progress(cfg: TrainConfig, info: DistInfo, epoch: int, total: int):
    if not (cfg.progress and info.is_main):
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", dynamic_ncols=True, leave=False)


def _tensorboard(run_dir: Path, cfg: TrainConfig, info: DistInfo):
    if not (cfg.tensorboard and info.is_main):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ValueError(f"--tensorboard needs the tensorboard package ({e}); pip install tensorboard") from None
    return SummaryWriter(str(run_dir / "tensorboard"))
