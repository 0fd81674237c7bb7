"""Shared by tests/test_deploy_*.py: models with realistic batch-norm statistics and O(1) logits."""

from __future__ import annotations

import torch
from torch import nn

from mobilenet_v1 import MobileNetV1


@torch.no_grad()
def calibrated_model(seed: int = 0, **config) -> MobileNetV1:
    """A random MobileNetV1 whose BN running statistics are those of real activations (one train-mode pass
    with momentum 1), with non-trivial γ/β and logits of order 1 — so 1e-5 tolerances mean something."""
    torch.manual_seed(seed)
    config.setdefault("width_multiplier", 0.25)
    config.setdefault("resolution", 64)
    config.setdefault("num_classes", 10)
    model = MobileNetV1(**config)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 1.0
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.1)
    c = model.config
    model.train()(torch.randn(8, c.in_chans, c.resolution, c.resolution))
    if c.num_classes and isinstance(getattr(model, "classifier", None), nn.Linear):
        model.classifier.weight.normal_(0.0, 0.1)
    return model.eval()


FMNIST_PRE = dict(input_size=32, resize=None, interpolation="bilinear", mean=(0.5,), std=(0.5,), grayscale=True)
_TRAINED: dict[str, object] = {}


def fmnist_inputs(images, pre) -> torch.Tensor:
    """uint8 28×28 arrays → model inputs through the same preprocessing the export's calibration uses."""
    import numpy as np  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    from mobilenet_v1.deploy.calibration import image_array  # noqa: PLC0415

    return torch.from_numpy(np.stack([image_array(Image.fromarray(a), pre) for a in images]))


def trained_fmnist_dir(root) -> str:
    """A briefly trained Fashion-MNIST MobileNet (α = 0.25, 32×32, one channel), saved as a model directory.

    Two epochs on 8k training images with SGD-Nesterov and a one-cycle schedule: ~80% test accuracy,
    enough for int8-vs-fp32 comparisons to be about real decision boundaries. Trained once per process.
    """
    if "dir" in _TRAINED:
        return _TRAINED["dir"]
    from mobilenet_v1.checkpoint import Preprocessing, Pretrained, save_pretrained  # noqa: PLC0415
    from samples import FASHION_MNIST_CLASSES, fashion_mnist  # noqa: PLC0415

    torch.manual_seed(0)
    pre = Preprocessing(**FMNIST_PRE)
    images, labels = fashion_mnist("train")
    x, y = fmnist_inputs(images[:8000], pre), torch.from_numpy(labels[:8000])
    model = MobileNetV1(width_multiplier=0.25, resolution=32, in_chans=1, num_classes=10)
    # channels_last: depthwise backward is ~5× faster in NHWC on this CPU, which keeps the fixture short
    model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    epochs, batch = 2, 64
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=4e-5)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 0.05, total_steps=epochs * (len(x) // batch))
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x) - batch + 1, batch):
            idx = perm[i : i + batch]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    model = model.to(memory_format=torch.contiguous_format).eval()
    out = save_pretrained(model, root, Pretrained(model.config, pre, list(FASHION_MNIST_CLASSES)))
    _TRAINED["dir"] = str(out)
    return _TRAINED["dir"]


# A function-preserving edit that reproduces why MobileNet-V1 collapses under per-tensor int8 weights.
#
# In Google's MobileNet-V1 some channels die after ReLU(6) (always 0). The BN after the *next* depthwise
# conv then sees near-zero variance on that channel, and folding multiplies its 3×3 filter by
# γ/√(σ²+ε) — hundreds of times its neighbours'. The float network doesn't care (the filter only ever sees
# zeros), but one int8 scale per tensor is sized for that outlier and every other filter rounds to zero
# (Krishnamoorthi 2018, Section 3.1). Per-channel scales isolate it.
#
# :func:`with_dead_channel_outlier` builds exactly that on any model: kill one channel, blow up the
# depthwise filter that reads it. fp32 outputs are unchanged by the blow-up (bit for bit).
@torch.no_grad()
def with_dead_channel_outlier(model, block: int = 3, channel: int = 0, scale: float = 1000.0):
    """A BN-folded copy of ``model`` with channel ``channel`` entering ``Conv2d_{block}_depthwise`` dead
    (the previous layer's filter zeroed, bias −1, so ReLU outputs 0) and that depthwise filter × ``scale``.
    """
    from mobilenet_v1.deploy import fold_bn  # noqa: PLC0415

    folded = fold_bn(model)
    features = dict(folded.features.named_children())
    depthwise = features.get(f"Conv2d_{block}_depthwise")
    names = list(features)
    if depthwise is None or names.index(f"Conv2d_{block}_depthwise") == 0:
        raise ValueError(f"block {block} has no depthwise layer with a layer before it")
    upstream = features[names[names.index(f"Conv2d_{block}_depthwise") - 1]].conv
    upstream.weight[channel] = 0.0
    upstream.bias[channel] = -1.0  # ReLU/ReLU6(−1) = 0: the channel is dead for every input
    biggest = depthwise.conv.weight.abs().max()
    depthwise.conv.weight[channel] = depthwise.conv.weight[channel].sign() * biggest * scale
    return folded
