"""Top-k predictions for image files; an unreadable file is reported and the others still run."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch

from .checkpoint import from_pretrained
from .imagenet import imagenet_classes
from .model import MobileNetV1
from .preprocess import image_to_tensor


@dataclass
class Prediction:
    path: str
    classes: list[str]
    indices: list[int]
    probabilities: list[float]
    error: str | None = None  # one line naming the file and the problem, when it could not be read

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def class_names_of(model: MobileNetV1) -> list[str]:
    info = getattr(model, "pretrained", None)
    n = model.num_classes - (info.label_offset if info else 0)
    names = info.class_names if info and info.class_names else None
    return names if names and len(names) == n else [str(i) for i in range(n)]


def decode_predictions(
    logits: torch.Tensor, class_names: list[str] | None = None, label_offset: int = 0, top: int = 5
) -> list[list[tuple[str, int, float]]]:
    """Per row of ``logits``: the ``top`` classes as ``(name, index, probability)``, most likely first (Keras's
    ``decode_predictions``, on a tensor). ``label_offset`` drops leading logits (1 for Google's "background");
    ``class_names`` default to ImageNet's for 1000 classes, else the indices."""
    logits = torch.as_tensor(logits).float()
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, classes), got shape {tuple(logits.shape)}")
    logits = logits[:, label_offset:]
    n = logits.shape[1]
    if class_names is None:
        class_names = imagenet_classes() if n == 1000 else [str(i) for i in range(n)]
    if len(class_names) != n:
        raise ValueError(f"{len(class_names)} class names for {n} logits (label_offset {label_offset})")
    probs = logits.softmax(1)
    values, indices = probs.topk(min(top, n), 1)
    return [[(class_names[j], j, p) for j, p in zip(row_i, row_p)] for row_i, row_p in zip(indices.tolist(),
                                                                                          values.tolist())]


@torch.inference_mode()
def predict(
    model: MobileNetV1 | str | os.PathLike, paths: list[str], topk: int = 5, batch_size: int = 16
) -> list[Prediction]:
    """Predictions in the order of ``paths``; files that fail carry ``error`` instead of classes."""
    if not isinstance(model, MobileNetV1):
        model = from_pretrained(model)
    model.eval()
    info = model.pretrained
    names = class_names_of(model)
    k = min(topk, len(names))
    results: dict[int, Prediction] = {}
    ready: list[tuple[int, torch.Tensor]] = []
    for i, path in enumerate(paths):
        try:
            ready.append((i, image_to_tensor(path, info.preprocessing)))
        except (ValueError, OSError) as e:
            results[i] = Prediction(str(path), [], [], [], error=str(e))
    for start in range(0, len(ready), batch_size):
        chunk = ready[start : start + batch_size]
        logits = model(torch.stack([t for _, t in chunk]))[:, : info.label_offset + len(names)]
        for (i, _), row in zip(chunk, decode_predictions(logits, names, info.label_offset, k)):
            results[i] = Prediction(str(paths[i]), [c for c, _, _ in row], [j for _, j, _ in row], [p for *_, p in row])
    return [results[i] for i in range(len(paths))]
