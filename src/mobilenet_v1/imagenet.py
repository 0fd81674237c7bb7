"""ImageNet-1k class names, and the 1001-class layout of Google's TF-slim heads.

The 1000 names are those torchvision ships (``torchvision.models._meta._IMAGENET_CATEGORIES``), copied
into ``data/imagenet_classes.txt`` so predicting needs no torchvision internals. Keras and timm heads
have 1000 logits in this order. Google's TF-slim heads have 1001: logit 0 is "background" and logit
``k`` is ImageNet class ``k - 1``; :class:`~mobilenet_v1.checkpoint.Pretrained` records that as
``label_offset = 1``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

NUM_CLASSES = 1000
BACKGROUND = "background"
_NAMES_FILE = Path(__file__).with_name("data") / "imagenet_classes.txt"


@lru_cache(maxsize=1)
def _names() -> tuple[str, ...]:
    names = tuple(line for line in _NAMES_FILE.read_text(encoding="utf-8").splitlines() if line)
    if len(names) != NUM_CLASSES:
        raise ValueError(f"{_NAMES_FILE}: expected {NUM_CLASSES} class names, found {len(names)}")
    return names


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in the standard (synset-sorted) order."""
    return list(_names())


def imagenet_labels(num_classes: int) -> tuple[list[str] | None, int]:
    """``(class_names, label_offset)`` for a head with ``num_classes`` logits.

    1000 → the names, offset 0; 1001 → the same names, offset 1 (logit 0 is background);
    anything else → ``(None, 0)``: not an ImageNet head.
    """
    if num_classes == NUM_CLASSES:
        return imagenet_classes(), 0
    if num_classes == NUM_CLASSES + 1:
        return imagenet_classes(), 1
    return None, 0


def label_of(index: int, class_names: list[str] | None, label_offset: int = 0) -> str:
    """The name of logit ``index``: ``background`` below the offset, ``class_names[index - offset]``
    otherwise, ``#index`` when there are no names."""
    if index < label_offset:
        return BACKGROUND
    if class_names is None or index - label_offset >= len(class_names):
        return f"#{index}"
    return class_names[index - label_offset]
