"""fp16 island choice (sdc.compile.islands): practice, measured ranges, the timestep phase, error amplifiers."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper

from sdc.compile import islands as isl
from sdc.passes.onnx.float16 import convert, name_nodes
from tests.passes.helpers import const, make_model


def vae_like(gain: float) -> onnx.ModelProto:
    """A decoder tail whose middle activation reaches ~gain·|x|: the SDXL-VAE overflow in miniature."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="up_conv"),
        helper.make_node("Mul", ["c", "g"], ["big"], name="boost"),
        helper.make_node("InstanceNormalization", ["big", "s", "b"], ["n"], name="norm"),
        helper.make_node("Conv", ["n", "w2"], ["y"], name="out_conv"),
    ]
    rng = np.random.default_rng(0)
    inits = [const("w", rng.standard_normal((4, 4, 1, 1))), const("g", gain), const("s", np.ones(4)),
             const("b", np.zeros(4)), const("w2", rng.standard_normal((4, 4, 1, 1)))]
    m = make_model(nodes, [("x", T.FLOAT, [1, 4, 8, 8])], [("y", T.FLOAT, [1, 4, 8, 8])], inits)
    name_nodes(m)
    return m


CASES = [{"x": np.random.default_rng(i).standard_normal((1, 4, 8, 8)).astype(np.float32)} for i in range(3)]


def test_measured_ranges_equal_numpy(tmp_path):
    m = vae_like(10.0)
    p = tmp_path / "m.onnx"
    onnx.save(m, str(p))
    ranges = isl.measure_ranges(p, CASES, tmp_path)
    w = onnx.numpy_helper.to_array(m.graph.initializer[0])
    expect = max(float(np.abs(np.einsum("oi,bihw->bohw", w[:, :, 0, 0], c["x"])).max()) for c in CASES)
    assert abs(ranges["c"] - expect) < 1e-4 * expect and abs(ranges["big"] - 10 * expect) < 1e-3 * expect
    assert not list(tmp_path.glob(".*observed*"))  # the augmented graph written beside the artifact is removed


def test_overflowing_values_become_islands_by_measurement_not_by_name(tmp_path):
    for gain, expected in ((10.0, set()), (1e4, {"boost", "norm"})):
        m = vae_like(gain)
        p = tmp_path / f"m{gain}.onnx"
        onnx.save(m, str(p))
        found = isl.range_islands(m, isl.measure_ranges(p, CASES, tmp_path))
        assert {i.node for i in found} == expected, gain
        for i in found:
            assert i.reason.startswith("range: max |x|") and i.measured > isl.SAFE_FRACTION * isl.FP16_MAX


def test_practice_islands_cover_norms_softmax_and_the_timestep_phase():
    nodes = [
        helper.make_node("Mul", ["t", "f"], ["a"], name="t_times_f"),
        helper.make_node("Sin", ["a"], ["s"], name="sin"),
        helper.make_node("Cos", ["a"], ["c"], name="cos"),
        helper.make_node("Concat", ["s", "c"], ["e"], axis=-1, name="cat"),
        helper.make_node("MatMul", ["e", "w"], ["h"], name="linear"),
        helper.make_node("Softmax", ["h"], ["y"], name="softmax"),
    ]
    m = make_model(nodes, [("t", T.FLOAT, [1, 1])], [("y", T.FLOAT, [1, 2])],
                   [const("f", np.ones((1, 2))), const("w", np.ones((4, 2)))])
    got = {i.node: i.reason.split(":")[0] for i in isl.practice_islands(m)}
    # The argument (t * f) and both sinusoids; Concat is downstream of them, MatMul is fp16 work.
    assert got == {"t_times_f": "practice", "sin": "practice", "cos": "practice", "softmax": "practice"}


def test_amplifiers_rank_the_node_that_breaks_fp16_first(tmp_path):
    """A subtraction of two nearly equal large numbers loses everything in fp16: it must rank first."""
    nodes = [
        helper.make_node("Add", ["x", "k"], ["a"], name="shift"),
        helper.make_node("Sub", ["a", "k"], ["d"], name="cancel"),
        helper.make_node("Mul", ["d", "two"], ["y"], name="scale"),
    ]
    m = make_model(nodes, [("x", T.FLOAT, [8])], [("y", T.FLOAT, [8])], [const("k", 3000.0), const("two", 2.0)])
    name_nodes(m)
    p = tmp_path / "m.onnx"
    onnx.save(m, str(p))
    low, _ = convert(onnx.load(str(p)), "fp16", set())
    case = {"x": np.linspace(0.01, 0.2, 8).astype(np.float32)}
    ranked = isl.amplifiers(p, low, case, tmp_path, skip=set())
    # x + 3000 is only rounded (relative error ~3e-4, no amplification); subtracting 3000 again turns
    # that rounding into an error as large as x itself; the scaling just passes it on.
    assert ranked[0][0] == "cancel" and ranked[0][2] > 100
    assert all(amp < 2 for name, _, amp, _ in ranked[1:])
