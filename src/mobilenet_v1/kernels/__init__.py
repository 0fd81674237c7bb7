"""CPU training kernels for MobileNet-V1's conv-BN-ReLU blocks: small C sources, compiled on first use.

In a CPU training step a third of the time goes to batch norm and ReLU, which PyTorch runs as separate
memory-bound passes over every activation map, and the depthwise convolutions take far longer than their
Mult-Adds. The kernels fuse batch norm with ReLU (:mod:`.batchnorm`), run the 3×3 depthwise and the 1×1
convolutions with the neighbouring batch norms read or summed on the fly (:mod:`.convolution`), where
:mod:`.support` says they can, in the order :mod:`.plan` chooses. Results match PyTorch's to float rounding
(``tests/test_fused.py`` checks them against float64, beside PyTorch's own float32 error).

Opt-in, by one call that swaps modules and keeps the state dict::

    from mobilenet_v1 import kernels
    kernels.enable(model)        # training on the CPU now uses the kernels where they apply
    kernels.enable(model, False)  # back to PyTorch's operators

``mobilenet-v1 train`` calls it on CPUs (``--no-fused-kernels`` or ``MOBILENET_V1_FUSED=0`` to turn it off).
"""

from .build import load
from .plan import KernelConvBNAct, KernelSequential, enable

__all__ = ["KernelConvBNAct", "KernelSequential", "enable", "load"]
