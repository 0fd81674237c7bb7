"""The batched pipeline against torchvision's own per-image pipeline, on real Fashion-MNIST images."""

from pathlib import Path

import pytest
import torch
from PIL import Image
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


@pytest.mark.parametrize("size,grayscale", [(64, True), (32, False), (96, True), (28, True)])
def test_one_image_batches_equal_the_per_image_pipeline_random_draws_included(images, size, grayscale):
    tf = _pipeline(size, grayscale, augment=True)
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
    x = torch.rand(4, 1, 16, 16)
    before = x.clone()
    out = BatchTransform(v2.Compose([v2.RandomErasing(p=1.0, value=0)]))(x)
    assert torch.equal(x, before) and not torch.equal(out, before)
