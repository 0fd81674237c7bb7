"""``--profile``: where the time goes, by Table 2's layer types, beside where the Mult-Adds go.

Forward hooks time each ``features.<TF-slim name>`` block (conv + bias + ReLU after folding) of the
fp32 inference path (BN folded, channels_last, eager so modules still exist), plus the pool and the
classifier. CPU kernels are synchronous, so wall time between pre- and post-hook is the layer's time.
Section 3 says 95% of the computation *time* goes to 1×1 convolutions; this measures it here.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict

import torch

from .. import spec
from ..checkpoint import from_pretrained
from ..cost import LAYER_TYPES, cost_of
from ..deploy.fold import fold_bn
from ..model import MobileNetV1, ModelConfig
from .results import LayerTypeTime, Profile

POOL_LABEL = "Pool"


def _model(config: ModelConfig, model_dir: str | None):
    return from_pretrained(model_dir) if model_dir else MobileNetV1(config=config).eval()


def profile_layer_types(
    config: ModelConfig, model_dir: str | None = None, batch: int = 1, threads: int = 2, iters: int = 30
) -> Profile:
    torch.set_num_threads(threads)
    model = fold_bn(_model(config, model_dir)).to(memory_format=torch.channels_last)
    report = cost_of(config)
    label_of = {layer.name: LAYER_TYPES[layer.op] for layer in report.layers if layer.op in LAYER_TYPES}
    macs_of: dict[str, int] = defaultdict(int)
    for layer in report.layers:
        macs_of[LAYER_TYPES.get(layer.op, POOL_LABEL)] += layer.mult_adds
    timed = {f"features.{n}": label for n, label in label_of.items()}
    timed["global_pool"], timed["classifier"] = POOL_LABEL, LAYER_TYPES[spec.OP_FC]
    spent: dict[str, float] = defaultdict(float)
    starts: dict[str, float] = {}
    handles = []
    for name, module in model.named_modules():
        if name in timed:
            handles.append(
                module.register_forward_pre_hook(lambda m, a, n=name: starts.__setitem__(n, time.perf_counter()))
            )
            handles.append(module.register_forward_hook(
                lambda m, a, o, n=name: spent.__setitem__(n, spent[n] + time.perf_counter() - starts[n])))  # fmt: skip
    x = torch.randn(batch, config.in_chans, config.resolution, config.resolution).to(memory_format=torch.channels_last)
    per_iter: list[dict[str, float]] = []
    totals = []
    with torch.inference_mode():
        for i in range(3 + iters):
            spent.clear()
            start = time.perf_counter()
            model(x)
            if i >= 3:  # after warm-up
                totals.append(time.perf_counter() - start)
                per_iter.append(dict(spent))
    for h in handles:
        h.remove()
    # medians over iterations, not means: on a shared machine one preempted pass would dominate a mean
    total = statistics.median(totals)
    by_type: dict[str, float] = defaultdict(float)
    for name, label in timed.items():
        by_type[label] += statistics.median([it.get(name, 0.0) for it in per_iter])
    by_type["other"] = max(total - sum(by_type.values()), 0.0)  # input reorder, flatten, dropout, Python
    whole = sum(by_type.values())  # shares of the sum of medians, so they add up to 100%
    rows = []
    for label in [*LAYER_TYPES.values(), POOL_LABEL, "other"]:
        if label not in by_type:
            continue
        seconds = by_type[label]
        share = report.shares.get(label, {}).get("mult_adds")
        macs = macs_of.get(label, 0)
        gflops = 2 * macs * batch / seconds / 1e9 if macs and seconds > 0 else None
        rows.append(LayerTypeTime(label, seconds * 1e3, 100 * seconds / whole, share, gflops))
    return Profile("inference (fp32, eager, hooks)", batch, rows, total * 1e3)
