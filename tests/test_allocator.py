"""The malloc tuning of the trainer and the inference path: freed buffers are reused, not re-faulted.

Counts minor page faults, so it needs 4 KiB pages: where transparent huge pages are on for every allocation
(``[always]``), both the problem and the fix shrink ~500-fold and these tests skip.
"""

import subprocess
import sys
from pathlib import Path

import pytest

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only"),
    pytest.mark.skipif(THP.exists() and "[always]" in THP.read_text(), reason="THP always: faults aren't 4 KiB pages"),
]

# Allocate, touch and free a 64 MiB buffer 20 times (a training step's activations, in miniature) and count
# the minor page faults: glibc's default serves it with mmap and returns it with munmap, so every round
# faults all 16,384 pages again; after keep_freed_memory() the heap is reused once warm (ten rounds here;
# under OMP_WAIT_POLICY=PASSIVE glibc placed six buffers one above the other before settling).
SCRIPT = """
import resource, sys
import torch
from mobilenet_v1.allocator import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):  # warm-up: the heap's first touches are paid either way, and glibc may place the
    x = torch.ones(16 << 20); del x  # first few buffers at creeping addresses before one slot is reused
before = faults()
for _ in range(20):
    x = torch.ones(16 << 20)  # 64 MiB of float32
    del x
print(faults() - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def test_keep_freed_memory_stops_refaulting_buffers():
    default, tuned = _faults("default"), _faults("tuned")
    pages = 20 * (64 << 20) // 4096
    assert default > 0.5 * pages, default  # the problem exists: each round re-faults the buffer
    assert tuned < 0.15 * pages, tuned  # and the tuning removes it (up to three rounds may still fault)


# The inference path applies the same tuning (optimize_for_inference(keep_memory=True), the default): at
# batch 32 and 160 px its largest activation map (the first pointwise output, 52 MB) is above glibc's 32 MiB
# ceiling for heap blocks, so by default every forward re-faults it (and oneDNN's scratch) from the kernel.
INFERENCE_SCRIPT = """
import resource, sys
import torch
from mobilenet_v1 import create_model
from mobilenet_v1.deploy import optimize_for_inference
torch.set_num_threads(1)
fast = optimize_for_inference(create_model("mobilenet_v1_100_224", resolution=160),
                              keep_memory=sys.argv[1] == "tuned")
assert fast.malloc_tuned == (sys.argv[1] == "tuned")
x = torch.randn(32, 3, 160, 160)
for _ in range(6):
    fast(x)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    fast(x)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 4)
"""


@pytest.mark.slow
def test_inference_path_reuses_its_activation_buffers():
    def faults_per_forward(mode):
        run = subprocess.run([sys.executable, "-c", INFERENCE_SCRIPT, mode], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]
        return int(run.stdout.strip())

    default, tuned = faults_per_forward("default"), faults_per_forward("tuned")
    big_map_pages = 32 * 64 * 80 * 80 * 4 // 4096  # one 52 MB activation map: 12,800 pages
    assert default > big_map_pages, default  # measured 31,953 per call on a 2-core AVX2 CPU
    assert tuned < 0.1 * default, (tuned, default)
