"""Pass `cleanup`: paddle2onnx's Identity/Constant noise, shape chains and no-op arithmetic removed, names kept."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from sdc.passes.onnx.cleanup import cleanup
from tests.passes.helpers import assert_same_outputs, clip_feeds, const, make_model, ops, to_ir, unet_feeds

F = TensorProto.FLOAT


def test_clip_export_exact_form(exports):
    m = to_ir(exports["clip"])
    before = ops(m)
    result = cleanup(m)
    assert before["Identity"] == 58 and before["Constant"] == 48
    assert result.modified and result.counts["Identity"] == 58 and result.counts["Constant"] == 48
    # 2 encoder layers: per layer 3 q/k/v bias + mask + out bias + 2 residual + fc1/fc2 bias + erf+1 = 10 Add,
    # plus embeddings and pooling index; paddle's `scale` Add(., 0) is gone. k's two Transposes are one.
    assert ops(m) == {
        "Add": 22, "ArgMax": 1, "Cast": 2, "Div": 2, "Equal": 1, "Erf": 2, "Gather": 3, "Greater": 1,
        "LayerNormalization": 5, "MatMul": 16, "Mul": 8, "Range": 3, "Reshape": 9, "Shape": 1, "Slice": 3,
        "Softmax": 2, "Squeeze": 3, "Transpose": 8, "Unsqueeze": 3,
    }
    assert [v.name for v in m.graph.outputs] == ["last_hidden_state", "pooler_output", "hidden_states_penultimate"]
    for length in (7, 12):
        assert_same_outputs(exports["clip"], m, clip_feeds(length=length))


def test_unet_export_keeps_numbers(exports):
    m = to_ir(exports["unet"])
    cleanup(m)
    after = ops(m)
    assert "Identity" not in after and "Constant" not in after
    # GroupNorm's Shape(x) stays (dynamic H, W), one per distinct x after CSE
    assert after["InstanceNormalization"] == 7 and after["Transpose"] == 20 and after["Softmax"] == 4
    assert [v.name for v in m.graph.outputs] == ["out_sample"]
    assert_same_outputs(exports["unet"], m, unet_feeds())
    assert_same_outputs(exports["unet"], m, unet_feeds(seed=1, hw=(4, 10), context_len=9))


def test_output_names_survive_identity():
    """An output made by an Identity keeps its name; an Identity from input to output must stay."""
    nodes = [
        helper.make_node("Add", ["x", "bias"], ["t"]),
        helper.make_node("Identity", ["t"], ["out_sample"]),
        helper.make_node("Identity", ["y"], ["last_hidden_state"]),
    ]
    model = make_model(nodes, [("x", F, [2, 3]), ("y", F, [2, 3])],
                       [("out_sample", F, [2, 3]), ("last_hidden_state", F, [2, 3])], [const("bias", np.ones(3))])
    m = to_ir(model)
    result = cleanup(m)
    assert [v.name for v in m.graph.inputs] == ["x", "y"]
    assert [v.name for v in m.graph.outputs] == ["out_sample", "last_hidden_state"]
    assert ops(m) == {"Add": 1, "Identity": 1}
    assert result.counts == {"Identity": 1}
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "y": np.ones((2, 3), np.float32)}
    assert_same_outputs(model, m, feeds, atol=0)


def test_two_outputs_of_one_value_keep_their_names():
    """onnx-ir's IdentityEliminationPass renames ['a', 'b'] here to ['b', 'b_alias_1']; cleanup must not."""
    nodes = [helper.make_node("Relu", ["x"], ["t"]), helper.make_node("Identity", ["t"], ["a"]),
             helper.make_node("Identity", ["t"], ["b"]), helper.make_node("Identity", ["a"], ["c"])]
    model = make_model(nodes, [("x", F, [2])], [("a", F, [2]), ("b", F, [2]), ("c", F, [2])])
    m = to_ir(model)
    cleanup(m)
    assert [v.name for v in m.graph.outputs] == ["a", "b", "c"]
    assert ops(m) == {"Relu": 1, "Identity": 2}  # t took the name "a"; b and c must stay copies
    assert_same_outputs(model, m, {"x": np.array([-1.0, 2.0], np.float32)}, atol=0)


def test_shape_chain_and_scale_folded():
    """paddle's flatten (Reshape to Concat(Slice(Shape(x)), [-1])) and scale (Mul, then Add 0) simplify away."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "two", "zero"], ["lead"]),
        helper.make_node("Concat", ["lead", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("Mul", ["flat", "half"], ["scaled"]),
        helper.make_node("Add", ["scaled", "nothing"], ["shifted"]),
        helper.make_node("Identity", ["shifted"], ["out"]),
    ]
    inits = [const("zero", [0], np.int64), const("two", [2], np.int64), const("minus_one", [-1], np.int64),
             const("half", 0.5), const("nothing", 0.0)]
    model = make_model(nodes, [("x", F, ["batch", 3, 4, 5])], [("out", F, ["batch", 3, 20])], inits)
    m = to_ir(model)
    cleanup(m)
    assert ops(m) == {"Reshape": 1, "Mul": 1}
    reshape = next(n for n in m.graph if n.op_type == "Reshape")
    assert reshape.inputs[1].const_value.numpy().tolist() == [0, 0, -1]  # 0: copy that dim of x
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    assert_same_outputs(model, m, {"x": x}, atol=0)


def test_second_cleanup_changes_nothing(exports):
    """The build optimizes the portable graph again per target: cleanup must be idempotent."""
    for name in ("unet", "clip"):
        m = to_ir(exports[name])
        cleanup(m)
        again = cleanup(m)
        assert not again.modified and again.counts == {}
