#!/usr/bin/env bash
# The GPU checks, prepared to run on a GPU machine in one or two calls:
#   OUT=results_dir FMNIST=idx_dir bash benchmarks/gpu_session.sh [throughput] [train] [compile]
# throughput: training images/s, ours against timm (α = 1.0, 224, AMP and channels_last; batch 32 and 256)
#             — about 4 minutes, most of it cuDNN autotuning in the warm-ups;
# train:      `mobilenet-v1 train` on the GPU: a short smoke run, then the standard-body Fashion-MNIST run of
#             BENCHMARKS.md's accuracy section (24 epochs; 221 s on an H200) — about 4.5 minutes;
# compile:    torch.compile's training step against eager, batch 256 — about 1.5 minutes.
# No argument runs all three (over 10 minutes: split it over two calls). Each step has its own time
# limit, so one that hangs leaves the others' results.
set -u
OUT=${OUT:-gpu_out}
FMNIST=${FMNIST:-/usr/share/datasets/fashion-mnist}
PARTS=${*:-throughput train compile}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
WORKERS=$(($(nproc) - 2))
RUNS=$(mktemp -d)  # the training runs' directories
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
python3 -c "import sys, torch, torchvision, timm; print('python', sys.version.split()[0], 'torch', torch.__version__,
  'torchvision', torchvision.__version__, 'timm', timm.__version__, 'cuda', torch.version.cuda,
  'cudnn', torch.backends.cudnn.version())"
echo "cpus $(nproc); loader workers $WORKERS; parts: $PARTS"

if [[ " $PARTS " == *" throughput "* ]]; then
  echo "== throughput"
  timeout 280 python3 benchmarks/train_throughput_gpu.py --rounds 3 --out "$OUT/gpu_train_throughput"
fi

if [[ " $PARTS " == *" train "* ]]; then
  echo "== trainer smoke"
  timeout 45 python3 -m mobilenet_v1 train --out "$RUNS/smoke" --data "$FMNIST" --alpha 0.25 --resolution 64 \
    --grayscale --epochs 1 --max-steps-per-epoch 30 --val-subset 1000 --device cuda --workers 4 --quiet --json
  echo "== the Fashion-MNIST accuracy command on the GPU"
  start=$(date +%s)
  timeout 240 python3 -m mobilenet_v1 train --out "$RUNS/acc" --data "$FMNIST" --alpha 1.0 --resolution 64 \
    --grayscale --epochs 24 --batch-size 128 --precision fp32 --workers "$WORKERS" --recipe fast \
    --weight-decay 5e-4 --ema-decay 0 --device cuda --quiet --json >"$OUT/fmnist_gpu.json"
  echo "rc $? wall $(($(date +%s) - start)) s"
  cat "$OUT/fmnist_gpu.json"
  cp "$RUNS/acc/metrics.csv" "$OUT/fmnist_gpu_metrics.csv" 2>/dev/null
  cp "$RUNS/acc/curves.png" "$OUT/fmnist_gpu_curves.png" 2>/dev/null
fi

if [[ " $PARTS " == *" compile "* ]]; then
  echo "== torch.compile"
  timeout 120 python3 benchmarks/train_throughput_gpu.py --batches 256 --configs timm-bf16-cl ours-bf16-cl \
    ours-compile-bf16-cl --rounds 3 --out "$OUT/gpu_train_compile"
fi
echo "== done"
