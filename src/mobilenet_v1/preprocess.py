"""Images in, tensors out: decoding any common image, and the train/eval transforms (torchvision v2)."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import InterpolationMode, v2

from .checkpoint import Preprocessing
from .tf_resize import tf1_resize_bilinear

PRESETS = ("inception", "small")
SMALL_ERASING = 0.25  # the ``small`` preset's default random-erasing probability
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


# Larger images are refused before decoding (PIL's own limit, 89 M pixels, only warns): 64 M pixels is an 8K × 8K
# photo, far above what a MobileNet input is cropped from, and ~200 MB decoded.
MAX_PIXELS = 1 << 26


def load_image(path: str | os.PathLike, grayscale: bool = False) -> Image.Image:
    """Decode an image to 8-bit RGB (or L): handles palette, RGBA, CMYK, grayscale and 16-bit files.

    Raises ``ValueError`` naming the file when it is not a readable image.
    """
    try:
        with Image.open(path) as im:  # reads the header only: the size is known before any pixel is decoded
            if im.width * im.height > MAX_PIXELS:
                raise ValueError(f"{path}: {im.width}×{im.height} pixels is over the {MAX_PIXELS:,} read here "
                                 "(a decompression bomb, or a photo to downscale first)")  # fmt: skip
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit: PIL's convert("L") clips at 255 instead of scaling; scale the full range down.
                arr = np.asarray(im, dtype=np.float64)
                scale = 65535.0 if arr.max() > 255 else 255.0
                im = Image.fromarray(np.clip(arr / scale * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
            elif im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                # Composite transparency on white, as a viewer shows it, rather than dropping alpha to black.
                rgba = im.convert("RGBA")
                background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, rgba)
            return im.convert("L" if grayscale else "RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except ValueError as e:
        if str(e).startswith(f"{path}: "):
            raise
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


def _channels(pre: Preprocessing):
    # One channel for in_chans=1 models; otherwise grayscale inputs are replicated to RGB.
    return v2.Grayscale(1) if pre.grayscale else v2.RGB()


def _to_input(pre: Preprocessing):
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(pre.mean), std=list(pre.std))]


def _interp(name: str) -> InterpolationMode:
    return InterpolationMode("bilinear" if name == "tf1_bilinear" else name)


_PIL_RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


class CentralCropResize:
    """TF-slim's evaluation geometry: the central ``fraction`` of each side, as ``tf.image.central_crop`` rounds it,
    then resized to ``size`` × ``size``, on float pixels in [0, 1]; ``tf1`` uses TensorFlow 1's resize_bilinear
    (what TF-slim ran), else PIL's with ``interpolation``. A PIL image in, a float CHW tensor out."""

    def __init__(self, fraction: float, size: int, interpolation: str = "tf1_bilinear"):
        self.fraction, self.size, self.interpolation = fraction, size, interpolation

    def __call__(self, img: Image.Image) -> torch.Tensor:
        w, h = img.size
        top, left = int((h - h * self.fraction) / 2), int((w - w * self.fraction) / 2)
        if self.interpolation == "tf1_bilinear":
            arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)  # TF-slim: convert_image_dtype first
            arr = arr[..., None] if arr.ndim == 2 else arr
            arr = tf1_resize_bilinear(arr[top : h - top, left : w - left], self.size, self.size)
        else:
            crop = img.crop((left, top, w - left, h - top))
            arr = np.asarray(crop.resize((self.size, self.size), _PIL_RESAMPLE[self.interpolation]), np.float32) / 255
        return torch.from_numpy(np.ascontiguousarray(arr.reshape(self.size, self.size, -1).transpose(2, 0, 1)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fraction={self.fraction}, size={self.size}, interpolation={self.interpolation})"


def eval_transform(pre: Preprocessing) -> v2.Compose:
    """Resize (shorter side to ``resize``, then centre crop) or straight to ``input_size``, or TF-slim's central
    crop then resize (``crop_fraction``); normalise."""
    size = pre.input_size
    if pre.crop_fraction is not None:
        geometry = CentralCropResize(pre.crop_fraction, size, pre.interpolation)
        return v2.Compose([_channels(pre), geometry, v2.Normalize(mean=list(pre.mean), std=list(pre.std))])
    if pre.resize:
        geometry = [
            v2.Resize(pre.resize, interpolation=_interp(pre.interpolation), antialias=True),
            v2.CenterCrop(size),
        ]
    else:
        geometry = [v2.Resize((size, size), interpolation=_interp(pre.interpolation), antialias=True)]
    return v2.Compose([_channels(pre), *geometry, *_to_input(pre)])


def erasing_probability(preset: str, erasing: float | None) -> float:
    """The random-erasing probability a training pipeline uses: ``erasing``, or the preset's when ``None``."""
    if erasing is None:
        return SMALL_ERASING if preset == "small" else 0.0
    if not 0.0 <= erasing <= 1.0:
        raise ValueError(f"random erasing probability must be in [0, 1]; got {erasing!r}")
    return erasing


def train_transform(
    pre: Preprocessing, preset: str = "inception", augment: bool = True, erasing: float | None = None
) -> v2.Compose:
    """Training transforms.

    ``inception``: the paper's ImageNet preprocessing (Inception-style random resized crop + flip);
    ``small``: resize to the input size, random crop with padding + flip, random erasing (28–64 px data such
    as Fashion-MNIST; random erasing is Zhong et al. 2017's regulariser, evaluated on Fashion-MNIST there).
    ``augment=False`` gives the evaluation transform (deterministic runs, tests).
    ``erasing``: the probability of random erasing (timm's ``--reprob``); ``None`` takes the preset's
    (``small``: 0.25, ``inception``: 0).
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(PRESETS)}; got {preset!r}")
    erasing = erasing_probability(preset, erasing)
    if not augment:
        return eval_transform(pre)
    size, interp = pre.input_size, _interp(pre.interpolation)
    if preset == "inception":
        geometry = [v2.RandomResizedCrop(size, scale=(0.08, 1.0), interpolation=interp, antialias=True)]
    else:
        geometry = [
            v2.Resize((size, size), interpolation=interp, antialias=True),
            v2.RandomCrop(size, padding=size // 8, padding_mode="constant"),
        ]
    erase = [v2.RandomErasing(p=erasing, value=0)] if erasing > 0 else []
    return v2.Compose([_channels(pre), *geometry, v2.RandomHorizontalFlip(), *_to_input(pre), *erase])


def default_preprocessing(preset: str, input_size: int, grayscale: bool) -> Preprocessing:
    """Preprocessing recorded in a run's config.json (and used by eval/predict/export)."""
    if grayscale:
        mean, std = (0.5,), (0.5,)
    else:
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    resize = round(input_size / 0.875) if preset == "inception" else None  # the usual 87.5% centre crop
    return Preprocessing(input_size=input_size, resize=resize, mean=mean, std=std, grayscale=grayscale)


def image_to_tensor(path: str | os.PathLike, pre: Preprocessing) -> torch.Tensor:
    """One file -> a (C, H, W) float tensor ready for the model."""
    return eval_transform(pre)(load_image(path, grayscale=pre.grayscale))
