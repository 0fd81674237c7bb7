#!/usr/bin/env bash
# The README's main job on a fresh machine: install (Debian's Fashion-MNIST included), train a small
# MobileNet on real data for a few minutes, evaluate it, and predict on a few real images.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # 2-core machines: waiting OpenMP threads sleep instead of spinning
if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
fi
python3 -m pip install -q -e .
RUN=runs/quickstart
rm -rf "$RUN"
mobilenet-v1 summary --alpha 0.5 --resolution 64 --num-classes 10 | tail -4
mobilenet-v1 train --out "$RUN" --alpha 0.5 --resolution 64 --grayscale --epochs 2 --train-subset 20000 \
  --val-subset 5000 --precision fp32 --workers 1
mobilenet-v1 eval "$RUN" --subset 5000
python3 - "$RUN" <<'PY'
import sys
from pathlib import Path
from mobilenet_v1.data import fashion_mnist
test = fashion_mnist(None, train=False)
out = Path(sys.argv[1]) / "samples"
out.mkdir(exist_ok=True)
for i in range(4):
    image, label = test[i]
    image.save(out / f"{i}_{test.classes[label].replace('/', '-')}.png")
PY
mobilenet-v1 predict "$RUN" "$RUN"/samples/*.png --topk 3
