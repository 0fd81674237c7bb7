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
from dataclasses import asdict, dataclass, field, replace
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
from .preprocess import default_preprocessing, erasing_probability, train_transform
from .recipes import EMA, Recipe, build_optimizer, get_recipe, lr_at


@dataclass
class TrainConfig:
    out_dir: str
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: str = "fashion-mnist"  # or "folder" (ImageFolder tree with train/ and val/)
    data: str | None = None  # default for fashion-mnist: where Debian's package puts it
    preset: str = "small"  # "small" (28–64 px data) or "inception" (the paper's ImageNet preprocessing)
    recipe: str = "fast"
    epochs: int = 10
    batch_size: int = 128  # per process; the global batch is batch_size × world size
    accum_steps: int = 1  # split each batch into this many interleaved micro-batches (gradient accumulation)
    lr: float | None = None  # default: the recipe's, scaled linearly with the global batch
    weight_decay: float | None = None  # default: the recipe's
    label_smoothing: float | None = None  # default: the recipe's
    ema_decay: float | None = None  # default: the recipe's; 0 turns the weight EMA off
    workers: int = 2
    seed: int = 0
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (fp16 with loss scaling)
    channels_last: bool = True
    compile: bool = False
    fused_kernels: bool = True  # CPU: the conv-BN-ReLU blocks on compiled kernels (mobilenet_v1.kernels)
    sync_bn: bool = False  # SyncBatchNorm (GPU only in PyTorch)
    augment: bool = True
    random_erasing: float | None = None  # probability; default: the preset's (small 0.25, inception 0)
    train_subset: int | None = None
    val_subset: int | None = None
    max_steps_per_epoch: int | None = None  # short runs (tests, smoke checks)
    init: str | None = None  # fine-tune from weights (a run/converted dir, or any format `convert` reads)
    freeze_features: bool = False  # linear probe: train the classifier only
    tensorboard: bool = False
    progress: bool = True
    device: str = "auto"

    def __post_init__(self):
        for name, low in (("epochs", 1), ("batch_size", 1), ("accum_steps", 1), ("workers", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.accum_steps > self.batch_size:
            raise ValueError(f"accum_steps ({self.accum_steps}) must not exceed batch_size ({self.batch_size})")
        erasing_probability(self.preset, self.random_erasing)  # a bad probability fails before anything is written
        get_recipe(self.recipe)  # an unknown recipe fails here, before anything is written

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["model"] = ModelConfig.from_dict(d.get("model", {}))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class TrainResult:
    run_dir: str
    epochs: int
    best_top1: float
    final: Metrics
    seconds: float
    rank_checksums: list[str]  # SHA-256 of every rank's parameters: DDP keeps them identical

    def to_json(self) -> str:
        return json.dumps(asdict(self))


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
    saved = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text())["train"])
    if saved.model != cfg.model and cfg.model != ModelConfig():
        raise ValueError(f"{run_dir}: was trained with {saved.model}; cannot resume with different model options")
    # The run continues exactly as configured: the schedule depends on the epoch count, and the
    # augmentation stream on the number of loader workers (each worker has its own RNG). Only how it
    # reports may change.
    return replace(saved, progress=cfg.progress)


def train(cfg: TrainConfig, resume: bool = False) -> TrainResult:
    """Train (or resume) into ``cfg.out_dir``; returns the final metrics. Safe under torchrun."""
    info = setup(cfg.device)
    try:
        result = _train(cfg, info, resume)
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


def _train(cfg: TrainConfig, info: DistInfo, resume: bool) -> TrainResult:
    run_dir = Path(cfg.out_dir)
    if resume:
        read_config(run_dir)  # a clear error if this is not a run directory
        cfg = _check_resumable(run_dir, cfg)
    elif info.is_main and (run_dir / rundir.STATE_NAME).exists():
        raise ValueError(f"{run_dir}: already holds a training run (use --resume {run_dir}, or another --out)")
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
    world_batch = cfg.batch_size * info.world
    base_lr = cfg.lr if cfg.lr is not None else recipe.lr * world_batch / recipe.base_batch
    optimizer = build_optimizer(model, recipe, base_lr, loss_scaling=precision == "fp16")
    ema = EMA(model, recipe.ema_decay) if recipe.ema_decay else None
    # fp16 gradients underflow without loss scaling; for other precisions the scaler passes everything through
    scaler = torch.amp.GradScaler(info.device.type, enabled=precision == "fp16")
    steps_per_epoch = len(train_loader)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    total_steps = steps_per_epoch * cfg.epochs
    start_epoch, step, best, history = 0, 0, -1.0, []
    state = rundir.load_state(run_dir) if resume and (run_dir / rundir.STATE_NAME).exists() else None
    if state:  # else: killed before the first checkpoint, so start over
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema:
            ema.state, ema.updates = state["ema"], state["ema_updates"]
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, step, best = state["epoch"], state["step"], state["best_top1"]
        history = state["history"]
    if info.device.type == "cpu" and cfg.fused_kernels and not cfg.compile:
        kernels.enable(model)  # a no-op where the kernels cannot be built (no compiler, not x86-64)
    net: nn.Module = model
    if cfg.sync_bn and info.enabled:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[info.local_rank] if info.device.type == "cuda" else None
        )
    if cfg.compile:
        net = torch.compile(net)
    info_out = Pretrained(model.config, pre, names, 0, {"trained_with": cfg.to_dict()})
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_config(run_dir, info_out, cfg)
    writer = _tensorboard(run_dir, cfg, info)
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    started = time.perf_counter()
    final, lr = None, base_lr
    for epoch in range(start_epoch, cfg.epochs):
        # All randomness of an epoch derives from (seed, epoch, rank): resume reproduces it exactly.
        data_mod.start_epoch(train_loader, cfg.seed, epoch, info.rank)
        net.train()
        if cfg.freeze_features:
            model.features.eval()  # linear probe: BN statistics stay the pretrained ones
        sums = [0.0, 0.0, 0.0, 0.0]  # loss·n, correct, n, skipped
        t0 = time.perf_counter()
        bar = _progress(cfg, info, epoch, steps_per_epoch)
        for i, batch in enumerate(train_loader):
            if i >= steps_per_epoch:
                break
            sums[3] += batch.skipped
            if len(batch.labels):
                lr = lr_at(recipe, base_lr, step, steps_per_epoch, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x = batch.images.to(info.device, non_blocking=True).contiguous(memory_format=memory_format)
                y = batch.labels.to(info.device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                loss_sum, correct = _accumulate(net, criterion, x, y, cfg.accum_steps, info, precision, scaler)
                scaler.step(optimizer)  # optimizer.step() on unscaled gradients; skipped if fp16 overflowed
                scaler.update()
                if ema:
                    ema.update(model)
                sums[0] += loss_sum
                sums[1] += correct
                sums[2] += len(y)
            step += 1
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
        seconds = time.perf_counter() - t0
        loss_sum, correct, seen, skipped = all_sum(info, sums)
        average_buffers(info, model)
        if ema:  # the EMA copied each rank's own statistics; take the averaged ones
            ema.state.update({k: v.detach().float().clone() for k, v in model.state_dict().items() if "running_" in k})
        eval_model.load_state_dict(ema.state if ema else model.state_dict())
        final = _evaluate(eval_model, val_loader, names, info, precision, cfg.channels_last)
        row = {
            "epoch": epoch + 1,
            "step": step,
            "lr": f"{lr:.6g}",
            "train_loss": f"{loss_sum / max(1, seen):.5f}",
            "train_top1": f"{100 * correct / max(1, seen):.3f}",
            "val_loss": f"{final.loss:.5f}",
            "val_top1": f"{final.top1:.3f}",
            "val_top5": f"{final.top5:.3f}",
            "images_per_s": f"{seen / seconds:.1f}",
            "epoch_seconds": f"{seconds:.1f}",
            "skipped": int(skipped),
        }
        history.append(row)
        if info.is_main:
            best = _save_epoch(
                run_dir, cfg, eval_model, info_out, model, optimizer, scaler, ema, epoch, step, best, final, history
            )
            if writer:
                for k in ("train_loss", "train_top1", "val_loss", "val_top1", "val_top5", "images_per_s"):
                    writer.add_scalar(k, float(row[k]), epoch + 1)
            if cfg.progress:
                print(
                    f"epoch {epoch + 1}/{cfg.epochs}: " + ", ".join(f"{k}={row[k]}" for k in METRIC_SHOWN), flush=True
                )
        best = float(all_sum(info, [best if info.is_main else 0.0])[0])
        barrier(info)
    if final is None:  # resumed a finished run: report its weights
        eval_model.load_state_dict(ema.state if ema else model.state_dict())
        final = _evaluate(eval_model, val_loader, names, info, precision, cfg.channels_last)
    checksums = all_gather_objects(info, _checksum(model))
    if writer:
        writer.close()
    return TrainResult(str(run_dir), cfg.epochs, best, final, time.perf_counter() - started, checksums)


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


def _save_epoch(run_dir, cfg, eval_model, info_out, model, optimizer, scaler, ema, epoch, step, best, metrics, history):
    """Weights first, then the state that points at them, then what is derived from the state.

    A kill at any point leaves the previous epoch's complete checkpoint or this one's.
    """
    save_weights(eval_model.state_dict(), run_dir / rundir.LAST_NAME)
    if metrics.top1 > best:
        best = metrics.top1
        save_weights(eval_model.state_dict(), run_dir / WEIGHTS_NAME)
        info_out.source = {**info_out.source, "epoch": epoch + 1, "val_top1": metrics.top1}
        _write_config(run_dir, info_out, cfg)
    state = {
        "epoch": epoch + 1,
        "step": step,
        "best_top1": best,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),  # empty unless fp16
        "ema": ema.state if ema else {},
        "ema_updates": ema.updates if ema else 0,
        "rng": torch.get_rng_state(),
        "history": history,
    }
    rundir.save_state(run_dir, state)
    rundir.write_metrics(run_dir, history)  # derived from the state, so a kill here loses nothing
    rundir.plot_curves(run_dir, history)
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
