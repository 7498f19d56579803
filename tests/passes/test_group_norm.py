"""Pass `group_norm`: paddle2onnx's InstanceNormalization GroupNorm as GroupNormalization-18 or com.microsoft GroupNorm."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper

from sdc.passes.onnx.group_norm import group_norm_onnx18, group_norm_ort_cuda
from sdc.passes.onnx.pipelines import ORT_CPU, PORTABLE
from tests.passes.cuda_reference import as_cpu_reference, needs_cuda
from tests.passes.helpers import (assert_same_outputs, cleaned, const, make_model, ops, run, skip_unless_cuda,
                                  unet_feeds)

F = TensorProto.FLOAT


def paddle_group_norm(channels=8, groups=4, eps=1e-5, scale=1.0, silu=False, extra=()):
    """GroupNorm exactly as paddle2onnx 2.1.0 writes it (after cleanup folded γ, β to [C, 1, 1])."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Reshape", ["x", "groups_shape"], ["grouped"]),
        helper.make_node("InstanceNormalization", ["grouped", "ones", "zeros"], ["normed"], epsilon=eps),
        helper.make_node("Shape", ["x"], ["x_shape"]),
        helper.make_node("Reshape", ["normed", "x_shape"], ["back"]),
        helper.make_node("Mul", ["back", "gamma"], ["scaled"]),
        helper.make_node("Add", ["scaled", "beta"], ["y"]),
    ]
    if silu:
        nodes += [helper.make_node("Sigmoid", ["y"], ["sig"]), helper.make_node("Mul", ["y", "sig"], ["z"])]
    nodes += list(extra)
    inits = [const("groups_shape", [0, groups, -1], np.int64), const("ones", np.full(groups, scale)),
             const("zeros", np.zeros(groups)), const("gamma", rng.standard_normal((channels, 1, 1)) + 1),
             const("beta", rng.standard_normal((channels, 1, 1)))]
    out = "z" if silu else "y"
    outputs = [(out, F, ["n", channels, "h", "w"])] + [(o, F, ["n", "c", "h", "w"]) for n in extra for o in n.output]
    return make_model(nodes, [("x", F, ["n", channels, "h", "w"])], outputs, inits)


def feeds(channels=8, seed=0):
    return {"x": np.random.default_rng(seed).standard_normal((2, channels, 5, 3)).astype(np.float32) * 3 + 1}


def test_export_holds_instance_norm_form(exports):
    """The UNet export has 7 GroupNorms (4 resnet + norm_out with SiLU, 2 transformer without), none fused."""
    exported = ops(exports["unet"])
    assert exported["InstanceNormalization"] == 7 and "GroupNormalization" not in exported


def test_tensorrt_group_normalization_18(exports):
    m = cleaned(exports["unet"])
    result = group_norm_onnx18(m)
    assert result.counts == {"GroupNormalization": 7}
    after = ops(m)
    assert after["GroupNormalization"] == 7 and "InstanceNormalization" not in after
    assert m.opset_imports[""] == 18
    nodes = [n for n in m.graph if n.op_type == "GroupNormalization"]
    assert sorted(round(n.attributes["epsilon"].value, 9) for n in nodes) == [1e-6] * 2 + [1e-5] * 5
    assert {n.attributes["num_groups"].value for n in nodes} == {8}
    # ORT CPU runs GroupNormalization-18 (as its function body): the numbers must not move.
    assert_same_outputs(exports["unet"], m, unet_feeds())
    assert_same_outputs(exports["unet"], m, unet_feeds(seed=3, hw=(6, 4), context_len=3))


def test_ort_cuda_group_norm(exports):
    m = cleaned(exports["unet"])
    result = group_norm_ort_cuda(m)
    assert result.counts == {"GroupNorm+SiLU": 5, "GroupNorm": 2}
    after = ops(m)
    assert after["com.microsoft::GroupNorm"] == 7 and "InstanceNormalization" not in after
    assert after["Sigmoid"] == 1  # only the time embedding's SiLU is left
    nodes = [n for n in m.graph if n.op_type == "GroupNorm"]
    assert sorted(n.attributes["activation"].value for n in nodes) == [0, 0, 1, 1, 1, 1, 1]
    assert all(n.attributes["channels_last"].value == 1 and n.attributes["groups"].value == 8 for n in nodes)
    assert all(n.inputs[1].const_value.dtype == ir.DataType.FLOAT and len(n.inputs[1].shape) == 1 for n in nodes)
    proto = ir.serde.serialize_model(m)
    assert len(needs_cuda(proto)) == 7
    assert_same_outputs(exports["unet"], as_cpu_reference(proto), unet_feeds())
    skip_unless_cuda("com.microsoft GroupNorm")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CUDAExecutionProvider"])
    got = session.run(None, unet_feeds())[0]
    np.testing.assert_allclose(got, run(exports["unet"], unet_feeds())[0], atol=1e-4)


def test_silu_fused_on_small_graph():
    model = paddle_group_norm(silu=True)
    m = ir.serde.deserialize_model(model)
    assert group_norm_ort_cuda(m).counts == {"GroupNorm+SiLU": 1}
    assert ops(m) == {"Transpose": 2, "com.microsoft::GroupNorm": 1}
    assert_same_outputs(model, as_cpu_reference(ir.serde.serialize_model(m)), feeds())


def test_real_affine_in_instance_norm_rejected_with_reason(caplog):
    model = paddle_group_norm(scale=2.0)
    m = ir.serde.deserialize_model(model)
    with caplog.at_level(logging.INFO, logger="sdc.passes"):
        result = group_norm_ort_cuda(m, debug=True)
    assert not result.modified and ops(m)["InstanceNormalization"] == 1
    assert "InstanceNormalization has a real affine" in caplog.text


def test_single_group_rejected_for_tensorrt(caplog):
    m = ir.serde.deserialize_model(paddle_group_norm(groups=1))
    with caplog.at_level(logging.INFO, logger="sdc.passes"):
        result = group_norm_onnx18(m, debug=True)
    assert not result.modified and m.opset_imports[""] == 17
    assert "num_groups == 1" in caplog.text


def test_opset_17_nodes_adapted_to_18():
    """Raising the opset moves ReduceMean's axes to an input and gives Split its num_outputs."""
    extra = [
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Split", ["x"], ["left", "right"], axis=2),
    ]
    model = paddle_group_norm(extra=extra)
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 4  # Split into equal halves needs an even dim
    m = ir.serde.deserialize_model(model)
    result = group_norm_onnx18(m)
    assert result.counts == {"GroupNormalization": 1, "opset 17->18 adapted nodes": 2}
    assert m.opset_imports[""] == 18
    reduce_mean = next(n for n in m.graph if n.op_type == "ReduceMean")
    split = next(n for n in m.graph if n.op_type == "Split")
    assert "axes" not in reduce_mean.attributes and reduce_mean.inputs[1].const_value.numpy().tolist() == [1]
    assert split.attributes["num_outputs"].value == 2
    x = np.random.default_rng(1).standard_normal((2, 8, 4, 3)).astype(np.float32)
    assert_same_outputs(model, m, {"x": x})


def test_not_used_where_onnx_runtime_expands_it():
    """ORT has no GroupNormalization kernel (its function body ran 2-4x slower than the InstanceNorm form)."""
    for pipeline in (PORTABLE, ORT_CPU):
        assert group_norm_onnx18 not in pipeline and group_norm_ort_cuda not in pipeline
