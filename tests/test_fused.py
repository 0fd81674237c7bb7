"""The CPU training kernels (mobilenet_v1.kernels) against PyTorch's own operators and float64."""

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobilenet_v1 import create_model
from mobilenet_v1.kernels import batchnorm, build, convolution, plan, support
from mobilenet_v1.layers import ConvBNAct

needs_kernel = pytest.mark.skipif(build.load() is None, reason="no C compiler or no AVX2/FMA: the kernel is not built")


def _pair(channels: int, seed: int = 0) -> tuple[nn.BatchNorm2d, nn.BatchNorm2d]:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels).train()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(channels, generator=g))
        bn.running_mean.copy_(torch.randn(channels, generator=g))
        bn.running_var.copy_(torch.rand(channels, generator=g) + 0.5)
    return bn, copy.deepcopy(bn)


def _error(got: torch.Tensor, exact: torch.Tensor) -> float:
    return (got.double() - exact).abs().max().item()


# A few float32 roundings of the largest value (eps = 1.2e-7): the least error a float32 result can be held to,
# however close PyTorch came. The kernels are built for the CPU they run on, and on AVX-512 they sum in other orders.
ROUNDINGS = 4 * torch.finfo(torch.float32).eps


def _floor(exact: torch.Tensor) -> float:
    return ROUNDINGS * max(1.0, exact.abs().max().item())


@needs_kernel
@pytest.mark.parametrize(
    ("shape", "offset"),
    [
        ((4, 32, 17, 9), 0.0),  # rows not a multiple of the kernel's 64-row blocks
        ((2, 8, 5, 3), 0.0),  # the fewest channels it takes
        ((3, 64, 12, 12), 50.0),  # mean 25× the spread: the variance must not cancel away
        ((8, 72, 64, 64), 0.0),  # 9.4 MB: past STREAM_BYTES, written with streaming stores
    ],
)
def test_matches_batch_norm_then_relu(shape, offset):
    """Output, the three gradients and the running statistics of relu(batch_norm(x)), as exact as PyTorch's.

    The reference is PyTorch's BN + ReLU in float64; the kernel's float32 error must be at most twice that of
    PyTorch's own float32 operators, or 1e-6 of the values' scale (blocks of up to 64 rows are summed in float
    before double; at 30 rows that is ~2 ulps where PyTorch's is ~0.5).
    """
    torch.manual_seed(1)
    x = (torch.randn(shape) * 2 + offset).contiguous(memory_format=torch.channels_last).requires_grad_()
    ref_bn, bn = _pair(shape[1])
    bn64 = copy.deepcopy(ref_bn).double()
    x64 = x.detach().double().requires_grad_()
    assert support.applies(bn, x)
    exact, ref, out = F.relu(bn64(x64)), F.relu(ref_bn(x)), batchnorm.batch_norm_relu(bn, x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(ref)
    results = {
        "output": (out, ref, exact),
        **{
            f"grad {n}": t
            for n, *t in zip(
                ("input", "weight", "bias"),
                torch.autograd.grad(out, (x, bn.weight, bn.bias), grad),
                torch.autograd.grad(ref, (x, ref_bn.weight, ref_bn.bias), grad),
                torch.autograd.grad(exact, (x64, bn64.weight, bn64.bias), grad.double()),
            )
        },
        **{k: (getattr(bn, k), getattr(ref_bn, k), getattr(bn64, k)) for k in ("running_mean", "running_var")},
    }
    for name, (got, pytorch, ex) in results.items():
        floor = 1e-6 * ex.abs().max().item()  # ~8 float32 ulps of the largest value: sums of 30 terms in float
        assert _error(got, ex) <= 2 * _error(pytorch, ex) + floor, (name, _error(got, ex), _error(pytorch, ex))
    assert bn.num_batches_tracked.item() == ref_bn.num_batches_tracked.item() == 1


@needs_kernel
@pytest.mark.parametrize("momentum", [0.1, 0.7])  # torch.lerp's two formulas: weight below 0.5 and from 0.5 up
def test_running_statistics_and_gradients_as_batch_norm_keeps_them(momentum):
    """The running estimates (updated per channel in C, ``bn_finish_stats``) as ``F.batch_norm`` moves them, to
    float32 rounding, for several steps; parameter gradients are tensors of their own (not views of a shared
    buffer: optimizers and DDP's buckets take ``.grad`` as it is)."""
    torch.manual_seed(7)
    ref_bn, bn = _pair(16)
    ref_bn.momentum = bn.momentum = momentum
    for _ in range(3):
        x = (torch.randn(4, 16, 5, 6) * 3 + 1).contiguous(memory_format=torch.channels_last)
        batchnorm.batch_norm_relu(bn, x).sum().backward()
        F.relu(ref_bn(x)).sum().backward()
    torch.testing.assert_close(bn.running_mean, ref_bn.running_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(bn.running_var, ref_bn.running_var, rtol=1e-6, atol=1e-6)
    assert bn.num_batches_tracked.item() == 3
    for param in (bn.weight, bn.bias):
        assert param.grad._base is None and param.grad.shape == param.shape


@needs_kernel
@pytest.mark.parametrize("shape", [(4, 32, 17, 9), (8, 72, 64, 64)])
def test_bfloat16_maps_as_under_autocast(shape):
    """bf16 maps (what a convolution gives under bf16 autocast) with float32 BN parameters: bf16 output and
    input gradient, float32 parameter gradients, each at most as far from the float64 result as PyTorch's
    own bf16 batch norm + ReLU (plus half a bf16 step: the kernel rounds once, PyTorch twice)."""
    torch.manual_seed(5)
    x = torch.randn(shape).bfloat16().contiguous(memory_format=torch.channels_last).requires_grad_()
    ref_bn, bn = _pair(shape[1])
    bn64 = copy.deepcopy(ref_bn).double()
    x64 = x.detach().double().requires_grad_()
    assert support.applies(bn, x)
    exact, ref, out = F.relu(bn64(x64)), F.relu(ref_bn(x)), batchnorm.batch_norm_relu(bn, x)
    assert out.dtype == ref.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(ref)
    got = (out, *torch.autograd.grad(out, (x, bn.weight, bn.bias), grad))
    pytorch = (ref, *torch.autograd.grad(ref, (x, ref_bn.weight, ref_bn.bias), grad))
    exacts = (exact, *torch.autograd.grad(exact, (x64, bn64.weight, bn64.bias), grad.double()))
    assert got[1].dtype == torch.bfloat16 and got[2].dtype == got[3].dtype == torch.float32
    for name, g, p, e in zip(("output", "grad input", "grad weight", "grad bias"), got, pytorch, exacts):
        half_step = 2**-9 * e.abs().max().item() if g.dtype == torch.bfloat16 else 0.0
        assert _error(g, e) <= 2 * _error(p, e) + half_step + 1e-6, (name, _error(g, e), _error(p, e))
    torch.testing.assert_close(bn.running_mean, ref_bn.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, ref_bn.running_var, rtol=1e-5, atol=1e-6)


@needs_kernel
def test_gradient_uses_the_forward_relu_mask():
    """At BN outputs of exactly 0 (ReLU's kink) the backward pass must block the gradient as the forward did.

    Here a quarter of the inputs equal their channel's mean and the bias is 0, so those outputs sit on the kink.
    The reference is the batch-norm gradient in float64 with the mask taken from the kernel's own output.
    """
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 4, 4, generator=g)
    x[:, :, 1] = 0.0  # these inputs are 0 ...
    x[:, :, 2:] = -x[:, :, :2]  # ... and so is each channel's mean (rows 2-3 mirror rows 0-1)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    _, bn = _pair(8)
    with torch.no_grad():
        bn.bias.zero_()
    out = batchnorm.batch_norm_relu(bn, x)
    assert out[:, :, 1].abs().max() < 1e-6  # at the kink (0, or 1e-8 off with the batch mean's rounding)
    grad = torch.randn(2, 8, 4, 4, generator=g)
    (got,) = torch.autograd.grad(out, x, grad)
    xd, gm = x.detach().double(), grad.double() * (out > 0)
    mean = xd.mean((0, 2, 3), keepdim=True)
    invstd = (xd.var((0, 2, 3), unbiased=False, keepdim=True) + bn.eps).rsqrt()
    xhat = (xd - mean) * invstd
    gamma = bn.weight.detach().double().view(1, -1, 1, 1)
    expected = gamma * invstd * (gm - gm.mean((0, 2, 3), True) - xhat * (gm * xhat).mean((0, 2, 3), True))
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5)


@needs_kernel
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize(("size", "channels"), [((9, 9), 8), ((8, 11), 24), ((1, 1), 8), ((2, 3), 16), ((16, 16), 32)])
def test_depthwise_matches_conv2d(stride, size, channels):
    """Output and both gradients of the 3×3 depthwise kernel against ``F.conv2d`` in float64, odd and even sizes
    (the right/bottom edge of a stride-2 layer), maps smaller than the window; at most twice the error of
    PyTorch's float32 convolution."""
    torch.manual_seed(2)
    x = torch.randn(3, channels, *size).contiguous(memory_format=torch.channels_last).requires_grad_()
    conv = nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False)
    assert support.depthwise_applies(conv, x)
    x64, w64 = x.detach().double().requires_grad_(), conv.weight.detach().double().requires_grad_()
    exact = F.conv2d(x64, w64, stride=stride, padding=1, groups=channels)
    ref, out = conv(x), convolution.depthwise(conv, x)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(ref)
    got = (out, *torch.autograd.grad(out, (x, conv.weight), grad))
    pytorch = (ref, *torch.autograd.grad(ref, (x, conv.weight), grad))
    exacts = (exact, *torch.autograd.grad(exact, (x64, w64), grad.double()))
    for name, g, p, e in zip(("output", "grad input", "grad weight"), got, pytorch, exacts):
        assert _error(g, e) <= 2 * _error(p, e) + _floor(e), (name, _error(g, e), _error(p, e))


def _bn_relu_columns(x: torch.Tensor, g: torch.Generator):
    """A batch norm + ReLU per column of x, as the kernels take it ((mean, scale, shift), float32, contiguous), and
    x through it; the negative scales and shifts zero a part of every column."""
    c = x.shape[1]
    bn = torch.randn(c, generator=g), torch.randn(c, generator=g), torch.randn(c, generator=g)
    return tuple(t.data_ptr() for t in bn), bn, torch.relu((x - bn[0]) * bn[1] + bn[2])


@needs_kernel
@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(
    ("k", "m", "n"),
    [
        (2048, 512, 512),  # the threads split the rows of C; a partial last row tile (512 = 85·6 + 2)
        (5000, 40, 24),  # K ≥ 4·max(M, N): with 2-3 threads, K split and partial products summed
        (2200, 13, 530),  # K split, whole and partial tiles, past one 512-column block
        (389, 70, 530),  # partial tiles in both directions, past one block of K and of N; split by columns
        (7, 5, 3),  # less than one tile
        (0, 12, 16),  # no terms: zeros
    ],
)
def test_gemm_at_b_against_float64(k, m, n, threads, bn):
    """``gemm_at_b``'s C = Aᵀ·B against float64 at any thread count, with rows longer than the matrix (strided
    views, as a channels-last map's channels may be), and with B read through a batch norm + ReLU: within a few
    float32 roundings of the scale (torch.mm's own error on these sums: ~3e-7)."""
    g = torch.Generator().manual_seed(k + m + n)
    a_rows, b_rows = torch.randn(k, m + 3, generator=g), torch.randn(k, n + 5, generator=g)
    a, b = a_rows[:, :m], b_rows[:, :n]
    bn_ptrs, _keep, b_bn = _bn_relu_columns(b, g) if bn else (convolution._NO_BN, None, b)
    buffer = torch.full((m * n + 64,), float("nan"))  # C, then a tail that must stay untouched
    c = buffer[: m * n].view(m, n)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        build._call(build.load().gemm_at_b, a.data_ptr(), m + 3, b.data_ptr(), n + 5, c.data_ptr(), k, m, n, *bn_ptrs)
    finally:
        torch.set_num_threads(before)
    exact = a.double().t() @ b_bn.double()
    assert _error(c, exact) <= 1e-6 * max(exact.abs().max().item(), 1.0), _error(c, exact)
    assert buffer[m * n :].isnan().all()


@needs_kernel
@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("trans_w", [1, 0])  # the forward's x·Wᵀ, the input gradient's dL/dy·W
@pytest.mark.parametrize(
    ("m", "k", "n"),
    [
        (1000, 64, 128),  # whole tiles of N; M split between the threads with a partial last tile (1000 = 166·6 + 4)
        (389, 1100, 40),  # past two blocks of K (512): the later blocks add to C; a partial panel of N (40 = 2·16 + 8)
        (96 * 3 + 6, 24, 530),  # past MC_ROWS pixel blocks, many panels
        (5, 7, 3),  # less than one tile
        (50, 0, 16),  # no terms: zeros
    ],
)
def test_gemm_a_w_against_float64(m, k, n, trans_w, threads, bn):
    """``gemm_a_w``'s C = A·Wᵀ (trans_w) or A·W against float64 at any thread count, with rows of A and W longer than
    the matrix (strided views), and with A read through a batch norm + ReLU: within a few float32 roundings of the
    scale, and nothing written past C."""
    g = torch.Generator().manual_seed(m + k + n + trans_w)
    a = torch.randn(m, k + 3, generator=g)[:, :k]
    bn_ptrs, _keep, a_bn = _bn_relu_columns(a, g) if bn else (convolution._NO_BN, None, a)
    w_shape = (n, k) if trans_w else (k, n)
    w = torch.randn(w_shape[0], w_shape[1] + 5, generator=g)[:, : w_shape[1]]
    buffer = torch.full((m * n + 64,), float("nan"))
    c = buffer[: m * n].view(m, n)
    shift, sums = torch.full((n,), float("nan")), torch.full((2, n), float("nan"), dtype=torch.float64)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        args = (a.data_ptr(), k + 3, w.data_ptr(), w_shape[1] + 5, trans_w, c.data_ptr(), m, k, n)
        build._call(build.load().gemm_a_w, *args, shift.data_ptr(), sums.data_ptr(), *bn_ptrs)
        plain = torch.full_like(c, float("nan"))
        build._call(build.load().gemm_a_w, *args[:5], plain.data_ptr(), m, k, n, None, None, *bn_ptrs)
    finally:
        torch.set_num_threads(before)
    exact = a_bn.double() @ (w.double().t() if trans_w else w.double())
    assert _error(c, exact) <= 1e-6 * max(exact.abs().max().item(), 1.0), _error(c, exact)
    assert buffer[m * n :].isnan().all() and torch.equal(plain, c)
    # the batch statistics: the shift is C's first row, the sums those of C's values about it, as float64 sums them
    assert torch.equal(shift, c[0])
    d = c.double() - shift.double()
    torch.testing.assert_close(sums, torch.stack([d.sum(0), (d * d).sum(0)]), rtol=1e-5, atol=1e-6 * m)


def test_pointwise_of_the_wrong_width_keeps_pytorchs_error():
    """A 1×1 convolution of another input width than x's: the matrix product would read the weight with x's row
    length, so the kernel does not apply and PyTorch's convolution raises its own error."""
    x = torch.randn(2, 16, 5, 5).contiguous(memory_format=torch.channels_last)
    conv = nn.Conv2d(24, 8, 1, bias=False)
    assert not support.pointwise_applies(conv, x)
    assert support.pointwise_applies(nn.Conv2d(16, 8, 1, bias=False), x)
    with pytest.raises(RuntimeError, match="channels"):
        conv(x)


@pytest.mark.parametrize("c_in", [16, 128, 200])  # gradients by oneDNN / by gemm.c: full and partial tiles
@pytest.mark.parametrize("wants", [(True, True), (False, True), (True, False)])  # input, weight need a gradient
def test_pointwise_matches_conv2d(c_in, wants):
    """The 1×1 convolution's output and gradients against ``F.conv2d`` in float64, on both gradient paths,
    with a first layer's input (no gradient) and frozen weights: at most twice PyTorch's float32 error, or a few
    float32 roundings of the result's scale (gemm.c sums in another order than oneDNN: measured up to 4× its error,
    3.8e-7 of the scale, on these 105-term sums)."""
    torch.manual_seed(5)
    x = torch.randn(3, c_in, 5, 7).contiguous(memory_format=torch.channels_last).requires_grad_(wants[0])
    conv = nn.Conv2d(c_in, 24, 1, bias=False).requires_grad_(wants[1])
    assert support.pointwise_applies(conv, x)
    inputs = [t for t in (x, conv.weight) if t.requires_grad]
    inputs64 = [t.detach().double().requires_grad_() for t in (x, conv.weight)]
    exact = F.conv2d(*inputs64)
    ref, out = conv(x), convolution.pointwise(conv, x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(ref)
    got = (out, *torch.autograd.grad(out, inputs, grad))
    pytorch = (ref, *torch.autograd.grad(ref, inputs, grad))
    wanted = [t for t, w in zip(inputs64, wants) if w]
    exacts = (exact, *torch.autograd.grad(exact, wanted, grad.double()))
    for i, (g, p, e) in enumerate(zip(got, pytorch, exacts, strict=True)):
        assert g.shape == e.shape
        assert _error(g, e) <= max(2 * _error(p, e), 1e-6 * e.abs().max().item()), (i, _error(g, e), _error(p, e))


@needs_kernel
@pytest.mark.parametrize(
    ("c_in", "c_out", "size", "stride"),
    [
        (3, 32, (9, 9), 2),
        (3, 32, (8, 11), 2),
        (3, 32, (7, 10), 2),  # even width at stride 2 (224 → 112): the last column's right tap is inside
        (1, 8, (5, 5), 1),
        (3, 64, (7, 6), 1),
        (1, 24, (1, 1), 2),
        (3, 40, (2, 3), 2),
    ],
)
@pytest.mark.parametrize("input_grad", [False, True])  # the stem's input is data; any other use may want dL/dx
def test_stem_convolution_matches_conv2d(c_in, c_out, size, stride, input_grad):
    """The stem's 3×3 convolution (few input channels): output and gradients against ``F.conv2d`` in float64, odd
    and even sizes, 1×1 maps, output channels past the kernel's 32-channel blocks; at most twice PyTorch's float32
    error (or 1e-6 of the scale); the weight gradient with the weight's strides."""
    torch.manual_seed(8)
    x = torch.randn(3, c_in, *size).contiguous(memory_format=torch.channels_last).requires_grad_(input_grad)
    conv = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False).to(memory_format=torch.channels_last)
    assert support.conv3x3_applies(conv, x)
    inputs = [x, conv.weight] if input_grad else [conv.weight]
    inputs64 = [t.detach().double().requires_grad_() for t in (x, conv.weight)]
    exact = F.conv2d(*inputs64, stride=stride, padding=1)
    ref, out = conv(x), convolution.conv3x3(conv, x)
    assert out.shape == ref.shape
    grad = torch.randn_like(ref)
    got = (out, *torch.autograd.grad(out, inputs, grad))
    pytorch = (ref, *torch.autograd.grad(ref, inputs, grad))
    exacts = (exact, *torch.autograd.grad(exact, inputs64 if input_grad else inputs64[1:], grad.double()))
    for i, (g, p, e) in enumerate(zip(got, pytorch, exacts, strict=True)):
        assert _error(g, e) <= max(2 * _error(p, e), 1e-6 * e.abs().max().item()), (i, _error(g, e), _error(p, e))
    assert got[-1].stride() == conv.weight.stride()


def test_stem_convolution_applies_only_to_its_shape():
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
    assert support.conv3x3_applies(stem, x)
    assert not support.conv3x3_applies(stem, x.contiguous())  # NCHW (3 channels: not channels-last contiguous)
    assert not support.conv3x3_applies(stem, x.double())
    assert not support.conv3x3_applies(nn.Conv2d(3, 32, 3, 2, 1), x)  # bias
    assert not support.conv3x3_applies(nn.Conv2d(3, 30, 3, 2, 1, bias=False), x)  # 30 output channels
    assert not support.conv3x3_applies(nn.Conv2d(3, 32, 3, 3, 1, bias=False), x)  # stride 3
    assert not support.conv3x3_applies(nn.Conv2d(3, 32, 3, 2, 0, bias=False), x)  # no padding (TF 'SAME' is a subclass)
    assert not support.conv3x3_applies(nn.Conv2d(3, 32, 3, 2, 2, dilation=2, bias=False), x)
    assert not support.conv3x3_applies(nn.Conv2d(3, 32, 3, 2, 1, bias=False, padding_mode="reflect"), x)
    wide = torch.randn(2, 8, 8, 8).contiguous(memory_format=torch.channels_last)
    assert not support.conv3x3_applies(nn.Conv2d(8, 32, 3, 2, 1, bias=False), wide)  # many input channels: oneDNN
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not support.conv3x3_applies(stem, x)


def test_pointwise_applies_only_to_its_shape():
    x = torch.randn(2, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    pw = nn.Conv2d(16, 32, 1, bias=False)
    assert support.pointwise_applies(pw, x)
    assert not support.pointwise_applies(pw, x.contiguous())  # NCHW
    assert not support.pointwise_applies(pw, x.double())
    assert not support.pointwise_applies(nn.Conv2d(16, 32, 1), x)  # bias
    assert not support.pointwise_applies(nn.Conv2d(16, 32, 1, 2, bias=False), x)  # stride
    assert not support.pointwise_applies(nn.Conv2d(16, 32, 1, groups=2, bias=False), x)
    assert not support.pointwise_applies(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), x)  # depthwise
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not support.pointwise_applies(pw, x)  # autocast runs it in bf16


@needs_kernel
@pytest.mark.parametrize("sums_in_place", [False, True])
@pytest.mark.parametrize(
    ("stride", "size", "channels"), [(1, (9, 9), 8), (2, (9, 9), 16), (2, (8, 11), 24), (1, (1, 2), 8), (2, (2, 4), 8)]
)
def test_batch_norm_relu_read_by_the_depthwise_kernel(monkeypatch, sums_in_place, stride, size, channels):
    """``conv(relu(bn(x)))`` with the BN + ReLU map never stored: output, the four gradients and the running
    statistics against float64, at most twice PyTorch's float32 error; the batch norm's gradient sums taken
    inside the depthwise kernel (large maps) and in a pass of their own (maps the caches hold)."""
    monkeypatch.setattr(convolution, "SUMS_IN_PLACE_BYTES", -1 if sums_in_place else 1 << 62)
    torch.manual_seed(3)
    x = (torch.randn(3, channels, *size) * 2 + 0.3).contiguous(memory_format=torch.channels_last).requires_grad_()
    ref_bn, bn = _pair(channels)
    conv = nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False)
    bn64, conv64 = copy.deepcopy(ref_bn).double(), copy.deepcopy(conv).double()
    x64 = x.detach().double().requires_grad_()
    assert support.applies(bn, x) and support.depthwise_applies(conv, x)
    exact, ref = conv64(F.relu(bn64(x64))), conv(F.relu(ref_bn(x)))
    out = convolution.batch_norm_relu_depthwise(bn, conv, x)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(ref)
    names = ("output", "grad input", "grad bn weight", "grad bn bias", "grad conv weight")
    got = (out, *torch.autograd.grad(out, (x, bn.weight, bn.bias, conv.weight), grad))
    pytorch = (ref, *torch.autograd.grad(ref, (x, ref_bn.weight, ref_bn.bias, conv.weight), grad))
    exacts = (exact, *torch.autograd.grad(exact, (x64, bn64.weight, bn64.bias, conv64.weight), grad.double()))
    for name, g, p, e in zip(names, got, pytorch, exacts):
        floor = 1e-6 * e.abs().max().item()
        assert _error(g, e) <= 2 * _error(p, e) + floor, (name, _error(g, e), _error(p, e))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        a, r, e = getattr(bn, name), getattr(ref_bn, name), getattr(bn64, name)
        assert _error(a, e.double()) <= 2 * _error(r, e.double()) + _floor(e.double()), name


@needs_kernel
@pytest.mark.parametrize("sums_in_place", [False, True])
@pytest.mark.parametrize(
    ("stride", "size", "channels", "offset"),
    [
        (1, (9, 9), 8, 0.0),
        (2, (9, 9), 16, 0.0),
        (2, (8, 11), 24, 0.0),
        (1, (1, 2), 8, 0.0),
        (2, (2, 4), 8, 0.0),
        (1, (6, 7), 16, 400.0),  # the depthwise output's mean ~200× its spread: its statistics must not cancel away
    ],
)
@pytest.mark.parametrize("frozen", [False, True])  # depthwise weights without a gradient (fine-tuning)
def test_depthwise_block_matches_pytorch(monkeypatch, sums_in_place, stride, size, channels, offset, frozen):
    """``relu(bn2(conv(relu(bn1(x)))))`` with bn2's statistics summed inside the depthwise kernel and its
    gradient read by the depthwise backward kernel (neither the BN + ReLU map nor dL/d(conv) stored): output, the
    six gradients and both batch norms' running statistics against float64, at most twice PyTorch's float32
    error (three times where the statistics cancel; or 1e-6 of the scale)."""
    monkeypatch.setattr(convolution, "SUMS_IN_PLACE_BYTES", -1 if sums_in_place else 1 << 62)
    torch.manual_seed(6)
    x = (torch.randn(3, channels, *size) * 2 + 0.3).contiguous(memory_format=torch.channels_last).requires_grad_()
    (ref_bn1, bn1), (ref_bn2, bn2) = _pair(channels, seed=1), _pair(channels, seed=2)
    with torch.no_grad():
        for b in (ref_bn1, bn1):
            b.bias.add_(offset)
    conv = nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False).requires_grad_(not frozen)
    if offset:  # the centre tap only (+ noise): the output keeps bn1's mean (other taps would make the edges differ)
        with torch.no_grad():
            conv.weight.mul_(1e-3)[:, :, 1, 1] = 1.0
    mods64 = [copy.deepcopy(m).double() for m in (ref_bn1, conv, ref_bn2)]
    x64 = x.detach().double().requires_grad_()
    exact = F.relu(mods64[2](mods64[1](F.relu(mods64[0](x64)))))
    ref = F.relu(ref_bn2(conv(F.relu(ref_bn1(x)))))
    out = convolution.depthwise_block(bn1, conv, bn2, x)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(ref)
    names = ["output", "input", "bn1 weight", "bn1 bias", "bn2 weight", "bn2 bias", "conv weight"][: 7 - frozen]
    wrt = [x, bn1.weight, bn1.bias, bn2.weight, bn2.bias, conv.weight][: 6 - frozen]
    wrt_ref = [x, ref_bn1.weight, ref_bn1.bias, ref_bn2.weight, ref_bn2.bias, conv.weight][: 6 - frozen]
    wrt64 = [x64, mods64[0].weight, mods64[0].bias, mods64[2].weight, mods64[2].bias, mods64[1].weight][: 6 - frozen]
    got = (out, *torch.autograd.grad(out, wrt, grad))
    pytorch = (ref, *torch.autograd.grad(ref, wrt_ref, grad))
    exacts = (exact, *torch.autograd.grad(exact, wrt64, grad.double()))
    # With inputs at 400 ± 1 the statistics cancel to ~1e-3 in PyTorch's float32 too, and which summation order
    # lands closer is luck: on an AVX-512 CPU the kernels' bn1 bias gradient came to 2.04× PyTorch's error.
    factor = 3 if offset else 2
    for name, g, p, e in zip(names, got, pytorch, exacts, strict=True):
        floor = 1e-6 * e.abs().max().item()
        assert _error(g, e) <= factor * _error(p, e) + floor, (name, _error(g, e), _error(p, e))
    for bn, pytorch_bn, bn64 in ((bn1, ref_bn1, mods64[0]), (bn2, ref_bn2, mods64[2])):
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            a, r, e = getattr(bn, name), getattr(pytorch_bn, name), getattr(bn64, name).double()
            assert _error(a, e) <= 2 * _error(r, e) + _floor(e), name


@needs_kernel
def test_model_hands_batch_norm_to_depthwise_only_where_it_may(monkeypatch):
    """The pairing in ``kernels.plan.sequential``: every depthwise layer of a training model takes the previous block's
    BN + ReLU, and its own (:class:`convolution.DepthwiseBlock`); evaluation, unmarked models and hooks (on the block
    sequence, a block, its BN, the depthwise conv, backward hooks, global hooks) keep the plain path there, and a
    hook on the depthwise block's own BN or ReLU leaves it the pair without its BN
    (:class:`convolution.BatchNormReLUDepthwise`)."""
    model = create_model("mobilenet_v1_025_224", num_classes=10).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    pairs, blocks = [], []
    real_pair, real_block = convolution.BatchNormReLUDepthwise.apply, convolution.DepthwiseBlock.apply
    monkeypatch.setattr(convolution.BatchNormReLUDepthwise, "apply", lambda *a: pairs.append(a) or real_pair(*a))
    monkeypatch.setattr(convolution.DepthwiseBlock, "apply", lambda *a: blocks.append(a) or real_block(*a))

    def pairs_in(m) -> int:  # depthwise layers that read the previous BN + ReLU, with or without their own
        pairs.clear()
        blocks.clear()
        m(x).sum().backward()
        return len(pairs) + len(blocks)

    def with_hook(handle) -> int:
        try:
            return pairs_in(model)
        finally:
            handle.remove()

    assert pairs_in(model.train()) == 0  # not marked
    plan.enable(model)
    assert pairs_in(model.train()) == 13
    assert pairs_in(model.eval()) == 0
    model.train()
    f, noop = model.features, lambda *a: None
    assert with_hook(f.register_forward_hook(noop)) == 0
    assert with_hook(f.Conv2d_3_pointwise.register_forward_hook(noop)) == 12  # feeds Conv2d_4_depthwise
    assert with_hook(f.Conv2d_3_pointwise.register_full_backward_hook(noop)) == 12
    assert with_hook(f.Conv2d_3_pointwise.bn.register_forward_hook(noop)) == 12
    assert with_hook(f.Conv2d_4_depthwise.conv.register_forward_pre_hook(noop)) == 12
    assert with_hook(torch.nn.modules.module.register_module_forward_hook(noop)) == 0
    assert pairs_in(model) == 13 and len(blocks) == 13
    for module in (f.Conv2d_4_depthwise.bn, f.Conv2d_4_depthwise.act):
        assert with_hook(module.register_forward_hook(noop)) == 13 and (len(blocks), len(pairs)) == (12, 1)


@needs_kernel
def test_depthwise_first_layer_without_input_gradient():
    """A depthwise layer fed by data (no input gradient wanted) still gets its weight gradient."""
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    conv = nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False)
    (got,) = torch.autograd.grad(convolution.depthwise(conv, x).sum(), conv.weight)
    (expected,) = torch.autograd.grad(conv(x).sum(), conv.weight)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert got.stride() == conv.weight.stride()  # as autograd.grad callers and DDP's buckets expect


def test_depthwise_applies_only_to_its_shape():
    from mobilenet_v1.layers import Conv2dSame

    x = torch.randn(2, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    dw = nn.Conv2d(16, 16, 3, 2, 1, groups=16, bias=False)
    assert support.depthwise_applies(dw, x)
    assert not support.depthwise_applies(dw, x.contiguous())
    assert not support.depthwise_applies(Conv2dSame(16, 16, 3, 2, 0, groups=16, bias=False), x)  # TF padding
    assert not support.depthwise_applies(nn.Conv2d(16, 16, 3, 1, 2, dilation=2, groups=16, bias=False), x)
    assert not support.depthwise_applies(nn.Conv2d(16, 16, 3, 3, 1, groups=16, bias=False), x)
    assert not support.depthwise_applies(nn.Conv2d(16, 16, 3, 1, 1, groups=16), x)  # bias
    assert not support.depthwise_applies(nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False, padding_mode="reflect"), x)
    assert not support.depthwise_applies(nn.Conv2d(16, 16, 1, bias=False), x)  # pointwise
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not support.depthwise_applies(dw, x)  # autocast runs it in bf16; the kernel is float32


@needs_kernel
def test_views_single_images_and_one_pixel_rows():
    """Inputs that are channels-last views with a storage offset, batch 1, and 1-pixel-high maps (strides that
    PyTorch's contiguity check ignores) give PyTorch's results."""
    torch.manual_seed(4)
    big = torch.randn(4, 16, 5, 7).contiguous(memory_format=torch.channels_last)
    for x in (big[2:4], big[1:2], torch.randn(3, 16, 1, 9).contiguous(memory_format=torch.channels_last)):
        assert x.is_contiguous(memory_format=torch.channels_last)
        ref_bn, bn = _pair(16)
        torch.testing.assert_close(batchnorm.batch_norm_relu(bn, x), F.relu(ref_bn(x)), rtol=1e-5, atol=1e-5)
        conv = nn.Conv2d(16, 16, 3, 2, 1, groups=16, bias=False)
        torch.testing.assert_close(convolution.depthwise(conv, x), conv(x), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_hooks_keep_pytorchs_operators_and_double_backward_refuses():
    """A block whose BN or conv has a hook (pruning, profilers) runs PyTorch's modules, so the hook fires; the
    kernels' gradients are not differentiable again, and say so instead of giving wrong second derivatives."""
    model = create_model("mobilenet_v1_025_224", num_classes=10).to(memory_format=torch.channels_last).train()
    plan.enable(model)
    seen = []
    block = model.features.Conv2d_1_depthwise
    block.conv.register_forward_hook(lambda m, i, o: seen.append("conv"))
    block.bn.register_forward_hook(lambda m, i, o: seen.append("bn"))
    model.features.Conv2d_1_pointwise.conv.register_forward_hook(lambda m, i, o: seen.append("pointwise"))
    model(torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    assert seen == ["conv", "bn", "pointwise"]
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    _, bn = _pair(8)
    (g,) = torch.autograd.grad(batchnorm.batch_norm_relu(bn, x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|double backward|differentiable"):
        g.sum().backward()


def test_applies_only_where_it_can_stand_in():
    bn = nn.BatchNorm2d(16).train()
    x = torch.randn(2, 16, 4, 4).contiguous(memory_format=torch.channels_last)
    assert support.applies(bn, x)
    assert not support.applies(bn, x.contiguous())  # NCHW
    assert not support.applies(bn, x[:, :12].contiguous(memory_format=torch.channels_last))  # 12 channels
    assert not support.applies(bn, x.double())
    assert not support.applies(bn.eval(), x)
    assert not support.applies(nn.BatchNorm2d(16, momentum=None).train(), x)  # cumulative average
    assert not support.applies(nn.BatchNorm2d(16, affine=False).train(), x)
    assert not support.applies(nn.SyncBatchNorm(16).train(), x)
    assert support.applies(bn.train(), x.bfloat16())  # a convolution's output under bf16 autocast
    assert not support.applies(bn, x.half())
    # parameters the C code would read or write past (raw pointers, one value per channel): PyTorch's operators
    # run instead and raise their own error
    assert not support.applies(nn.BatchNorm2d(8).train(), x)  # 8 features for 16 channels
    short = nn.BatchNorm2d(16).train()
    short.running_mean = torch.zeros(32)[:8]  # a view of a larger buffer
    assert not support.applies(short, x)
    with pytest.raises(RuntimeError, match="running_mean"):
        batchnorm.batch_norm_relu(short, x) if support.applies(short, x) else F.relu(short(x))
    strided = nn.BatchNorm2d(16).train()
    strided.weight = nn.Parameter(torch.rand(32)[::2])  # not contiguous
    assert not support.applies(strided, x)


@needs_kernel
def test_a_training_step_matches_the_unfused_model(monkeypatch):
    """A whole model (α = 0.25, 27 blocks, maps down to 2×2, strides 1 and 2): loss, gradients, BN statistics.

    One step, not several: with random data and batch 8, training is chaotic enough that an input perturbed by
    1e-6 moves some weights by 2,000% within five steps (measured, unfused), so a trajectory test says nothing.
    """
    torch.manual_seed(0)
    ref = create_model("mobilenet_v1_025_224", num_classes=10).to(memory_format=torch.channels_last).train()
    model = copy.deepcopy(ref)
    assert plan.enable(model) == 27
    assert plan.enable(ref, on=False) == 0
    calls, dw_calls, pair_calls, block_calls, pw_calls = [], [], [], [], []
    real_bn, real_dw = batchnorm.batch_norm_relu, convolution.depthwise
    real_pair = convolution.batch_norm_relu_depthwise
    real_pw, real_block = convolution.pointwise, convolution.depthwise_block
    counted_bn = lambda bn, x, st=None: calls.append((bn, st)) or real_bn(bn, x, st)  # noqa: E731
    monkeypatch.setattr(batchnorm, "batch_norm_relu", counted_bn)
    monkeypatch.setattr(convolution, "depthwise", lambda conv, x: dw_calls.append(conv) or real_dw(conv, x))
    counted_pw = lambda conv, x, st=None: pw_calls.append(conv) or real_pw(conv, x, st)  # noqa: E731
    monkeypatch.setattr(convolution, "pointwise", counted_pw)
    pair = lambda bn, conv, x, st=None: pair_calls.append((bn, conv)) or real_pair(bn, conv, x, st)  # noqa: E731
    monkeypatch.setattr(convolution, "batch_norm_relu_depthwise", pair)

    def block(bn1, conv, bn2, x, stats=None, pointwise=None):
        block_calls.append((bn1, conv, bn2, stats, pointwise and pointwise[0]))
        return real_block(bn1, conv, bn2, x, stats, pointwise)

    monkeypatch.setattr(convolution, "depthwise_block", block)
    stem_calls, real_stem = [], convolution.conv3x3
    monkeypatch.setattr(convolution, "conv3x3", lambda conv, x: stem_calls.append(conv) or real_stem(conv, x))
    x = torch.randn(8, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,))
    exact = copy.deepcopy(ref).double()
    losses = []
    for m, inputs in ((ref, x), (model, x), (exact, x.double())):
        loss = F.cross_entropy(m(inputs), y)
        loss.backward()
        losses.append(loss.item())
    # every depthwise layer of `model` read the previous block's BN + ReLU in place of its output map and ran its
    # own BN + ReLU (DepthwiseBlock); the one block left, the last pointwise one, took the BN + ReLU kernel; `ref`
    # took none
    blocks = [m for m in model.modules() if isinstance(m, ConvBNAct)]
    assert [tuple(map(id, t[:3])) for t in block_calls] == [
        (id(p.bn), id(m.conv), id(m.bn)) for p, m in zip(blocks, blocks[1:]) if m.conv.groups > 1
    ]
    # each batch norm after a 1×1 convolution took the statistics its matrix product summed; the stem's did not
    assert [t[3] is not None for t in block_calls] == [False] + [True] * 12
    assert len(block_calls) == 13 and not dw_calls and not pair_calls
    # a 1×1 convolution from GEMM_MIN_CHANNELS input channels ran inside the depthwise block before it, reading its
    # batch norm + ReLU on the fly; the narrower ones ran on their own, with oneDNN's gradients
    pointwise = [m.conv for m in blocks if m.conv.kernel_size == (1, 1)]
    wide = [c for c in pointwise if c.in_channels >= convolution.GEMM_MIN_CHANNELS]
    assert len(pointwise) == 13 and 0 < len(wide) < 13  # both paths
    assert [id(t[4]) for t in block_calls if t[4] is not None] == list(map(id, wide))
    assert [id(c) for c in pw_calls] == [id(c) for c in pointwise if c.in_channels < convolution.GEMM_MIN_CHANNELS]
    assert [id(b) for b, _ in calls] == [id(blocks[-1].bn)] and calls[0][1] is not None
    assert stem_calls == [blocks[0].conv]  # the stem's weight gradient by conv3x3.c
    assert losses[1] == pytest.approx(losses[2], rel=1e-5)
    # against the float64 model: per tensor within 5× PyTorch's float32 error (or 1e-3 of the tensor's scale);
    # over all tensors, at least as close as PyTorch's (measured: the kernel's error is 0.4× PyTorch's, median)
    ratios = []
    pairs = zip(ref.named_parameters(), model.named_parameters(), exact.named_parameters())
    for (name, pytorch), (_, got), (_, ex) in pairs:
        e_pytorch, e_got = _error(pytorch.grad, ex.grad), _error(got.grad, ex.grad)
        assert e_got <= max(5 * e_pytorch, 1e-3 * ex.grad.abs().max().item()), (name, e_got, e_pytorch)
        ratios.append(e_got / max(e_pytorch, 1e-30))
    assert sorted(ratios)[len(ratios) // 2] <= 1.0, sorted(ratios)
    for (name, pytorch), (_, got), (_, ex) in zip(ref.named_buffers(), model.named_buffers(), exact.named_buffers()):
        assert _error(got, ex.to(got.dtype).double()) <= 2 * _error(pytorch, ex) + _floor(ex.double()), name


@needs_kernel
def test_under_bf16_autocast_only_batch_norm_takes_a_kernel(monkeypatch):
    """In a bf16 autocast step (the trainer's default on CPUs with native bf16) every block's BN + ReLU takes the
    kernel on the convolution's bf16 output; the depthwise convolutions stay with autocast's bf16 oneDNN ones.

    bf16 gradients at random initialisation are noisy (PyTorch's own point the same way as the float32 ones
    with a cosine of only ~0.5, measured), so the check is that the kernel's are as close to float32 as
    PyTorch's bf16 ones, averaged over all 83 parameter tensors.
    """
    torch.manual_seed(0)
    ref = create_model("mobilenet_v1_025_224", num_classes=10).to(memory_format=torch.channels_last).train()
    model, fp32 = copy.deepcopy(ref), copy.deepcopy(ref)
    plan.enable(model)
    calls, dw_calls = [], []
    real_bn, real_dw = batchnorm.batch_norm_relu, convolution.depthwise
    counted_bn = lambda bn, x, st=None: calls.append(x.dtype) or real_bn(bn, x, st)  # noqa: E731
    monkeypatch.setattr(batchnorm, "batch_norm_relu", counted_bn)
    monkeypatch.setattr(convolution, "depthwise", lambda conv, x: dw_calls.append(conv) or real_dw(conv, x))
    x = torch.randn(8, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,))
    losses = []
    for m, bf16 in ((ref, True), (model, True), (fp32, False)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(m(x).float(), y)
        loss.backward()
        losses.append(loss.item())
    assert calls == [torch.bfloat16] * 27 and dw_calls == []
    assert losses[1] == pytest.approx(losses[2], rel=2e-2)

    def mean_cosine(m):
        pairs = zip(m.parameters(), fp32.parameters())
        return sum(F.cosine_similarity(p.grad.flatten(), q.grad.flatten(), dim=0).item() for p, q in pairs) / 83

    assert len(list(model.parameters())) == 83
    assert mean_cosine(model) >= mean_cosine(ref) - 0.05, (mean_cosine(model), mean_cosine(ref))


def test_without_a_compiler_training_runs_unfused(monkeypatch, tmp_path):
    """No C compiler (or a failed build): load() gives None, enable() marks nothing, the model still trains."""
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("MOBILENET_V1_CACHE", str(tmp_path / "cache"))
    build.load.cache_clear()
    try:
        assert build.load() is None
        model = create_model("mobilenet_v1_025_224", num_classes=10).to(memory_format=torch.channels_last).train()
        assert plan.enable(model) == 0
        assert not any(isinstance(m, (plan.KernelConvBNAct, plan.KernelSequential)) for m in model.modules())
        F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 2])).backward()
        assert not (tmp_path / "cache" / "kernels").exists() or not any((tmp_path / "cache" / "kernels").iterdir())
    finally:
        build.load.cache_clear()


def test_a_failed_build_leaves_no_partial_file(monkeypatch, tmp_path):
    """A compiler that fails: nothing is left in the kernel cache (the build writes to a temporary, then renames)."""
    cc = tmp_path / "bad-cc"
    cc.write_text("#!/bin/sh\necho 'error: no' >&2\nexit 1\n")
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setenv("MOBILENET_V1_CACHE", str(tmp_path / "cache"))
    build.load.cache_clear()
    try:
        assert build.load() is None
        assert list((tmp_path / "cache" / "kernels").iterdir()) == []
    finally:
        build.load.cache_clear()


@pytest.mark.slow
@needs_kernel
def test_compiled_training_step_steps_around_the_kernels(monkeypatch):
    """``torch.compile`` of a kernel-enabled model in training (``mobilenet-v1 train --compile`` does not enable the
    kernels, but a user may): dynamo traces ``kernels.plan.sequential``, takes PyTorch's operators, and the loss and
    gradients are those of the eager model without kernels."""
    torch.manual_seed(0)
    ref = create_model("mobilenet_v1_025_224", num_classes=10).to(memory_format=torch.channels_last).train()
    model = copy.deepcopy(ref)
    plan.enable(model)
    kernel_calls = []
    for name in (
        "batch_norm_relu",
        "depthwise",
        "batch_norm_relu_depthwise",
        "depthwise_block",
        "pointwise",
        "conv3x3",
    ):
        owner = batchnorm if name == "batch_norm_relu" else convolution
        monkeypatch.setattr(owner, name, lambda *a, name=name: kernel_calls.append(name))
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (4,))
    exact = copy.deepcopy(ref).double()
    losses = []
    for m, inputs in ((ref, x), (torch.compile(model), x), (exact, x.double())):
        loss = F.cross_entropy(m(inputs), y)
        loss.backward()
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-4) and not kernel_calls  # traced, not run eagerly
    # batch 4 down to 1×1 maps: BN over 4 values, so float32 gradients are far off float64, eager ones too: up to
    # ~3e-4 of a tensor's scale, inductor's ~1.3× that on an AVX2 CPU and 5.5× on an AVX-512 one (its own code
    # generation, not ours). A kernel run in their place would be off by the whole scale.
    params = zip(ref.named_parameters(), model.named_parameters(), exact.named_parameters())
    for (name, eager), (_, compiled), (_, ex) in params:
        assert _error(compiled.grad, ex.grad) <= 8 * _error(eager.grad, ex.grad) + 1e-5 * ex.grad.abs().max(), name


def test_pointwise_weight_gradient_keeps_the_weights_strides():
    """A 1×1 weight, channels-last, contiguous or stored [C_in][C_out] (which gemm.c does not write), gets the right
    gradient with its own strides on both paths (DDP's gradient buckets compare strides and warn on every step
    otherwise)."""
    layouts = {
        "channels-last": lambda w: w.contiguous(memory_format=torch.channels_last),
        "contiguous": lambda w: w.contiguous(),
        "[C_in][C_out]": lambda w: w.view(w.shape[:2]).t().contiguous().t().view(w.shape),
    }
    for c_in, (name, layout) in itertools.product((16, 256), layouts.items()):
        conv = nn.Conv2d(c_in, 32, 1, bias=False)
        conv.weight = nn.Parameter(layout(conv.weight.detach()))
        x = torch.randn(2, c_in, 3, 3).contiguous(memory_format=torch.channels_last)
        grad = torch.randn(2, 32, 3, 3)
        (gw,) = torch.autograd.grad(convolution.pointwise(conv, x), conv.weight, grad)
        (ref,) = torch.autograd.grad(F.conv2d(x, conv.weight), conv.weight, grad)
        assert gw.stride() == conv.weight.stride(), (c_in, name, gw.stride(), conv.weight.stride())
        torch.testing.assert_close(gw, ref, rtol=1e-5, atol=1e-5, msg=f"{c_in} {name}")


def test_empty_maps_take_pytorchs_operators():
    x = torch.empty(2, 8, 4, 0).contiguous(memory_format=torch.channels_last)
    assert not support.depthwise_applies(nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), x)
    assert not support.pointwise_applies(nn.Conv2d(8, 8, 1, bias=False), x)
    assert not support.applies(nn.BatchNorm2d(8).train(), x)


def test_enabling_the_kernels_keeps_the_state_dict_parameters_and_outputs():
    """``kernels.enable`` swaps modules, not weights: the same state-dict keys and tensors, the same Parameter
    objects (an optimizer made before still updates the model), the same outputs in evaluation, PyTorch's to
    float rounding in training, and ``on=False`` gives back the plain modules."""
    torch.manual_seed(0)
    model = create_model("mobilenet_v1_025_224", num_classes=10).to(memory_format=torch.channels_last)
    ref = copy.deepcopy(model)
    params = [id(p) for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    count = plan.enable(model)
    assert count == (27 if build.load() is not None else 0)
    assert [id(p) for p in model.parameters()] == params
    assert list(model.state_dict()) == list(state)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    if count:
        assert type(model.features) is plan.KernelSequential
        assert sum(type(m) is plan.KernelConvBNAct for m in model.modules()) == 27
    x = torch.randn(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), ref.eval()(x))
        got, want = model.train()(x), ref.train()(x)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()
    assert plan.enable(model, on=False) == 0
    assert not any(isinstance(m, (plan.KernelConvBNAct, plan.KernelSequential)) for m in model.modules())
    assert [id(p) for p in model.parameters()] == params
