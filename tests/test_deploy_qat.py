"""Quantization-aware fine-tuning (``deploy/qat.py``): the simulated int8 graph must compute what ONNX Runtime's
int8 export computes, and fine-tuning through it must lower the distillation loss. What it does on real data is
measured in docs/int8.md (Google's held-out photos, Fashion-MNIST) and run end to end by the slow CLI test in
``test_deploy_quantize.py``.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from deploy_helpers import calibrated_model
from mobilenet_v1.checkpoint import Preprocessing
from mobilenet_v1.deploy.bias_correction import bias_correct
from mobilenet_v1.deploy.calibration import batches, calibration_reader
from mobilenet_v1.deploy.fold import fold_bn
from mobilenet_v1.deploy.onnx_export import export_onnx, ort_session, read_metadata
from mobilenet_v1.deploy.qat import QuantSim, distillation_loss, qat_finetune, widen_filters_for_int32_biases
from mobilenet_v1.deploy.quantize import as_uint8_weights, exact_int8_session, export_int8, quantize_onnx
from samples import photo_crops

pytest.importorskip("onnxruntime")
pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def setup():
    model = calibrated_model(seed=3)  # α = 0.25, 64×64, 10 classes, realistic BN statistics
    with torch.no_grad():  # near-dead filters with live BN shifts: folded, tiny weights beside a real bias, for
        # which ORT enlarges int8 weight scales and clips uint8-weight biases (qat.ort_scales)
        model.features.Conv2d_5_pointwise.conv.weight[:3] *= 1e-7
        model.features.Conv2d_2_depthwise.conv.weight[:2] *= 1e-7
    pre = Preprocessing(input_size=model.config.resolution)  # what export_int8 uses for a model without one
    calibration, held_out = photo_crops(64, 96, seed=0), photo_crops(32, 96, seed=5)
    x_cal = torch.from_numpy(np.concatenate(list(batches(calibration, pre, 32))))
    x_eval = torch.from_numpy(np.concatenate(list(batches(held_out, pre, 32))))
    return model, pre, calibration, x_cal, x_eval


@pytest.mark.parametrize(
    "per_channel, weight_type, reduce_range",
    [(True, "int8", True), (True, "int8", False), (False, "int8", True), (False, "int8", False),
     (True, "uint8", False)],  # fmt: skip
)
def test_simulation_computes_what_onnx_runtime_int8_computes(setup, per_channel, weight_type, reduce_range,
                                                             tmp_path):
    """Layer by layer: each simulated conv block, fed ONNX Runtime's own (dequantized) input, must give ORT's
    (dequantized) output — the same weights grid, activation scales and zero points — up to rounding ties
    (a float sum landing on a rounding boundary may go either way: at most one quantization step, rarely).
    Whole-network outputs are no test on this random model: one flipped tie doubles layer after layer.
    ORT runs the file through ``exact_int8_session``, so 8-bit int8 weights are checked on CPUs whose own
    u8×s8 products would saturate too."""
    model, _, calibration, x_cal, x_eval = setup
    path = tmp_path / "int8.onnx"
    export_int8(model, path, calibration, per_channel=per_channel, bias_correction=False, limit=None,
                weight_type=weight_type, rounding="nearest", reduce_range=reduce_range)  # fmt: skip
    graph = onnx.load(str(path))
    quantized = {n.output[0] for n in graph.graph.node if n.op_type == "QuantizeLinear"}  # activations only
    dequantized = [n.output[0] for n in graph.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in quantized]
    for name in dequantized:
        graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    onnx.save(graph, str(tmp_path / "probed.onnx"))
    probed = exact_int8_session(tmp_path / "probed.onnx").run(None, {"input": x_eval.numpy()})
    ort_acts = [torch.from_numpy(a) for a in probed[1:]]
    if weight_type == "uint8":  # the export widened the near-dead filters first (next test)
        model, _ = widen_filters_for_int32_biases(model, x_cal, per_channel, weight_type=weight_type)
    sim = QuantSim(model, x_cal, per_channel=per_channel, weight_type=weight_type, reduce_range=reduce_range)
    assert len(ort_acts) == len(sim.blocks) + 1  # the input, then every conv + ReLU output
    assert torch.equal(sim.input_quant(x_eval), ort_acts[0])
    with torch.no_grad():
        for i, (block, quant) in enumerate(zip(sim.blocks, sim.output_quants)):
            ours, theirs = block(ort_acts[i]), ort_acts[i + 1]  # the block's hook applies its fake quantization
            steps = ((ours - theirs).abs() / quant.scale).round()
            assert steps.max() <= 1, (i, float(steps.max()))
            assert (steps > 0).float().mean() <= 0.01, (i, float((steps > 0).float().mean()))


def test_uint8_export_widens_near_dead_filters_so_no_bias_is_clipped(setup, tmp_path, caplog):
    """The fixture's near-dead filters make ORT clip int32 biases with uint8 weights (and its integer kernels
    then overflow). export_int8 widens them first: no clipping, outputs as the simulation says, float model
    unchanged to ~1e-5 of the biases."""
    model, pre, calibration, x_cal, x_eval = setup
    export_onnx(model, tmp_path / "fp32.onnx")
    with caplog.at_level("WARNING"):  # the problem, without widening
        quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "clipped.onnx", calibration_reader(calibration, pre),
                      weight_type="uint8")  # fmt: skip
    assert "exceeds the range of a int32" in caplog.text
    caplog.clear()
    widened, count = widen_filters_for_int32_biases(model, x_cal, weight_type="uint8")
    assert 1 <= count <= 5  # some of the 3 + 2 filters the fixture killed (their biases decide which)
    with torch.no_grad():
        before, after = fold_bn(model)(x_eval), widened(x_eval)
    assert (after - before).abs().max() <= 1e-4 * before.abs().max()
    path = tmp_path / "uint8.onnx"
    with caplog.at_level("WARNING"):
        report = export_int8(model, path, calibration, bias_correction=False, limit=None, weight_type="uint8")
    assert "exceeds the range of a int32" not in caplog.text
    assert read_metadata(path)["quantization"]["widened_filters"] == count and report.weight_type == "uint8"
    int8 = torch.from_numpy(ort_session(path).run(None, {"input": x_eval.numpy()})[0])  # integer kernels
    with torch.no_grad():
        simulated = QuantSim(widened, x_cal, weight_type="uint8").student(x_eval)
        unwidened = QuantSim(model, x_cal, weight_type="uint8").student(x_eval)
    assert (simulated - int8).abs().mean() < (unwidened - int8).abs().mean()


def test_finetuning_through_the_simulation_lowers_the_distillation_loss(setup):
    """Gradients pass the rounding (straight-through) and fine-tuning fits the float model's outputs. On the
    images themselves: this random network's behaviour on random crops says little about its behaviour on
    whole images. Whether fitting carries over to unseen images is a property of the data, not of the code:
    on Google's model and five photos it did not (docs/int8.md)."""
    model, pre, calibration, _, _ = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned, report = qat_finetune(model, calibration[:32], pre, steps=30, lr=1e-4, batch_size=32, augment=False)
    assert report.last_loss < 0.8 * report.first_loss, report
    assert not any(p.requires_grad for p in tuned.parameters())
    assert [type(m) for m in tuned.modules()] == [type(m) for m in fold_bn(model).modules()]  # simulation gone
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the input model is untouched
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, fold_bn(model).state_dict()[k])]
    assert any("weight" in k for k in changed) and any("bias" in k for k in changed)


def test_the_float_model_is_the_teacher_when_starting_from_bias_corrected_weights(setup):
    """The export fine-tunes from bias-corrected weights; their biases anticipate rounding, so as a float
    model they are *worse* than the original. The distillation target must stay the original."""
    model, pre, calibration, _, _ = setup
    images = calibration[:16]
    x = torch.from_numpy(np.concatenate(list(batches(images, pre, 16))))
    corrected = bias_correct(model, x)
    _, report = qat_finetune(model, images, pre, steps=1, lr=1e-12, batch_size=8, start=corrected)
    with torch.no_grad():  # the probe is all 16 images (2 x batch_size); batch-mean KL ignores their order
        simulated = QuantSim(corrected, x).student(x)
        expected = distillation_loss(simulated, fold_bn(model)(x))
        wrong = distillation_loss(simulated, fold_bn(corrected)(x))
    assert report.first_loss == pytest.approx(float(expected), rel=1e-5)
    assert abs(float(wrong) - float(expected)) > 1e-3 * float(expected)  # the check can tell them apart


def test_bad_arguments_are_clear(setup):
    model, pre, calibration, _, _ = setup
    with pytest.raises(ValueError, match="at least one step"):
        qat_finetune(model, calibration, pre, steps=0)
    with pytest.raises(ValueError, match="no calibration images"):
        qat_finetune(model, [], pre, steps=5)


def test_exact_session_changes_nothing_where_nothing_saturates(setup, tmp_path):
    """With 7-bit weights ORT's own u8×s8 products never saturate, on any x86 CPU: the u8×u8 rewrite that
    ``exact_int8_session`` runs must then compute the same file to the bit, from the same integers."""
    model, _, calibration, _, x_eval = setup
    path = tmp_path / "int8.onnx"
    export_int8(model, path, calibration, limit=None, reduce_range=True)
    plain = ort_session(path).run(None, {"input": x_eval.numpy()})[0]
    exact = exact_int8_session(path).run(None, {"input": x_eval.numpy()})[0]
    assert np.array_equal(plain, exact)
    proto = onnx.load(str(path))
    rewritten = {t.name: onnx.numpy_helper.to_array(t) for t in as_uint8_weights(proto).graph.initializer}
    weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(weights) >= 54  # 27 convolutions' weights and zero points
    for t in weights:
        assert np.array_equal(rewritten[t.name].astype(np.int16) - 128, onnx.numpy_helper.to_array(t)), t.name
