"""Top-k predictions for image files; an unreadable file is reported and the others still run."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch

from .checkpoint import from_pretrained
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
        logits = model(torch.stack([t for _, t in chunk]))[:, info.label_offset : info.label_offset + len(names)]
        probs = logits.float().softmax(1)
        top = probs.topk(k, 1)
        for (i, _), p, idx in zip(chunk, top.values.tolist(), top.indices.tolist()):
            results[i] = Prediction(str(paths[i]), [names[j] for j in idx], idx, p)
    return [results[i] for i in range(len(paths))]
