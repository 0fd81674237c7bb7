"""What a training run is asked to do (:class:`TrainConfig`, stored in a run's ``config.json``) and what it
reports (:class:`TrainResult`)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from .config import ModelConfig
from .evaluate import Metrics
from .preprocess import erasing_probability
from .recipes import get_recipe


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
