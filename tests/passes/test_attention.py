"""Pass `attention`: sdc's exported attention (UNet self/cross, CLIP causal) as com.microsoft attention ops."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper

from sdc.passes import optimize
from sdc.passes.onnx.attention import attention_ort_cpu, attention_ort_cuda, interleave_heads
from tests.passes.cuda_reference import as_cpu_reference, needs_cuda
from tests.passes.helpers import (assert_same_outputs, cleaned, clip_feeds, const, make_model, ops, run,
                                  skip_unless_cuda, unet_feeds)

F = TensorProto.FLOAT


def _mha_nodes(m: ir.Model) -> list[ir.Node]:
    return [n for n in m.graph if n.op_type == "MultiHeadAttention"]


def test_unet_self_and_cross_attention(exports):
    m = cleaned(exports["unet"])
    result = attention_ort_cpu(m)
    assert result.counts == {"MultiHeadAttention": 4}
    after = ops(m)
    assert after["com.microsoft::MultiHeadAttention"] == 4 and "Softmax" not in after
    assert after["MatMul"] == 31 - 8 and after["Transpose"] == 20 - 16  # q·kᵀ, p·v and 4 Transposes per block
    nodes = _mha_nodes(m)
    assert [n.attributes["num_heads"].value for n in nodes] == [2, 2, 2, 2]
    # heads of 16 (32 channels) then 24 (48 channels): scale 1/sqrt(hd) read from the graph's Mul
    assert np.allclose([n.attributes["scale"].value for n in nodes], [16**-0.5] * 2 + [24**-0.5] * 2)
    # cross-attention: key and value are projections of encoder_hidden_states (24 channels, 5 or 9 tokens)
    cross = [n for n in nodes if n.inputs[1].producer().inputs[0].name == "encoder_hidden_states"]
    assert len(cross) == 2 and all(n.inputs[2].producer().inputs[0].name == "encoder_hidden_states" for n in cross)
    assert_same_outputs(exports["unet"], m, unet_feeds())
    assert_same_outputs(exports["unet"], m, unet_feeds(seed=2, hw=(4, 10), context_len=9))


def test_clip_causal_mask_becomes_attention_bias(exports):
    m = cleaned(exports["clip"])
    assert attention_ort_cpu(m).counts == {"MultiHeadAttention": 2}
    nodes = _mha_nodes(m)
    assert all(len(n.inputs) == 6 and n.inputs[3] is None and n.inputs[4] is None for n in nodes)
    assert all(n.inputs[5].producer().op_type == "Unsqueeze" for n in nodes)  # the [1, 1, S, S] additive mask
    assert all(n.attributes["num_heads"].value == 4 for n in nodes)
    for length in (7, 12):
        assert_same_outputs(exports["clip"], m, clip_feeds(length=length))


def test_ort_cuda_packs_qkv_and_kv(exports):
    m = cleaned(exports["unet"])
    result = attention_ort_cuda(m)
    assert result.counts == {"MultiHeadAttention(packed QKV)": 2, "MultiHeadAttention(packed KV)": 2}
    after = ops(m)
    # per block: q,k,v (self: -2) and k,v (cross: -1) projections become one GEMM each; q·kᵀ, p·v go into the op
    assert after["com.microsoft::MultiHeadAttention"] == 4 and after["MatMul"] == 31 - 2 * ((2 + 2) + (1 + 2))
    proto = ir.serde.serialize_model(m)
    assert len(needs_cuda(proto)) == 4
    assert_same_outputs(exports["unet"], as_cpu_reference(proto), unet_feeds())
    skip_unless_cuda("MultiHeadAttention on packed QKV/KV")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CUDAExecutionProvider"])
    np.testing.assert_allclose(session.run(None, unet_feeds())[0], run(exports["unet"], unet_feeds())[0], atol=1e-4)


def test_ort_cuda_masked_attention_stays_unpacked(exports):
    m = cleaned(exports["clip"])
    assert attention_ort_cuda(m).counts == {"MultiHeadAttention": 2}
    assert not needs_cuda(ir.serde.serialize_model(m))  # plain MultiHeadAttention runs on CPU too
    assert_same_outputs(exports["clip"], m, clip_feeds())


def test_interleave_heads_is_the_documented_packed_layout():
    """x·W_packed reshaped to [B, S, H, 3, hd] holds q, k, v of each head side by side."""
    rng = np.random.default_rng(0)
    heads, head_dim, d_in = 3, 4, 5
    x = rng.standard_normal((2, 7, d_in))
    weights = [rng.standard_normal((d_in, heads * head_dim)) for _ in range(3)]
    packed = (x @ interleave_heads(weights, heads)).reshape(2, 7, heads, 3, head_dim)
    for i, w in enumerate(weights):
        np.testing.assert_allclose(packed[:, :, :, i, :], (x @ w).reshape(2, 7, heads, head_dim))


def _cleaned_attention(scale_input: bool = False, biases: bool = False):
    """One self-attention block in the cleaned paddle form (CLIP's, unmasked, if `biases`); the scale
    optionally a graph input instead of a constant."""
    d, heads = 8, 2
    rng = np.random.default_rng(0)
    names = ("wq", "wk", "wv")
    if biases:
        nodes = [helper.make_node("MatMul", ["x", w], [w + "x"]) for w in names]
        nodes += [helper.make_node("Add", [w + "x", "b" + w[1]], [w[1]]) for w in names]
    else:
        nodes = [helper.make_node("MatMul", ["x", w], [w[1]]) for w in names]
    nodes += [
        helper.make_node("Reshape", ["q", "split"], ["q4"]), helper.make_node("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["k", "split"], ["k4"]), helper.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["v", "split"], ["v4"]), helper.make_node("Transpose", ["v4"], ["vh"], perm=[0, 2, 1, 3]),
        helper.make_node("MatMul", ["qh", "kt"], ["scores"]), helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1), helper.make_node("MatMul", ["probs", "vh"], ["o"]),
        helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]), helper.make_node("Reshape", ["ot", "merge"], ["y"]),
    ]
    inits = [const(w, rng.standard_normal((d, d)) / 3) for w in names]
    inits += [const("b" + w[1], rng.standard_normal(d)) for w in names] if biases else []
    inits += [const("split", [0, 0, heads, d // heads], np.int64), const("merge", [0, 0, d], np.int64)]
    inputs = [("x", F, ["b", "s", d])]
    if scale_input:
        inputs.append(("scale", F, []))
    else:
        inits.append(const("scale", 0.5))
    return make_model(nodes, inputs, [("y", F, ["b", "s", d])], inits)


def test_hand_built_form_matches_and_runs():
    model = _cleaned_attention()
    m = ir.serde.deserialize_model(model)
    from sdc.passes.onnx.cleanup import cleanup

    cleanup(m)  # shapes inferred, as in the pipelines
    assert attention_ort_cpu(m).counts == {"MultiHeadAttention": 1}
    assert ops(m) == {"MatMul": 3, "com.microsoft::MultiHeadAttention": 1}
    x = np.random.default_rng(1).standard_normal((2, 6, 8)).astype(np.float32)
    assert_same_outputs(model, m, {"x": x})


def test_packed_qkv_with_projection_biases():
    """CLIP-style biased q/k/v projections: biases packed in the same (head, q|k|v, d) layout as the weights."""
    model = _cleaned_attention(biases=True)
    m = ir.serde.deserialize_model(model)
    from sdc.passes.onnx.cleanup import cleanup

    cleanup(m)
    assert attention_ort_cuda(m).counts == {"MultiHeadAttention(packed QKV)": 1}
    assert ops(m) == {"MatMul": 1, "Add": 1, "Reshape": 1, "com.microsoft::MultiHeadAttention": 1}
    proto = ir.serde.serialize_model(m)
    x = np.random.default_rng(1).standard_normal((2, 6, 8)).astype(np.float32)
    assert_same_outputs(model, as_cpu_reference(proto), {"x": x})


def test_variable_scale_rejected_with_reason(caplog):
    m = ir.serde.deserialize_model(_cleaned_attention(scale_input=True))
    from sdc.passes.onnx.cleanup import cleanup

    cleanup(m)
    with caplog.at_level(logging.INFO, logger="sdc.passes"):
        result = attention_ort_cpu(m, debug=True)
    assert not result.modified and ops(m)["Softmax"] == 1
    assert "scores are not scaled by a constant scalar" in caplog.text


def test_tensorrt_and_portable_keep_matmul_softmax_matmul(exports):
    for target in ("tensorrt", "portable"):
        out, report = optimize(exports["unet"], target)
        after = ops(out)
        assert after["Softmax"] == 4 and after["MatMul"] == 31
        assert not any(op.startswith("com.microsoft::") for op in after)
        assert "attention" not in report.passes
