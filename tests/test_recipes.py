"""The paper recipe's optimizer against TF's RMSprop formula, and which parameters get weight decay."""

import numpy as np
import pytest
import torch
from torch import nn

from mobilenet_v1 import MobileNetV1
from mobilenet_v1.recipes import EMA, FAST, PAPER, RMSpropTF, get_recipe, lr_at, param_groups


def tf_rmsprop_reference(theta, grads, lr, decay, momentum, eps, wd):
    """tf.compat.v1.train.RMSPropOptimizer (ApplyRMSProp kernel docs), with l2 loss added to the gradient:
    ms <- decay*ms + (1-decay)*g^2 (ms starts at 1); mom <- momentum*mom + lr*g/sqrt(ms+eps); theta -= mom."""
    ms, mom = np.ones_like(theta), np.zeros_like(theta)
    for g in grads:
        g = g + wd * theta
        ms = decay * ms + (1 - decay) * g * g
        mom = momentum * mom + lr * g / np.sqrt(ms + eps)
        theta = theta - mom
    return theta


@pytest.mark.parametrize("eps,wd", [(1.0, 0.0), (1e-3, 4e-5), (0.1, 0.01)])
def test_rmsprop_tf_matches_formula(eps, wd):
    rng = np.random.default_rng(0)
    theta0 = rng.normal(size=(5, 3))
    grads = [rng.normal(size=(5, 3)) * s for s in (1.0, 3.0, 0.1, 2.0)]
    p = nn.Parameter(torch.tensor(theta0))
    opt = RMSpropTF([p], lr=0.045, decay=0.9, momentum=0.9, eps=eps, weight_decay=wd)
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    expected = tf_rmsprop_reference(theta0, grads, 0.045, 0.9, 0.9, eps, wd)
    np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    # PyTorch's own RMSprop (eps outside the root, square average starting at 0) is a different optimizer:
    q = nn.Parameter(torch.tensor(theta0))
    torch_opt = torch.optim.RMSprop([q], lr=0.045, alpha=0.9, momentum=0.9, eps=eps, weight_decay=wd)
    for g in grads:
        q.grad = torch.tensor(g)
        torch_opt.step()
    assert not np.allclose(q.detach().numpy(), expected, atol=1e-3)


def test_fast_optimizer_matches_nesterov_formula():
    """The `fast` recipe's optimizer (on the CPU: PyTorch's fused SGD kernel) against SGD-Nesterov written out
    (Sutskever et al. 2013 as PyTorch documents it: b <- μ·b + g, the first b = g; θ <- θ - lr·(g + μ·b)), with
    weight decay added to the gradient on the decayed group only."""
    from mobilenet_v1.recipes import build_optimizer

    torch.manual_seed(0)
    model = MobileNetV1(width_multiplier=0.25, num_classes=10)
    opt = build_optimizer(model, FAST, 0.2)
    assert all(g["fused"] for g in opt.param_groups)
    params = [p for g in opt.param_groups for p in g["params"]]
    wds = [g["weight_decay"] for g in opt.param_groups for _ in g["params"]]
    theta = [p.detach().double().numpy().copy() for p in params]
    bufs = [None] * len(params)
    for step in range(3):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for i, (g, wd) in enumerate(zip(grads, wds)):
            g = g.double().numpy() + wd * theta[i]
            bufs[i] = g if step == 0 else 0.9 * bufs[i] + g
            theta[i] = theta[i] - 0.2 * (g + 0.9 * bufs[i])
    for p, t in zip(params, theta):
        np.testing.assert_allclose(p.detach().double().numpy(), t, rtol=1e-5, atol=1e-6)
    # under fp16 loss scaling the per-parameter path, whose steps the GradScaler can skip (test_train's fp16 test)
    assert not any(g["fused"] for g in build_optimizer(model, FAST, 0.2, loss_scaling=True).param_groups)


def test_no_weight_decay_on_depthwise_bn_bias():
    model = MobileNetV1(width_multiplier=0.25, num_classes=10)
    decay, no_decay = param_groups(model, 4e-5)
    assert decay["weight_decay"] == 4e-5 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for p in decay["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in ids}
    assert "features.Conv2d_0.conv.weight" in names and "features.Conv2d_1_pointwise.conv.weight" in names
    assert "classifier.weight" in names
    assert not [n for n in names if "depthwise" in n or ".bn." in n or n.endswith("bias")]
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert len(names) == 1 + 13 + 1  # stem, 13 pointwise convs, FC


def test_recipes():
    assert get_recipe("paper") is PAPER and PAPER.optimizer == "rmsprop_tf" and PAPER.label_smoothing == 0.0
    assert PAPER.weight_decay == 4e-5
    with pytest.raises(ValueError, match="recipe must be one of paper, fast; got 'adam'"):
        get_recipe("adam")
    # warm-up then cosine to zero; TF-slim's exponential decay ×0.94 every 2 epochs
    assert lr_at(FAST, 1.0, 0, 10, 100) == pytest.approx(0.1)
    assert lr_at(FAST, 1.0, 9, 10, 100) == pytest.approx(1.0)
    assert lr_at(FAST, 1.0, 100, 10, 100) == pytest.approx(0.0)
    assert lr_at(PAPER, 1.0, 45, 10, 100) == pytest.approx(0.94**2)


def test_ema_follows_weights_and_copies_bn_stats():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(3.0)
    ema.update(model)  # warm-up decay: min(0.5, 2/11)
    before = model[0].weight - 1.0
    assert torch.allclose(ema.state["0.weight"], before + (1 - 2 / 11))
    assert torch.equal(ema.state["1.running_mean"], torch.full((2,), 3.0))


def test_train_overrides_reach_the_recipe_and_optimizer():
    from mobilenet_v1.recipes import build_optimizer
    from mobilenet_v1.train import TrainConfig, _recipe

    assert _recipe(TrainConfig("unused")) == FAST
    recipe = _recipe(TrainConfig("unused", recipe="paper", weight_decay=5e-4, label_smoothing=0.05))
    assert (recipe.optimizer, recipe.weight_decay, recipe.label_smoothing) == ("rmsprop_tf", 5e-4, 0.05)
    groups = build_optimizer(MobileNetV1(width_multiplier=0.25, num_classes=10), recipe, 0.1).param_groups
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    assert _recipe(TrainConfig("unused", ema_decay=0.0)).ema_decay is None
    assert _recipe(TrainConfig("unused", ema_decay=0.99)).ema_decay == 0.99
