"""``mobilenet-v1 train`` — see ``mobilenet_v1.train`` for the library function."""

from __future__ import annotations

import argparse
import os

from ..data import DATASETS
from ..model import ModelConfig
from ..preprocess import PRESETS
from ..recipes import RECIPES
from ..train import TrainConfig, train
from .model_args import count, positive_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", help="run directory to create (config, weights, metrics, curves)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last completed epoch")
    p.add_argument("--overwrite", action="store_true",
                   help="train into --out even if it holds files (a run's are replaced, others left as they are)")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="fashion-mnist", help=f"one of {', '.join(DATASETS)}")
    g.add_argument("--data", help="data directory (fashion-mnist: IDX files; folder: a tree with train/ and val/)")
    g.add_argument("--preset", default="small", help=f"preprocessing, one of {', '.join(PRESETS)}")
    g.add_argument("--grayscale", action="store_true", help="one input channel (in_chans=1) instead of replicating")
    g.add_argument("--no-augment", dest="augment", action="store_false", help="no random crops, flips or erasing")
    g.add_argument(
        "--random-erasing",
        type=float,
        metavar="P",
        help="probability of random erasing (default: the preset's; small 0.25, inception 0)",
    )
    g.add_argument("--train-subset", type=positive_int, help="use a fixed random subset of N training images")
    g.add_argument("--val-subset", type=positive_int, help="validate on a fixed random subset of N images")
    g.add_argument("--workers", type=count, default=2, help="DataLoader worker processes")
    m = p.add_argument_group("model")
    m.add_argument("--alpha", type=float, default=1.0, help="width multiplier α")
    m.add_argument("--resolution", type=int, default=224, help="input size (ρ = resolution/224)")
    m.add_argument("--variant", default="standard", help="standard, full_conv (Table 4) or shallow (Table 5)")
    m.add_argument("--output-stride", type=int, default=32, help="8, 16 or 32 (dilation beyond it)")
    m.add_argument("--activation", default="relu", help="relu (the paper) or relu6 (Google's weights)")
    m.add_argument("--dropout", type=float, default=0.0, help="dropout before the classifier")
    m.add_argument("--init", help="fine-tune from weights: a run/converted directory, .pb, .h5/.keras, timm file")
    m.add_argument("--freeze-features", action="store_true", help="linear probe: train only the classifier")
    o = p.add_argument_group("optimisation")
    o.add_argument("--recipe", default="fast", help=f"one of {', '.join(RECIPES)}")
    o.add_argument("--epochs", type=positive_int, default=10, help="passes over the training set")
    o.add_argument("--batch-size", type=positive_int, default=128, help="per process")
    o.add_argument(
        "--accum-steps",
        type=int,
        default=1,
        help="gradient accumulation: micro-batches per step (interleaved, like DDP ranks)",
    )
    o.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's, scaled with the batch)")
    o.add_argument("--weight-decay", type=float, help="override the recipe's weight decay")
    o.add_argument("--label-smoothing", type=float, help="override the recipe's label smoothing")
    o.add_argument("--ema-decay", type=float, help="override the recipe's weight-EMA decay (0: no EMA)")
    o.add_argument("--seed", type=int, default=0, help="seeds the weights, data order and augmentation")
    o.add_argument("--max-steps-per-epoch", type=positive_int, help="cut each epoch short (smoke runs)")
    s = p.add_argument_group("speed")
    s.add_argument(
        "--precision",
        default="auto",
        help="auto (bf16 where supported; fp16 on GPUs without bf16), fp32, bf16, fp16 (with loss scaling)",
    )
    s.add_argument("--no-channels-last", dest="channels_last", action="store_false", help="NCHW memory layout")
    s.add_argument("--compile", action="store_true", help="torch.compile the model")
    s.add_argument(
        "--no-fused-kernels",
        dest="fused_kernels",
        action="store_false",
        help="CPU: PyTorch's operators instead of the compiled training kernels (mobilenet_v1.kernels)",
    )
    s.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (GPU)")
    s.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--tensorboard", action="store_true", help="also log to RUN_DIR/tensorboard")
    p.add_argument("--quiet", dest="progress", action="store_false", help="no progress bar or per-epoch lines")
    p.add_argument("--json", action="store_true", help="print the final result as JSON")


def run(args: argparse.Namespace) -> int:
    if bool(args.out) == bool(args.resume):
        raise ValueError("give exactly one of --out RUN_DIR (new run) or --resume RUN_DIR")
    model = ModelConfig(
        width_multiplier=args.alpha,
        resolution=args.resolution,
        variant=args.variant,
        in_chans=1 if args.grayscale else 3,
        dropout=args.dropout,
        activation=args.activation,
        output_stride=args.output_stride,
    )
    cfg = TrainConfig(
        out_dir=args.out or args.resume,
        model=model,
        dataset=args.dataset,
        data=args.data,
        preset=args.preset,
        recipe=args.recipe,
        epochs=args.epochs,
        batch_size=args.batch_size,
        accum_steps=args.accum_steps,
        lr=args.lr,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        ema_decay=args.ema_decay,
        workers=args.workers,
        seed=args.seed,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        fused_kernels=args.fused_kernels,
        sync_bn=args.sync_bn,
        augment=args.augment,
        random_erasing=args.random_erasing,
        train_subset=args.train_subset,
        val_subset=args.val_subset,
        max_steps_per_epoch=args.max_steps_per_epoch,
        init=args.init,
        freeze_features=args.freeze_features,
        tensorboard=args.tensorboard,
        progress=args.progress,
        device=args.device,
    )
    if args.overwrite and args.resume:
        raise ValueError("--overwrite is for a new run (--out), not --resume")
    result = train(cfg, resume=bool(args.resume), overwrite=args.overwrite)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    if args.json:
        print(result.to_json())
    else:
        print(
            f"{result.run_dir}: val top-1 {result.final.top1:.2f}% (best {result.best_top1:.2f}%), "
            f"top-5 {result.final.top5:.2f}%, {result.seconds:.0f} s"
        )
    return 0
