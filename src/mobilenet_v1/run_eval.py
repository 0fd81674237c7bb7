"""Evaluate a saved model directory on a dataset split (the library side of ``mobilenet-v1 eval``)."""

from __future__ import annotations

import torch

from . import data as data_mod
from .checkpoint import from_pretrained
from .evaluate import Metrics, evaluate, for_evaluation, resolve_precision
from .predict import class_names_of
from .preprocess import eval_transform


def evaluate_dir(
    model_dir: str,
    dataset: str = "fashion-mnist",
    data: str | None = None,
    split: str = "val",
    subset: int | None = None,
    batch_size: int = 256,
    workers: int = 1,
    precision: str = "fp32",
) -> Metrics:
    model = from_pretrained(model_dir)
    info = model.pretrained
    ds = data_mod.load_split(dataset, data, split, eval_transform(info.preprocessing))
    names = data_mod.class_names(ds)
    model_names = class_names_of(model)
    if len(names) != len(model_names):
        raise ValueError(
            f"{model_dir}: model has {len(model_names)} classes but the {dataset} {split} split has {len(names)}"
        )
    loader = data_mod.eval_loader(data_mod.subset(ds, subset, 1), batch_size, workers=workers)
    cpu = torch.device("cpu")
    net, precision = for_evaluation(model, cpu, resolve_precision(precision, cpu))
    return evaluate(net, loader, names, precision=precision, label_offset=info.label_offset)
