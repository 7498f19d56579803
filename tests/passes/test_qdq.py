"""INT8 passes (sdc.passes.onnx.qdq, qdq_switch): Q/DQ counts, numerics, CPU-saturation safety, the sweep graph."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper

from sdc.passes.onnx.float16 import name_nodes
from sdc.passes.onnx.qdq import SCHEMES, quantizable_nodes, quantize_int8, quantized_counts, weights_only_int8
from sdc.passes.onnx.qdq_switch import FLAGS, switchable
from tests.passes.helpers import const, make_model, ops

C, H = 64, 6  # enough channels that u8 x s8 pair sums exceed int16 with full-range weights


def net(seed: int = 0, output_f: bool = False) -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> flatten -> MatMul(const) -> MatMul(activation x activation); with `output_f`
    the flattened `f`, which the projection reads quantized, is a graph output too (as CLIP's pooled output)."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv_in"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv_mid"),
        helper.make_node("Reshape", ["c2", "shape"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "m"], ["p"], name="proj"),
        helper.make_node("Transpose", ["p"], ["pt"], perm=[0, 2, 1], name="t"),
        helper.make_node("MatMul", ["p", "pt"], ["y"], name="scores"),
    ]
    inits = [const("w1", rng.standard_normal((C, 3, 3, 3)) * 0.5), const("b1", rng.standard_normal(C) * 0.1),
             const("w2", rng.standard_normal((C, C, 3, 3)) * 0.1), const("b2", rng.standard_normal(C) * 0.1),
             const("shape", [0, C, -1], np.int64), const("m", rng.standard_normal((H * H, 16)) * 0.2)]
    outputs = [("y", T.FLOAT, ["batch", C, C])] + ([("f", T.FLOAT, ["batch", C, H * H])] if output_f else [])
    model = make_model(nodes, [("x", T.FLOAT, ["batch", 3, H, H])], outputs, inits)
    name_nodes(model)
    return model


def feeds(n: int, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.uniform(0, 2, (1, 3, H, H)).astype(np.float32)} for _ in range(n)]


def run(path: Path | onnx.ModelProto, inputs, fuse: bool = True):
    opts = ort.SessionOptions()
    if not fuse:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = str(path) if isinstance(path, Path) else path.SerializeToString()
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"]).run(None, inputs)[0]


@pytest.fixture
def fp32_path(tmp_path):
    p = tmp_path / "fp32.onnx"
    onnx.save(net(), str(p))
    return p


def quantize(fp32_path: Path, tmp_path: Path, scheme: str, exclude=(), name="q") -> Path:
    out = tmp_path / f"{name}.onnx"
    quantize_int8(fp32_path, out, SCHEMES[scheme], feeds(8), tmp_path / f"{scheme}.json", list(exclude), external=False)
    return out


def relerr(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_int8_quantizes_conv_and_constant_matmuls_only(fp32_path, tmp_path):
    q = onnx.load(str(quantize(fp32_path, tmp_path, "ort-cpu")))
    assert quantizable_nodes(net()) == ["conv_in", "conv_mid", "proj"]
    counts = quantized_counts(q)
    assert {k: counts[k] for k in ("Conv", "MatMul")} == {"Conv": 2, "MatMul": 1}
    # Activations: x, r1 (conv_mid's input), c1 and c2 (conv outputs) and f (proj's input): 5 Q/DQ pairs;
    # plus a DequantizeLinear per weight and bias (w1, b1, w2, b2, m).
    assert counts["QuantizeLinear"] == 5 and counts["DequantizeLinear"] == 5 + 5
    scores = next(n for n in q.graph.node if n.name == "scores")  # activation x activation stays float
    producer = {o: n.op_type for n in q.graph.node for o in n.output}
    assert all(producer.get(i) != "DequantizeLinear" for i in scores.input)
    x = feeds(1, seed=7)[0]
    assert relerr(run(tmp_path / "q.onnx", x), run(fp32_path, x)) < 0.05


def test_excluded_nodes_stay_float(fp32_path, tmp_path):
    q = onnx.load(str(quantize(fp32_path, tmp_path, "ort-cpu", exclude=["conv_in"])))
    counts = quantized_counts(q)
    assert counts["Conv"] == 1
    w1 = {t.name: t for t in q.graph.initializer}
    assert "w1" in w1 and w1["w1"].data_type == T.FLOAT


def test_ort_cpu_scheme_is_exact_in_integer_kernels_on_any_x86(fp32_path, tmp_path):
    """7-bit weights: the fused u8s8 kernels give the same result as the exact (unfused) Q/DQ arithmetic.

    With full 8-bit weights, CPUs without VNNI saturate the 16-bit pair sums (vpmaddubsw) and the
    fused result departs from the exact one: shown where this CPU lacks VNNI.
    """
    x = feeds(1, seed=7)[0]
    q = quantize(fp32_path, tmp_path, "ort-cpu")
    fused, exact = run(q, x), run(q, x, fuse=False)
    assert relerr(fused, exact) < 0.01
    full = tmp_path / "full.onnx"
    from dataclasses import replace

    quantize_int8(fp32_path, full, replace(SCHEMES["ort-cpu"], reduce_range=False), feeds(8), tmp_path / "f.json", [],
                  external=False)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if re.search(r"\b(avx512_vnni|avx_vnni|amx_int8)\b", flags):
        pytest.skip("this CPU has VNNI: full-range weights do not saturate here (the 7-bit check above ran)")
    if not re.search(r"\bavx2\b", flags):
        pytest.skip("not an AVX2 x86 CPU: the u8s8 saturation is specific to AVX2 without VNNI")
    assert relerr(run(full, x), run(full, x, fuse=False)) > 5 * relerr(fused, exact)


def test_tensorrt_scheme_is_symmetric(fp32_path, tmp_path):
    q = onnx.load(str(quantize(fp32_path, tmp_path, "tensorrt")))
    from onnx import numpy_helper

    inits = {t.name: t for t in q.graph.initializer}
    for n in q.graph.node:
        if n.op_type == "QuantizeLinear":
            zp = numpy_helper.to_array(inits[n.input[2]])
            assert zp.dtype == np.int8 and not zp.any()


def test_weights_only_int8(fp32_path):
    model = net()
    counts = weights_only_int8(model, {"conv_in"})
    assert counts == {"Conv": 1, "MatMul": 1}
    hist = ops(model)
    assert hist["DequantizeLinear"] == 2 and "QuantizeLinear" not in hist
    inits = {t.name: t.data_type for t in model.graph.initializer}
    assert inits["w2_w8"] == T.INT8 and inits["m_w8"] == T.INT8 and inits["w1"] == T.FLOAT
    onnx.checker.check_model(model)
    x = feeds(1, seed=3)[0]
    assert relerr(run(model, x), run(fp32_path, x)) < 0.02


def test_switchable_graph_answers_one_configuration_per_batch_row(fp32_path, tmp_path):
    qpath = quantize(fp32_path, tmp_path, "ort-cpu")
    nodes = quantizable_nodes(net())
    sw = onnx.load(str(qpath))
    assert switchable(sw, net(), nodes) == 3
    x = feeds(1, seed=9)[0]
    single = quantize(fp32_path, tmp_path, "ort-cpu", exclude=["conv_in", "conv_mid"], name="proj_only")
    first = quantize(fp32_path, tmp_path, "ort-cpu", exclude=["conv_mid", "proj"], name="conv_in_only")
    configs = np.array([[0, 0, 0], [1, 1, 1], [0, 0, 1], [1, 0, 0]], np.float32)
    rows = run(sw, {"x": np.concatenate([x["x"]] * 4), FLAGS: configs}, fuse=False)
    assert relerr(rows[0:1], run(fp32_path, x, fuse=False)) < 1e-6  # all off: the float graph
    assert relerr(rows[1:2], run(qpath, x, fuse=False)) < 1e-6  # all on: the QDQ graph
    assert relerr(rows[2:3], run(single, x, fuse=False)) < 1e-6  # one node on: that node quantized alone
    assert relerr(rows[3:4], run(first, x, fuse=False)) < 1e-6
    assert relerr(rows[2:3], rows[0:1]) > 1e-4  # and it does differ from float


def test_switchable_graph_gates_a_quantized_activation_that_is_a_graph_output(tmp_path):
    """onnxruntime lets the DQ write such an output's name: every row must still read float unless an owner is on."""
    fp32 = tmp_path / "fp32p.onnx"
    onnx.save(net(output_f=True), str(fp32))
    qpath = quantize(fp32, tmp_path, "ort-cpu", name="qp")
    sw = onnx.load(str(qpath))
    switchable(sw, net(output_f=True), quantizable_nodes(net(output_f=True)))
    x = feeds(1, seed=9)[0]
    configs = np.array([[0, 0, 0], [1, 1, 1]], np.float32)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the exact fake-quantized values

    def outputs(src, feed):
        sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
        return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))

    rows = outputs(sw.SerializeToString(), {"x": np.concatenate([x["x"]] * 2), FLAGS: configs})
    want_float, want_q = outputs(str(fp32), x), outputs(str(qpath), x)
    assert relerr(rows["f"][0:1], want_float["f"]) < 1e-6  # all off: the float activation
    assert relerr(rows["f"][1:2], want_q["f"]) < 1e-6  # all on: what the QDQ graph outputs
    assert relerr(want_q["f"], want_float["f"]) > 1e-4  # the output is quantized in the QDQ graph
    assert relerr(rows["y"][0:1], want_float["y"]) < 1e-6
