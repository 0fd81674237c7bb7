"""The batched pipeline against torchvision's own per-image pipeline, on real Fashion-MNIST images; the loaders."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from mobilenet_v1 import data
from mobilenet_v1.batch_transforms import BatchTransform, NotBatchable
from mobilenet_v1.data import FASHION_MNIST_DIR
from mobilenet_v1.preprocess import default_preprocessing, train_transform

FASHION_MNIST = Path(FASHION_MNIST_DIR)


@pytest.fixture(scope="module")
def images():
    if not FASHION_MNIST.is_dir():
        pytest.fail("Fashion-MNIST missing: apt-get install -y dataset-fashion-mnist (.ci/run does this)")
    return data.fashion_mnist(FASHION_MNIST, train=False).data[:64]  # (64, 28, 28) uint8


def _pipeline(size: int, grayscale: bool, augment: bool, preset: str = "small") -> v2.Compose:
    return train_transform(default_preprocessing(preset, size, grayscale), preset, augment)


def _per_image(tf: v2.Compose, image: torch.Tensor) -> torch.Tensor:
    return tf(Image.fromarray(image.numpy(), mode="L"))  # what torchvision's FashionMNIST feeds its transform


@pytest.mark.parametrize(
    "size,grayscale,preset,augment",
    [(64, True, "small", True), (32, False, "small", True), (96, True, "small", True), (28, True, "small", True),
     (50, True, "small", True), (72, False, "small", True), (64, True, "inception", False)],
)  # fmt: skip
def test_one_image_batches_equal_the_per_image_pipeline_random_draws_included(images, size, grayscale, preset, augment):
    """Sizes 50 and 72 (and the inception preset's resize to 73 + centre crop): where torchvision's uint8 tensor
    resize is 1/255 off PIL's, so the resize must run on PIL images."""
    tf = _pipeline(size, grayscale, augment=augment, preset=preset)
    batched = BatchTransform(tf)
    for k, image in enumerate(images):
        torch.manual_seed(k)
        want = _per_image(tf, image)
        torch.manual_seed(k)
        got = batched(image[None, None])[0]
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got, want), f"image {k}"


def test_evaluation_batches_equal_the_per_image_pipeline(images):
    tf = _pipeline(64, True, augment=False)
    want = torch.stack([_per_image(tf, image) for image in images])
    assert torch.equal(BatchTransform(tf)(images[:, None]), want)


def test_each_image_of_a_batch_gets_its_own_parameters(images, monkeypatch):
    """Record every draw of a 64-image batch, then replay them image by image with v2's functional ops."""
    tf = _pipeline(64, True, augment=True)
    crop, flip, erase = (
        next(t for t in tf.transforms if isinstance(t, c))
        for c in (v2.RandomCrop, v2.RandomHorizontalFlip, v2.RandomErasing)
    )
    drawn = {"crop": [], "erase": []}
    for name, t in (("crop", crop), ("erase", erase)):
        original = t.make_params
        monkeypatch.setattr(t, "make_params", lambda flat, o=original, n=name: drawn[n].append(o(flat)) or drawn[n][-1])
    coins = []
    real_rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *a, **k: coins.append(real_rand(*a, **k)) or coins[-1])
    torch.manual_seed(0)
    got = BatchTransform(tf)(images[:, None])
    monkeypatch.undo()
    flips, erase_coins = coins[: len(images)], iter(coins[len(images) :])
    erasures = iter(drawn["erase"])
    norm = next(t for t in tf.transforms if isinstance(t, v2.Normalize))
    assert len({(p["top"], p["left"]) for p in drawn["crop"]}) > 20  # not one crop for the whole batch
    for k, image in enumerate(images):
        x = F.resize(image[None], [64, 64], antialias=True)
        p = drawn["crop"][k]
        x = F.crop(F.pad(x, p["padding"], fill=0), p["top"], p["left"], 64, 64)
        if flips[k] < flip.p:
            x = F.horizontal_flip(x)
        x = F.normalize(F.to_dtype(x, torch.float32, scale=True), norm.mean, norm.std)
        if next(erase_coins) < erase.p:
            e = next(erasures)
            if e["v"] is not None:
                x = F.erase(x, e["i"], e["j"], e["h"], e["w"], e["v"])
        assert torch.equal(got[k], x), f"image {k}"
    assert 0.3 < sum(bool(c < flip.p) for c in flips) / len(flips) < 0.7


def test_a_transform_without_a_batched_form_falls_back_to_the_per_image_pipeline(images):
    tf = _pipeline(64, True, augment=True, preset="inception")  # RandomResizedCrop: per image
    with pytest.raises(NotBatchable, match="RandomResizedCrop"):
        BatchTransform(tf)
    ds = data.fashion_mnist(FASHION_MNIST, train=False, transform=tf)
    assert not isinstance(ds, data.InMemoryImages)
    assert ds[0][0].shape == (1, 64, 64)


def test_the_dataset_serves_batches_and_single_samples_alike(images):
    ds = data.fashion_mnist(FASHION_MNIST, train=False, transform=_pipeline(64, True, augment=False))
    assert isinstance(ds, data.InMemoryImages) and len(ds) == 10_000 and len(ds.classes) == 10
    batch = ds.__getitems__([5, 0, 9999])
    for (image, label), index in zip(batch, [5, 0, 9999]):
        single, single_label = ds[index]
        assert torch.equal(image, single) and label == single_label == int(ds.targets[index])
    loader = data.eval_loader(data.subset(ds, 300), 128)
    assert [len(b.labels) for b in loader] == [128, 128, 44]


def test_the_input_batch_is_left_as_it_was():
    x = torch.randint(1, 255, (4, 1, 16, 16), dtype=torch.uint8)
    before = x.clone()
    out = BatchTransform(v2.Compose([v2.ToImage(), v2.RandomErasing(p=1.0, value=0)]))(x)  # ToImage: no copy
    assert torch.equal(x, before) and not torch.equal(out, before)


@pytest.mark.parametrize(
    "transforms,why",
    [
        ([v2.RandomCrop(64, pad_if_needed=True, padding_mode="reflect"), v2.ToImage()], "before ToImage"),
        ([v2.RandomCrop(32, padding=2, fill=300), v2.ToImage()], "before ToImage"),
        ([v2.RandomHorizontalFlip(), v2.Grayscale(), v2.ToImage()], "before ToImage"),
        ([v2.RandomHorizontalFlip()], "no ToImage"),
        ([v2.ToImage(), v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)], "per type"),
    ],
)
def test_pipelines_that_would_differ_from_the_per_image_one_are_refused(transforms, why):
    with pytest.raises(NotBatchable, match=why):
        BatchTransform(v2.Compose(transforms))


@pytest.mark.parametrize(
    "transforms",
    [
        [v2.Resize(40, interpolation=v2.InterpolationMode.BICUBIC), v2.ToImage()],
        [v2.Resize(45), v2.RandomHorizontalFlip(), v2.ToImage()],
        [v2.RGB(), v2.Grayscale(), v2.RandomCrop(28, padding=3, fill=17), v2.ToImage()],
    ],
)
def test_deterministic_steps_before_to_image_run_on_pil_images(images, transforms):
    """Tensor resizes, and the grayscale of an RGB image, differ from PIL's: these run per image on PIL."""
    tf = v2.Compose(transforms)
    batched = BatchTransform(tf)
    for k, image in enumerate(images[:16]):
        torch.manual_seed(k)
        want = _per_image(tf, image)
        torch.manual_seed(k)
        assert torch.equal(batched(image[None, None])[0], want), f"image {k}"


def test_the_dataset_pickles_and_serves_spawned_workers(images):
    """Worker processes started by spawn (macOS, Windows) or forkserver get the dataset pickled."""
    ds = data.fashion_mnist(FASHION_MNIST, train=False, transform=_pipeline(32, True, augment=True))
    clone = pickle.loads(pickle.dumps(ds))
    torch.manual_seed(3)
    want = clone.__getitems__([1, 2, 3])
    torch.manual_seed(3)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(ds.__getitems__([1, 2, 3]), want))
    loader = torch.utils.data.DataLoader(
        data.subset(ds, 64), batch_size=32, num_workers=1, multiprocessing_context="spawn",
        collate_fn=data.collate_skipping,
    )  # fmt: skip
    assert [tuple(b.images.shape) for b in loader] == [(32, 1, 32, 32)] * 2


@pytest.mark.parametrize("workers", [0, 1])
def test_an_epoch_is_the_same_whether_or_not_the_loader_ran_the_epochs_before_it(workers):
    """What --resume relies on: epoch 1 of an uninterrupted loader equals epoch 1 of a fresh one."""
    ds = data.subset(data.fashion_mnist(FASHION_MNIST, train=False, transform=_pipeline(32, True, True)), 96)

    def epoch(loader, e):
        data.start_epoch(loader, seed=5, epoch=e)
        return [(b.images, b.labels) for b in loader]

    running = data.train_loader(ds, 32, seed=5, rank=0, world=1, workers=workers)
    first, second = epoch(running, 0), epoch(running, 1)
    resumed = epoch(data.train_loader(ds, 32, seed=5, rank=0, world=1, workers=workers), 1)
    assert not torch.equal(first[0][0], second[0][0])
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(second, resumed))


def test_the_resize_is_computed_once_and_kept_in_the_cache(monkeypatch, tmp_path):
    """The per-image PIL prefix of every image is stored once (.npy, memory-mapped) and read back as computed."""
    monkeypatch.setenv("MOBILENET_V1_CACHE", str(tmp_path))
    tf = _pipeline(50, True, augment=True)
    ds = data.fashion_mnist(FASHION_MNIST, train=False, transform=tf)
    (cached,) = (tmp_path / "prepared").glob("fashion-mnist-t10k-*.npy")
    assert ds.prepared.shape == (10_000, 1, 50, 50)
    for k in (0, 1234, 9999):
        torch.manual_seed(k)
        want = _per_image(tf, ds.images[k, 0])
        torch.manual_seed(k)
        assert torch.equal(ds[k][0], want), f"image {k}"
    stamp = cached.stat().st_mtime_ns
    again = data.fashion_mnist(FASHION_MNIST, train=False, transform=tf)
    assert cached.stat().st_mtime_ns == stamp and np.array_equal(again.prepared[:100], ds.prepared[:100])
    data.fashion_mnist(FASHION_MNIST, train=False, transform=_pipeline(32, True, augment=True))
    assert len(list((tmp_path / "prepared").glob("*.npy"))) == 2  # another size, another file
    np.save(cached, np.zeros((3, 1, 50, 50), dtype=np.uint8))
    with pytest.raises(ValueError, match="cached images of shape"):
        data.fashion_mnist(FASHION_MNIST, train=False, transform=tf)


def test_a_cache_that_cannot_be_written_keeps_the_images_in_memory(monkeypatch, tmp_path):
    monkeypatch.setenv("MOBILENET_V1_CACHE", str(tmp_path))
    data.fashion_mnist(FASHION_MNIST, train=False)  # unpack the IDX files first
    (tmp_path / "prepared").write_text("a file where the directory should be")
    with pytest.warns(UserWarning, match="not written"):
        ds = data.fashion_mnist(FASHION_MNIST, train=False, transform=_pipeline(50, True, augment=False))
    want = _per_image(_pipeline(50, True, augment=False), ds.images[7, 0])
    assert ds.prepared.shape == (10_000, 1, 50, 50) and torch.equal(ds[7][0], want)


@pytest.mark.parametrize("workers", [0, 1])
def test_each_rank_draws_its_own_augmentation(images, workers):
    """64 copies of one image: two ranks' batches can differ only by their augmentation."""
    tf = BatchTransform(_pipeline(32, True, augment=True))
    ds = data.InMemoryImages(images[:1, None].repeat(64, 1, 1, 1), torch.zeros(64, dtype=torch.long), ["x"], tf)
    batches = []
    for rank in (0, 1):
        loader = data.train_loader(ds, 16, seed=5, rank=rank, world=2, workers=workers)
        data.start_epoch(loader, seed=5, epoch=0, rank=rank)
        batches.append(next(iter(loader)).images)
    assert not torch.equal(batches[0], batches[1])


def test_random_erasing_probability_is_the_presets_unless_given(images):
    """``--random-erasing P``: None keeps the preset's (small 0.25, inception none); 0 drops the step; the pipeline
    without it is still batched exactly."""

    def erasing(tf):
        return [t.p for t in tf.transforms if isinstance(t, v2.RandomErasing)]

    pre = default_preprocessing("small", 48, True)
    assert erasing(train_transform(pre, "small")) == [0.25]
    assert erasing(train_transform(pre, "inception")) == []
    assert erasing(train_transform(pre, "small", erasing=0.0)) == []
    assert erasing(train_transform(pre, "inception", erasing=0.5)) == [0.5]
    with pytest.raises(ValueError, match=r"random erasing probability must be in \[0, 1\]; got -0.1"):
        train_transform(pre, "small", erasing=-0.1)
    tf = train_transform(pre, "small", erasing=0.0)
    for k, image in enumerate(images[:8]):
        torch.manual_seed(k)
        want = _per_image(tf, image)
        torch.manual_seed(k)
        assert torch.equal(BatchTransform(tf)(image[None, None])[0], want)
