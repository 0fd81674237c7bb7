"""Datasets (torchvision's Fashion-MNIST and ImageFolder) and their loaders.

Corrupt images inside a dataset are *skipped and counted*: the loader drops them from the batch,
warns once per file with its path, and the training metrics record how many were skipped — one bad
JPEG in a million should not kill a day-long run, and should not go unnoticed either.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchvision import datasets

from .batch_transforms import BatchTransform, NotBatchable
from .files import atomic_path, cache_dir
from .preprocess import IMAGE_SUFFIXES, load_image

# Where `apt-get install -y dataset-fashion-mnist` puts the gzipped IDX files (`dpkg -L dataset-fashion-mnist`).
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DATASETS = ("fashion-mnist", "folder")
IDX_MAX_BYTES = 256 << 20  # the largest Fashion-MNIST file, the training images, is 47 MB uncompressed


def _fashion_mnist_root(src: str | os.PathLike) -> Path:
    """Unpack the IDX files into the layout torchvision expects (``<root>/FashionMNIST/raw``), once."""
    src = Path(src).resolve()
    # One unpacked copy per source directory and content (each file's size and modification time), so neither
    # --data OTHER_DIR nor a relabelled file is ever served a stale copy.
    files = [f for f in sorted(src.glob("*-ubyte*")) if f.is_file()]
    stamps = [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
    key = hashlib.sha256("|".join([str(src), *stamps]).encode()).hexdigest()[:12]
    raw = cache_dir() / "datasets" / key / "FashionMNIST" / "raw"
    for name in _IDX_FILES:
        if (raw / name).is_file():
            continue
        raw.mkdir(parents=True, exist_ok=True)
        if (src / name).is_file():
            with atomic_path(raw / name) as tmp:
                shutil.copyfile(src / name, tmp)
        elif (src / f"{name}.gz").is_file():
            try:
                with gzip.open(src / f"{name}.gz") as f_in, atomic_path(raw / name) as tmp, open(tmp, "wb") as f_out:
                    for chunk in iter(lambda: f_in.read(1 << 20), b""):
                        if f_out.tell() + len(chunk) > IDX_MAX_BYTES:
                            raise ValueError(f"{src / (name + '.gz')}: inflates past {IDX_MAX_BYTES:,} bytes, "
                                             "more than Fashion-MNIST's files")  # fmt: skip
                        f_out.write(chunk)
            except (OSError, EOFError) as e:
                raise ValueError(f"{src / (name + '.gz')}: not a readable gzip IDX file ({e})") from None
        else:
            raise FileNotFoundError(
                f"{src}: Fashion-MNIST file {name}(.gz) not found (install it with "
                f"`apt-get install -y dataset-fashion-mnist`, or pass --data DIR holding the IDX files)"
            )
    return raw.parent.parent


def fashion_mnist(root: str | os.PathLike | None, train: bool, transform=None) -> Dataset:
    """torchvision's FashionMNIST; with a transform ``BatchTransform`` can run, its in-memory batched form."""
    ds = datasets.FashionMNIST(_fashion_mnist_root(root or FASHION_MNIST_DIR), train=train)
    if transform is not None:
        try:
            batched = BatchTransform(transform)
        except NotBatchable:
            ds.transform = transform
            return ds
        split = "train" if train else "t10k"
        stat = (Path(ds.raw_folder) / f"{split}-images-idx3-ubyte").stat()  # what torchvision read the images from
        source = f"{ds.raw_folder}:{stat.st_size}:{stat.st_mtime_ns}"
        return InMemoryImages(ds.data.unsqueeze(1), ds.targets, ds.classes, batched, f"fashion-mnist-{split}", source)
    return ds


class InMemoryImages(Dataset):
    """Images held as one (N, C, H, W) uint8 tensor, transformed a batch at a time (batch_transforms.py).

    DataLoader fetches a batch with ``__getitems__``; the samples it returns are those ``__getitem__`` would.
    With ``name`` and ``source`` (what identifies the images), the pipeline's deterministic prefix (resize, …),
    which runs per image on PIL images, is computed once and kept as a .npy file in the cache directory, read
    through a memory map (shared by the loader's workers, kept across epochs and runs), up to
    ``PREPARED_MAX_BYTES``.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, classes: list[str], transform: BatchTransform,
                 name: str | None = None, source: str = ""):  # fmt: skip
        self.images, self.targets, self.classes, self.transform = images, targets, list(classes), transform
        self.prepared = _prepared(images, transform, name, source) if name else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        if self.prepared is not None:
            images = self.transform.after_prefix(torch.from_numpy(self.prepared[indices]))
        else:
            images = self.transform(self.images[indices])
        return list(zip(images, self.targets[indices].tolist()))


PREPARED_MAX_BYTES = 1 << 30  # Fashion-MNIST's 60,000 training images at 64 px take 246 MB, at 128 px 983 MB


def _prepared(images: torch.Tensor, transform: BatchTransform, name: str, source: str) -> np.ndarray | None:
    """``transform.prefix`` of every image, from the cache (computed and written atomically on first use)."""
    if transform.pil_prefix is None:
        return None
    shape = (len(images), *transform.prefix(images[:1]).shape[1:])
    if math.prod(shape) > PREPARED_MAX_BYTES:
        return None
    key = f"{source}|{transform.pil_prefix!r}|{torchvision.__version__}|{PIL.__version__}|{shape}"
    path = cache_dir() / "prepared" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"
    if not path.is_file():
        out = np.empty(shape, dtype=np.uint8)
        for start in range(0, len(images), 1024):
            out[start : start + 1024] = transform.prefix(images[start : start + 1024]).numpy()
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.save(f, out)
        except OSError as e:  # a read-only or full cache directory: keep the images in memory instead
            warnings.warn(f"{path}: not written ({e}); the resized images stay in memory", stacklevel=2)
            return out
    prepared = np.load(path, mmap_mode="r")  # allow_pickle stays False
    if prepared.shape != shape or prepared.dtype != np.uint8:
        raise ValueError(f"{path}: cached images of shape {prepared.shape}, expected {shape}; delete the file")
    return prepared


class SafeImageFolder(datasets.ImageFolder):
    """ImageFolder that yields ``None`` for an unreadable image instead of raising (see module docstring)."""

    def __init__(self, root, transform=None):
        super().__init__(root, transform=transform, loader=load_image, is_valid_file=_is_image)
        self._warned: set[str] = set()

    def __getitem__(self, index):
        path, target = self.samples[index]
        try:
            sample = self.loader(path)
        except ValueError as e:
            if path not in self._warned:
                self._warned.add(path)
                warnings.warn(f"skipping {e}", stacklevel=1)
            return None
        if self.transform is not None:
            sample = self.transform(sample)
        return sample, target


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


def image_folder(root: str | os.PathLike, split: str, transform=None) -> SafeImageFolder:
    """``<root>/<split>/<class>/<image>`` (ImageNet's layout): a clear one-line error for each bad layout."""
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise FileNotFoundError(f"{split_dir}: no such directory (expected {root}/{split}/<class>/<image>)")
    classes = [d for d in split_dir.iterdir() if d.is_dir()]
    if not classes:
        raise ValueError(f"{split_dir}: no class folders (expected {split_dir}/<class>/<image>)")
    try:
        return SafeImageFolder(str(split_dir), transform=transform)
    except FileNotFoundError as e:  # ImageFolder: "Found no valid file for the classes ..."
        raise ValueError(f"{split_dir}: empty split, no images with suffix {'/'.join(IMAGE_SUFFIXES)} ({e})") from None


def class_names(ds: Dataset) -> list[str]:
    while isinstance(ds, Subset):
        ds = ds.dataset
    return list(ds.classes)


def load_split(dataset: str, root: str | None, split: str, transform=None) -> Dataset:
    """``split`` is "train" or "val" (Fashion-MNIST's test set serves as "val")."""
    if dataset == "fashion-mnist":
        return fashion_mnist(root, train=split == "train", transform=transform)
    if dataset == "folder":
        if not root:
            raise ValueError("dataset 'folder' needs --data DIR (a tree with train/ and val/ subfolders)")
        return image_folder(root, split, transform)
    raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {dataset!r}")


def subset(ds: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """A fixed random subset of ``n`` samples (the same for every process and every resume)."""
    if not n or n >= len(ds):
        return ds
    g = torch.Generator().manual_seed(seed)
    return Subset(ds, torch.randperm(len(ds), generator=g)[:n].tolist())


@dataclass
class Batch:
    images: torch.Tensor
    labels: torch.Tensor
    skipped: int  # corrupt samples dropped from this batch

    def pin_memory(self) -> Batch:  # DataLoader(pin_memory=True) calls this on custom batch types
        return Batch(self.images.pin_memory(), self.labels.pin_memory(), self.skipped)


def collate_skipping(samples) -> Batch:
    good = [s for s in samples if s is not None]
    skipped = len(samples) - len(good)
    if not good:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), skipped)
    images = torch.stack([s[0] for s in good])
    labels = torch.tensor([s[1] for s in good], dtype=torch.long)
    return Batch(images, labels, skipped)


def train_loader(
    ds: Dataset, batch_size: int, seed: int, rank: int, world: int, workers: int, pin_memory: bool = False
) -> DataLoader:
    """Shuffled by DistributedSampler even on one process, so 1×2B and 2×B runs see the same global batches.

    ``pin_memory`` (for a GPU) lets the host-to-device copies run asynchronously. Workers are started afresh
    every epoch, seeded from the loader's generator (see :func:`start_epoch`): persistent workers would carry
    their random state from one epoch into the next, which a resumed run cannot reproduce.
    """
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skipping,
        drop_last=True,
        pin_memory=pin_memory,
        generator=torch.Generator(),
    )


def start_epoch(loader: DataLoader, seed: int, epoch: int, rank: int = 0) -> None:
    """All randomness of an epoch from (seed, epoch, rank) alone: a resumed run repeats it, and each DDP rank
    draws its own augmentation (rank 0's stream is a single process's)."""
    epoch_seed = seed * 100_003 + epoch + rank * 1_000_003
    torch.manual_seed(epoch_seed)  # dropout, and the augmentation of a loader without workers
    loader.sampler.set_epoch(epoch)  # the sample order, the same on every rank
    loader.generator.manual_seed(epoch_seed)  # the workers' seeds


def eval_loader(
    ds: Dataset, batch_size: int, rank: int = 0, world: int = 1, workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """Each rank takes every world-th sample, with no padding, so summed counts are exact."""
    shard = ds if world == 1 else Subset(ds, list(range(rank, len(ds), world)))
    return DataLoader(
        shard,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_skipping,
        persistent_workers=workers > 0,  # evaluated every epoch: start the workers once
        pin_memory=pin_memory,
    )
