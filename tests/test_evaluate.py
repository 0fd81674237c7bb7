"""Evaluation on the deployment path (evaluate.for_evaluation) against the eager model, on real images."""

import pytest
import torch

from mobilenet_v1 import data
from mobilenet_v1.deploy import inference
from mobilenet_v1.evaluate import evaluate, for_evaluation
from mobilenet_v1.model import MobileNetV1, ModelConfig
from mobilenet_v1.preprocess import default_preprocessing, eval_transform


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = MobileNetV1(config=ModelConfig(width_multiplier=0.25, resolution=32, in_chans=1, num_classes=10))
    for bn in (x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)):  # non-trivial BN to fold
        bn.running_mean.normal_(0, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.normal_(0, 0.2)
    return m.eval()


def test_evaluation_on_the_folded_fused_model_gives_the_eager_metrics(model):
    ds = data.fashion_mnist(None, train=False, transform=eval_transform(default_preprocessing("small", 32, True)))
    loader = data.eval_loader(data.subset(ds, 512), 128)
    names = data.class_names(ds)
    net, precision = for_evaluation(model, torch.device("cpu"), "fp32")
    assert isinstance(net, inference.InferenceModel) and precision == "fp32"
    x = next(iter(loader)).images
    assert torch.allclose(net(x), model(x), rtol=1e-4, atol=1e-5)
    fast, eager = evaluate(net, loader, names), evaluate(model, loader, names)
    assert fast.confusion == eager.confusion and fast.loss == pytest.approx(eager.loss, rel=1e-5)


def test_gpus_and_emulated_bf16_keep_the_eager_model_and_autocast(model, monkeypatch):
    assert for_evaluation(model, torch.device("cuda"), "bf16") == (model, "bf16")
    monkeypatch.setattr(inference, "bf16_supported", lambda: False)
    assert for_evaluation(model, torch.device("cpu"), "bf16") == (model, "bf16")
