"""fp16/bf16 conversion (sdc.passes.onnx.float16) and its CPU emulation (sdc.runtime.emulate).

Small graphs built here: exact Cast/island counts, numerics against fp32, and the emulation checked
against onnx.reference's real fp16 arithmetic.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper

from sdc.passes.onnx.float16 import bypass_round_trips, convert, name_nodes, unsupported_nodes
from sdc.runtime.emulate import emulated, emulated_session_of, low_precision_of
from tests.passes.helpers import const, make_model, ops


def block(scale: float = 1.0, opset: int = 17) -> onnx.ModelProto:
    """x -> Conv -> InstanceNorm -> Mul(scale) -> MatMul -> Softmax -> y, and t -> Mul(freq) -> Sin -> e."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("InstanceNormalization", ["c", "g", "beta"], ["n"], name="norm"),
        helper.make_node("Mul", ["n", "k"], ["s"], name="scale"),
        helper.make_node("Reshape", ["s", "shape"], ["r"], name="flat"),
        helper.make_node("MatMul", ["r", "m"], ["mm"], name="proj"),
        helper.make_node("Softmax", ["mm"], ["y"], axis=-1, name="softmax"),
        helper.make_node("Mul", ["t", "freq"], ["arg"], name="phase"),
        helper.make_node("Sin", ["arg"], ["e"], name="sin"),
    ]
    inits = [
        const("w", rng.standard_normal((4, 3, 3, 3)) * 0.3), const("b", rng.standard_normal(4)),
        const("g", rng.uniform(0.5, 1.5, 4)), const("beta", rng.standard_normal(4) * 0.1),
        const("k", scale), const("shape", [1, 4, -1], np.int64), const("m", rng.standard_normal((16, 8)) * 0.2),
        const("freq", np.exp(-np.log(10000) * np.arange(4) / 4)),
    ]
    return make_model(nodes, [("x", T.FLOAT, [1, 3, 4, 4]), ("t", T.FLOAT, [1, 1])],
                      [("y", T.FLOAT, [1, 4, 8]), ("e", T.FLOAT, [1, 4])], inits, opset=opset)


FEEDS = {"x": np.random.default_rng(1).standard_normal((1, 3, 4, 4)).astype(np.float32),
         "t": np.array([[951.43]], np.float32)}


def fp32(model, feeds=FEEDS):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def copy(model):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def test_fp16_conversion_counts_and_io_types():
    model = block()
    name_nodes(model)
    out, counts = convert(copy(model), "fp16", set())
    hist = ops(out)
    # x and t are cast in once each, y and e out once each; nothing else (no islands).
    assert hist["Cast"] == 4 and counts["Cast"] == 4 and counts["islands"] == 0
    assert [i.type.tensor_type.elem_type for i in out.graph.input] == [T.FLOAT, T.FLOAT]
    assert [o.type.tensor_type.elem_type for o in out.graph.output] == [T.FLOAT, T.FLOAT]
    assert {t.name: t.data_type for t in out.graph.initializer}["w"] == T.FLOAT16
    assert low_precision_of(out) == "fp16" and low_precision_of(model) is None
    onnx.checker.check_model(out)


def test_islands_stay_fp32_and_casts_surround_them():
    model = block()
    name_nodes(model)
    out, counts = convert(copy(model), "fp16", {"norm", "softmax"})
    assert counts["islands"] == 2
    nodes = {n.name: n for n in out.graph.node}
    producer = {o: n for n in out.graph.node for o in n.output}
    # The norm reads the conv output through a Cast to fp32, its weights stay fp32.
    assert producer[nodes["norm"].input[0]].op_type == "Cast"
    assert {t.name: t.data_type for t in out.graph.initializer}["g"] == T.FLOAT
    # 4 I/O casts, into and out of the norm, into the softmax and out of it (to fp16, before the
    # output cast back to fp32: the converter types every non-I/O float value fp16).
    assert ops(out)["Cast"] == counts["Cast"] == 8


def test_fp16_numerics_close_to_fp32_and_emulation_matches_real_fp16_arithmetic():
    from onnx.reference import ReferenceEvaluator

    model = block()
    name_nodes(model)
    out, _ = convert(copy(model), "fp16", {"phase", "sin"})
    ref = fp32(model)
    emu = emulated_session_of(out).run(None, FEEDS)
    real = ReferenceEvaluator(out).run(None, FEEDS)  # numpy fp16 arithmetic, op by op
    for r, e, q in zip(ref, emu, real):
        assert np.abs(e - r).max() <= 2e-3 * max(1.0, np.abs(r).max())
        # Same rounding points; onnx.reference's fp16 reductions accumulate in fp16, ours in fp32.
        assert np.abs(e - q.astype(np.float32)).max() <= 2e-3


def test_emulation_catches_an_intermediate_overflow_that_plain_onnxruntime_hides():
    nodes = [helper.make_node("Mul", ["x", "k"], ["y"], name="up"), helper.make_node("Div", ["y", "k"], ["z"], name="down")]
    model = make_model(nodes, [("x", T.FLOAT, [2])], [("z", T.FLOAT, [2])], [const("k", 1000.0)])
    out, _ = convert(copy(model), "fp16", set())
    x = {"x": np.array([100.0, 1.0], np.float32)}
    plain = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    assert np.isfinite(plain).all()  # ORT's CPU provider merges its inserted casts: the overflow vanishes
    emu = emulated_session_of(out).run(None, x)[0]
    assert np.isinf(emu[0]) and emu[1] == pytest.approx(1.0, rel=1e-3)  # 100 * 1000 overflows fp16
    graph = emulated(out)
    # The artifact's 2 I/O casts, plus a round/widen pair after each of the 3 nodes making an fp16 value
    # (the input cast, Mul, Div).
    assert [n.op_type for n in graph.graph.node].count("Cast") == 2 + 3 * 2


def test_round_trip_bypass_keeps_the_timestep_exact():
    """An fp32 island reading a graph input reads the input, not its fp16 copy cast back."""
    model = block()
    name_nodes(model)
    out, _ = convert(copy(model), "fp16", {"phase", "sin"})
    phase = next(n for n in out.graph.node if n.name == "phase")
    assert phase.input[0] == "t"
    e = emulated_session_of(out).run(None, FEEDS)[1]
    assert np.abs(e - fp32(model)[1]).max() < 1e-3  # fp16 spacing at 951 is 0.5 rad: without the bypass, ~0.1
    # The bypass helper itself: a lone fp32->fp16->fp32 chain collapses.
    nodes = [helper.make_node("Cast", ["a"], ["h"], to=T.FLOAT16, name="down"),
             helper.make_node("Cast", ["h"], ["f"], to=T.FLOAT, name="up"),
             helper.make_node("Sin", ["f"], ["o"], name="sin")]
    m = make_model(nodes, [("a", T.FLOAT, [1])], [("o", T.FLOAT, [1])])
    onnx.shape_inference.infer_shapes(m)
    from sdc.passes.onnx.float16 import infer_types

    infer_types(m)
    assert bypass_round_trips(m) == 1
    assert [n.op_type for n in m.graph.node] == ["Cast", "Sin"] and m.graph.node[-1].input[0] == "a"


def test_bf16_values_come_from_fp32_and_huge_constants_are_clamped():
    import ml_dtypes

    big = float(np.finfo(np.float32).min)  # a mask value: rounds to -inf in bf16, and 0 * -inf = NaN
    nodes = [helper.make_node("Mul", ["x", "m"], ["y"], name="mask"), helper.make_node("Add", ["y", "b"], ["z"], name="add")]
    b = np.array([1.0 + 2 ** -9, 3.0], np.float32)  # 1 + 2^-9 is exact in fp16, not in bf16
    model = make_model(nodes, [("x", T.FLOAT, [2])], [("z", T.FLOAT, [2])], [const("m", big), const("b", b)])
    out, _ = convert(copy(model), "bf16", set())
    assert low_precision_of(out) == "bf16"
    inits = {t.name: t for t in out.graph.initializer}
    got_b = np.frombuffer(inits["b"].raw_data, dtype=ml_dtypes.bfloat16).astype(np.float32)
    assert got_b.tolist() == b.astype(ml_dtypes.bfloat16).astype(np.float32).tolist()
    res = emulated_session_of(out).run(None, {"x": np.array([0.0, 1.0], np.float32)})[0]
    assert np.isfinite(res).all()


def test_ops_without_a_low_precision_type_at_the_opset_are_found_from_the_schemas():
    model = block(opset=17)
    name_nodes(model)
    bf16 = unsupported_nodes(model, "bf16")
    assert set(bf16) == {"conv", "norm", "sin"} and "Conv-17" in bf16["conv"]
    assert unsupported_nodes(model, "fp16") == {}


def test_model_bytes_past_the_protobuf_limit():
    """A real-size fp16 UNet with its emulation casts is past 2 GB, where protobuf's ByteSize() raises
    (seen at real size: EncodeError 'Failed to serialize proto'); the size check must not."""
    import onnx
    from onnx import helper

    from sdc.runtime.emulate import model_bytes

    small = helper.make_model(helper.make_graph([], "g", [], [], [helper.make_tensor("w", onnx.TensorProto.FLOAT, [4], [1.0] * 4)]))
    assert model_bytes(small) == small.ByteSize()

    class TooBig:
        graph = small.graph

        def ByteSize(self):
            from google.protobuf.message import EncodeError

            raise EncodeError("Failed to serialize proto")

    assert model_bytes(TooBig()) > 2**31


def test_runtime_model_runs_a_bf16_artifact_emulated_and_says_why_the_cpu_cannot(tmp_path):
    """The runtime's OnnxModel: ONNX Runtime's CPU provider has no bf16 Add; without emulation that is a
    one-line InputError naming the way out (not 'rebuild the bundle'), with it the graph runs as validated."""
    from sdc.errors import InputError
    from sdc.runtime.models import OnnxModel

    b = np.array([1.0 + 2 ** -9, 3.0], np.float32)
    model = make_model([helper.make_node("Add", ["x", "b"], ["z"], name="add")], [("x", T.FLOAT, [2])],
                       [("z", T.FLOAT, [2])], [const("b", b)])
    low, _ = convert(copy(model), "bf16", set())
    path = tmp_path / "model.tensorrt.bf16.onnx"
    onnx.save(low, str(path))
    spec = {"inputs": [{"name": "x", "dtype": "float32"}], "outputs": [{"name": "z", "dtype": "float32"}]}
    with pytest.raises(InputError, match="no kernel .* emulated per op"):
        OnnxModel(path, spec, ["CPUExecutionProvider"])
    m = OnnxModel(path, spec, ["CPUExecutionProvider"], emulate="bf16")
    x = np.array([0.0, 1.0], np.float32)
    assert m.emulated == "bf16"
    np.testing.assert_array_equal(m(x=x)["z"], emulated_session_of(low).run(None, {"x": x})[0])
    assert m(x=x)["z"][0] == 1.0  # 1 + 2^-9 rounded to bf16's 8 bits of mantissa
