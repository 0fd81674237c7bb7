"""A torchvision v2 pipeline run on a batch of in-memory images, with each image's own random parameters.

Fashion-MNIST sits in memory as one uint8 tensor, yet the per-image pipeline (PIL image → resize → random crop
→ flip → float → normalise → random erasing) costs ~0.8 ms per 28×28 image, nearly all of it v2's dispatch.
On a 2-core machine the loader worker doing that took 14% off a 64 px training step (633 vs 546 ms at batch 128,
Zen 3). ``BatchTransform`` takes the same ``v2.Compose`` and runs it a batch at a time:

- deterministic transforms (resize, dtype, normalise, channel conversion) are called once on the whole batch;
- random ones draw each image's parameters with their own ``make_params`` (and coin ``torch.rand(1) >= p``, as
  ``_RandomApplyTransform`` does), in the same order per image, and apply them by slicing.

The batch stands for what torchvision's FashionMNIST hands its transform: PIL images until ``v2.ToImage``.
Before it only steps whose tensor form equals their PIL form are taken (geometry with constant padding,
channel conversion, and the antialiased bilinear resize where torchvision's uint8 kernel reproduces PIL's);
anything else raises ``NotBatchable`` and the dataset stays per image. For a batch of one image the result is
the per-image pipeline's, random draws included (``tests/test_batch_transforms.py``).
"""

from __future__ import annotations

import platform
from functools import partial

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# Transforms with no randomness: called on the batch as they are.
_DETERMINISTIC = (v2.Grayscale, v2.RGB, v2.Resize, v2.CenterCrop, v2.ToImage, v2.ToDtype, v2.Normalize)
# Those whose uint8 tensor form equals their PIL form, so they may come before ToImage.
_LIKE_PIL = (v2.Grayscale, v2.RGB, v2.Resize, v2.CenterCrop, v2.RandomCrop, v2.RandomHorizontalFlip)


class NotBatchable(TypeError):
    """The pipeline holds a transform ``BatchTransform`` cannot run on a batch as it runs per image."""


class BatchTransform:
    def __init__(self, compose: v2.Compose):
        transforms = list(compose.transforms if isinstance(compose, v2.Compose) else [compose])
        if not any(isinstance(t, v2.ToImage) for t in transforms):
            raise NotBatchable("no ToImage: the per-image pipeline would return PIL images")
        before_image = True
        for t in transforms:
            before_image = before_image and not isinstance(t, v2.ToImage)
            if before_image and not (isinstance(t, _LIKE_PIL) and _like_pil(t)):
                raise NotBatchable(f"{t!r} before ToImage acts on PIL images differently from tensors")
        self.steps = [_step(t) for t in transforms]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) uint8 images → what the pipeline makes of each, stacked; a plain tensor."""
        x = images
        for step in self.steps:
            x = step(x)
        return x.as_subclass(torch.Tensor)


def _like_pil(t) -> bool:
    if isinstance(t, v2.Resize):
        # torchvision's own test for its uint8 bilinear kernel (functional._geometry._do_native_uint8_resize_on_cpu),
        # which reproduces PIL's resize bit for bit; elsewhere it resizes in float and rounds (1/255 off), and
        # other interpolations differ from PIL's too.
        native = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in (
            "aarch64",
            "arm64",
        )
        bilinear = v2.InterpolationMode(t.interpolation) == v2.InterpolationMode.BILINEAR  # a str in 0.29
        return bilinear and bool(t.antialias) and native
    if isinstance(t, v2.RandomCrop):  # reflect/symmetric padding beyond the image: PIL pads, tensors refuse
        return t.padding_mode == "constant"
    return True


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
