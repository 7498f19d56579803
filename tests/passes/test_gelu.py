"""Passes `gelu` and `geglu`, and the LayerNormalization paddle2onnx already emits (nothing to fuse)."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper

from sdc.passes.onnx.geglu import geglu_ort_cuda
from sdc.passes.onnx.gelu import gelu_ort
from tests.passes.cuda_reference import as_cpu_reference, needs_cuda
from tests.passes.helpers import (assert_same_outputs, cleaned, clip_feeds, const, make_model, ops, run,
                                  skip_unless_cuda)

F = TensorProto.FLOAT


def test_paddle_emits_layer_normalization(exports):
    """paddle2onnx 2.1.0 at opset 17 writes nn.LayerNorm as LayerNormalization: no decomposed form to fuse."""
    for name, count in (("clip", 5), ("unet", 6)):  # CLIP: 2 per layer + final; UNet: 3 per transformer block
        exported = ops(exports[name])
        assert exported["LayerNormalization"] == count
        assert not {"ReduceMean", "Pow", "Sqrt"} & set(exported)


def test_erf_gelu_to_gelu(exports):
    m = cleaned(exports["clip"])
    assert gelu_ort(m).counts == {"Gelu": 2}
    after = ops(m)
    assert after["com.microsoft::Gelu"] == 2 and not {"Erf", "Div"} & set(after)
    assert after["Mul"] == 8 - 2 * 2  # each GELU was two Muls
    assert_same_outputs(exports["clip"], m, clip_feeds())


def paddle_geglu(d_in=320, width=2560):
    """diffusers' GEGLU as paddle2onnx writes it: x·W + b, Split into halves, value * gelu_erf(gate)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["h"]),
        helper.make_node("Split", ["h", "halves"], ["value", "gate"], axis=2),
        helper.make_node("Div", ["gate", "sqrt2"], ["g1"]), helper.make_node("Erf", ["g1"], ["g2"]),
        helper.make_node("Add", ["g2", "one"], ["g3"]), helper.make_node("Mul", ["gate", "g3"], ["g4"]),
        helper.make_node("Mul", ["g4", "half"], ["gelu"]), helper.make_node("Mul", ["value", "gelu"], ["y"]),
    ]
    inits = [const("w", rng.standard_normal((d_in, width)) / np.sqrt(d_in)), const("b", rng.standard_normal(width)),
             const("halves", [width // 2] * 2, np.int64), const("sqrt2", np.float32(1.4142135)),
             const("one", 1.0), const("half", 0.5)]
    return make_model(nodes, [("x", F, ["b", "s", d_in])], [("y", F, ["b", "s", width // 2])], inits)


def test_geglu_to_bias_split_gelu():
    model = paddle_geglu()
    m = ir.serde.deserialize_model(model)
    assert geglu_ort_cuda(m).counts == {"BiasSplitGelu": 1}
    assert ops(m) == {"MatMul": 1, "com.microsoft::BiasSplitGelu": 1}
    proto = ir.serde.serialize_model(m)
    assert needs_cuda(proto)
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 3, 320)).astype(np.float32)}
    assert_same_outputs(model, as_cpu_reference(proto), feeds)
    skip_unless_cuda("com.microsoft BiasSplitGelu")
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CUDAExecutionProvider"])
    np.testing.assert_allclose(session.run(None, feeds)[0], run(model, feeds)[0], atol=1e-4)


def test_geglu_matches_export_but_width_is_checked(exports, caplog):
    """The rule matches paddle's real GEGLU up to its check; the tiny widths (256, 384) are not CUDA's."""
    m = cleaned(exports["unet"])
    with caplog.at_level(logging.INFO, logger="sdc.passes"):
        result = geglu_ort_cuda(m, debug=True)
    assert not result.modified
    assert "width 256 not in (2560, 5120, 10240)" in caplog.text
    assert "width 384 not in (2560, 5120, 10240)" in caplog.text
