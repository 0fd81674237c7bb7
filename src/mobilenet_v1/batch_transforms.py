"""A torchvision v2 pipeline run on a batch of in-memory images, with each image's own random parameters.

Fashion-MNIST sits in memory as one uint8 tensor, yet the per-image pipeline (PIL image → resize → random crop
→ flip → float → normalise → random erasing) costs ~0.8 ms per 28×28 image, nearly all of it v2's dispatch.
On a 2-core machine the loader worker doing that took 14% off a 64 px training step (633 vs 546 ms at batch
128). ``BatchTransform`` takes the same ``v2.Compose`` and runs it a batch at a time.

The batch stands for what torchvision's FashionMNIST hands its transform: PIL images until ``v2.ToImage``.
- The pipeline's leading deterministic steps (channel conversion, resize, centre crop) run per image on PIL
  images, as they are: tensor resizes differ from PIL's by 1/255 at most output sizes, and grayscale conversion
  of an RGB image too.
- Random steps draw each image's parameters with their own ``make_params`` (and coin ``torch.rand(1) >= p``, as
  ``_RandomApplyTransform`` does), in the same order per image, and apply them by slicing. Before ``ToImage``
  only those whose slicing equals PIL are taken: a crop with constant padding by a uint8 value, a flip.
- The rest (``ToImage``, dtype, normalisation, erasing, …) runs on the whole batch.

Anything else raises ``NotBatchable`` and the dataset stays per image. For a batch of one image the result is
the per-image pipeline's, random draws included (``tests/test_batch_transforms.py``).
"""

from __future__ import annotations

from functools import partial

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# Transforms with no randomness: called on the batch as they are (after ToImage), or per PIL image (before).
_DETERMINISTIC = (v2.Grayscale, v2.RGB, v2.Resize, v2.CenterCrop, v2.ToImage, v2.ToDtype, v2.Normalize)


class NotBatchable(TypeError):
    """The pipeline holds a transform ``BatchTransform`` cannot run on a batch as it runs per image."""


class BatchTransform:
    def __init__(self, compose: v2.Compose):
        transforms = list(compose.transforms if isinstance(compose, v2.Compose) else [compose])
        if not any(isinstance(t, v2.ToImage) for t in transforms):
            raise NotBatchable("no ToImage: the per-image pipeline would return PIL images")
        n = 0
        while isinstance(transforms[n], _DETERMINISTIC) and not isinstance(transforms[n], v2.ToImage):
            n += 1
        self.pil_prefix = v2.Compose(transforms[:n]) if n else None
        rest = transforms[n:]
        for t in rest[: next(i for i, t in enumerate(rest) if isinstance(t, v2.ToImage))]:
            if not _slices_like_pil(t):
                raise NotBatchable(f"{t!r} before ToImage, after a random step, would not act as on PIL images")
        self.steps = [_step(t) for t in rest]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) uint8 images → what the pipeline makes of each, stacked; a plain tensor."""
        return self.after_prefix(self.prefix(images))

    def prefix(self, images: torch.Tensor) -> torch.Tensor:
        """The leading deterministic steps, per image on PIL images: uint8 in, uint8 out. Its output depends on
        the image alone, so a dataset may compute it once (data.InMemoryImages)."""
        if self.pil_prefix is None:
            return images
        return torch.stack([F.pil_to_tensor(self.pil_prefix(_pil(image))) for image in images])

    def after_prefix(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            x = step(x)
        return x.as_subclass(torch.Tensor)


def _pil(image: torch.Tensor) -> Image.Image:
    """What torchvision's MNIST-style datasets make of a stored image (Image.fromarray of the array)."""
    array = image.numpy()
    return Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))  # mode L or RGB


def _slices_like_pil(t) -> bool:
    if isinstance(t, v2.RandomHorizontalFlip):
        return True
    # constant padding by a uint8 value: PIL pads reflect/symmetric beyond the image and clips other fills
    return isinstance(t, v2.RandomCrop) and t.padding_mode == "constant" and t.fill in range(256)


def _step(t):
    if isinstance(t, v2.ToDtype) and isinstance(t.dtype, dict):  # the random steps return plain tensors
        raise NotBatchable("ToDtype with a dtype per type")
    if isinstance(t, _DETERMINISTIC):
        return t
    if isinstance(t, v2.RandomCrop) and not isinstance(t.fill, dict):
        return partial(_plain, random_crop, t)
    if isinstance(t, v2.RandomHorizontalFlip):
        return partial(_plain, random_flip, t)
    if isinstance(t, v2.RandomErasing):
        return partial(_plain, random_erasing, t)
    raise NotBatchable(f"{type(t).__name__} has no batched form")


def _plain(fn, t, x: torch.Tensor) -> torch.Tensor:
    return fn(t, x.as_subclass(torch.Tensor))  # indexing a tv_tensor goes through __torch_function__: slow


def random_crop(t: v2.RandomCrop, x: torch.Tensor) -> torch.Tensor:
    params = [t.make_params([image]) for image in x]
    if params[0]["needs_pad"]:  # the padding depends on the size only: the same for every image
        x = F.pad(x, padding=params[0]["padding"], fill=t.fill, padding_mode=t.padding_mode)
    if not params[0]["needs_crop"]:
        return x
    height, width = params[0]["height"], params[0]["width"]
    crops = [image[..., p["top"] : p["top"] + height, p["left"] : p["left"] + width] for image, p in zip(x, params)]
    return torch.stack(crops)


def random_flip(t: v2.RandomHorizontalFlip, x: torch.Tensor) -> torch.Tensor:
    flip = torch.tensor([bool(torch.rand(1) < t.p) for _ in range(len(x))])
    return torch.where(flip.view(-1, *[1] * (x.dim() - 1)), x.flip(-1), x)


def random_erasing(t: v2.RandomErasing, x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    for image in x:
        if torch.rand(1) >= t.p:
            continue
        p = t.make_params([image])
        if p["v"] is not None:  # None: no rectangle fitted in 10 tries, so the image stays as it is
            image[..., p["i"] : p["i"] + p["h"], p["j"] : p["j"] + p["w"]] = p["v"]
    return x
