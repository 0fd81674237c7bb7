"""A torchvision v2 pipeline run on a batch of in-memory images, with each image's own random parameters.

Fashion-MNIST sits in memory as one uint8 tensor, yet the per-image pipeline (PIL image → resize → random crop
→ flip → float → normalise → random erasing) costs ~0.8 ms per 28×28 image, nearly all of it v2's dispatch.
On a 2-core machine the loader worker doing that took 14% off a 64 px training step (633 vs 546 ms at batch 128,
Zen 3). ``BatchTransform`` takes the same ``v2.Compose`` and runs it a batch at a time:

- deterministic transforms (resize, dtype, normalise, channel conversion) are called once on the whole batch;
  torchvision's uint8 tensor resize equals its PIL resize bit for bit;
- random ones draw each image's parameters with their own ``make_params`` (and coin ``torch.rand(1) >= p``, as
  ``_RandomApplyTransform`` does), in the same order per image, and apply them by slicing.

For a batch of one image the result is the per-image pipeline's, random draws included
(``tests/test_batch_transforms.py``).
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# Transforms with no randomness: called on the batch as they are.
_DETERMINISTIC = (v2.Grayscale, v2.RGB, v2.Resize, v2.CenterCrop, v2.ToImage, v2.ToDtype, v2.Normalize)


class NotBatchable(TypeError):
    """The pipeline holds a transform ``BatchTransform`` cannot run on a batch; use it per image."""


class BatchTransform:
    def __init__(self, compose: v2.Compose):
        transforms = compose.transforms if isinstance(compose, v2.Compose) else [compose]
        self.steps = [_step(t) for t in transforms]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images, e.g. uint8 → what the pipeline makes of each, stacked; a plain tensor."""
        x = images
        for step in self.steps:
            x = step(x)
        return x.as_subclass(torch.Tensor)


def _step(t):
    if isinstance(t, _DETERMINISTIC):
        return t
    if isinstance(t, v2.RandomCrop) and not isinstance(t.fill, dict):
        return lambda x: random_crop(t, x)
    if isinstance(t, v2.RandomHorizontalFlip):
        return lambda x: random_flip(t, x)
    if isinstance(t, v2.RandomErasing):
        return lambda x: random_erasing(t, x)
    raise NotBatchable(f"{type(t).__name__} has no batched form")


def random_crop(t: v2.RandomCrop, x: torch.Tensor) -> torch.Tensor:
    x = x.as_subclass(torch.Tensor)  # plain tensors: indexing a tv_tensor goes through __torch_function__
    params = [t.make_params([image]) for image in x]
    if params[0]["needs_pad"]:  # the padding depends on the size only: the same for every image
        x = F.pad(x, padding=params[0]["padding"], fill=t.fill, padding_mode=t.padding_mode)
    if not params[0]["needs_crop"]:
        return x
    height, width = params[0]["height"], params[0]["width"]
    crops = [image[..., p["top"] : p["top"] + height, p["left"] : p["left"] + width] for image, p in zip(x, params)]
    return torch.stack(crops)


def random_flip(t: v2.RandomHorizontalFlip, x: torch.Tensor) -> torch.Tensor:
    x = x.as_subclass(torch.Tensor)
    flip = torch.tensor([bool(torch.rand(1) < t.p) for _ in range(len(x))])
    return torch.where(flip.view(-1, *[1] * (x.dim() - 1)), x.flip(-1), x)


def random_erasing(t: v2.RandomErasing, x: torch.Tensor) -> torch.Tensor:
    x = x.as_subclass(torch.Tensor).clone()
    for image in x:
        if torch.rand(1) >= t.p:
            continue
        p = t.make_params([image])
        if p["v"] is not None:  # None: no rectangle fitted in 10 tries, so the image stays as it is
            image[..., p["i"] : p["i"] + p["h"], p["j"] : p["j"] + p["w"]] = p["v"]
    return x
