"""The ONNX Runtime fusions on Flux's exports: attention on split heads, RMS norm, tanh GELU.

The tiny Flux fixtures' transformer and T5 encoder are built once per run (portable graphs, i.e.
cleaned exports, validated against Paddle by the build); each test runs the ort-cpu pipeline on
them, counts what fused, and compares ORT CPU outputs with the unfused graph on the spec's sample
inputs (random hidden states, real rotary tables) at both sample shapes.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from sdc.passes import optimize
from sdc.passes.onnx.pipelines import ort_attention_cpu, ort_gelu
from sdc.passes.onnx.rms_norm import rms_norm_ort
from tests.conftest import FIXTURES
from tests.passes.helpers import assert_same_outputs, ops

ATOL = 1e-4  # the builds' validation tolerance on the tiny fixtures
# Fixture -> submodel -> the ort-cpu fusions. flux-tiny: 1 double block (4 q/k norms, 2 MLPs) and
# 2 single blocks (2 norms, 1 MLP each); flux-schnell-tiny: 2 double, 1 single. T5: 2 norms per
# layer + the final one, and gated GELU in flux-tiny's T5 only (schnell's uses ReLU).
EXPECTED = {
    "flux-tiny": {
        "transformer": {"attention": {"MultiHeadAttention(BSHD)": 3},
                        "rms_norm": {"SimplifiedLayerNormalization": 8}, "gelu": {"FastGelu": 4}},
        "text_encoder_2": {"attention": {}, "rms_norm": {"SimplifiedLayerNormalization": 7},
                           "gelu": {"FastGelu": 3}},
    },
    "flux-schnell-tiny": {
        "transformer": {"attention": {"MultiHeadAttention(BSHD)": 3},
                        "rms_norm": {"SimplifiedLayerNormalization": 10}, "gelu": {"FastGelu": 5}},
        "text_encoder_2": {"attention": {}, "rms_norm": {"SimplifiedLayerNormalization": 5}, "gelu": {}},
    },
}
CASES = [(fixture, sub) for fixture, subs in EXPECTED.items() for sub in subs]


@pytest.fixture(scope="module")
def flux_graphs(flux_bundles) -> dict:
    """{(fixture, submodel): (portable ModelProto, SubmodelSpec)} from the Flux bundles the run builds once."""
    from sdc.graphs.configs import load_model_index
    from sdc.graphs.family import resolve_configs
    from sdc.graphs.specs import spec_for

    graphs = {}
    for fixture, expected in EXPECTED.items():
        subs = list(expected)
        configs = resolve_configs(FIXTURES / fixture, load_model_index(FIXTURES / fixture), subs)
        for sub in subs:
            graphs[fixture, sub] = (onnx.load(str(flux_bundles[fixture] / sub / "model.onnx")), spec_for(sub, configs[sub]))
    return graphs


def assert_fused_equals_unfused(before, after, spec) -> float:
    worst = 0.0
    for seed, dims in enumerate(spec.sample_dims):
        worst = max(worst, assert_same_outputs(before, after, spec.dummy_inputs(dims, seed=seed + 3), atol=ATOL))
    return worst


@pytest.mark.parametrize("fixture,sub", CASES)
def test_ort_cpu_fuses_and_keeps_numerics(flux_graphs, fixture, sub):
    model, spec = flux_graphs[fixture, sub]
    expected = EXPECTED[fixture][sub]
    out, report = optimize(model, "ort-cpu")
    assert {k: v for k, v in report.passes.items() if k != "cleanup"} == expected
    after = ops(out)
    assert after.get("SimplifiedLayerNormalization", 0) == expected["rms_norm"]["SimplifiedLayerNormalization"]
    assert after.get("com.microsoft::FastGelu", 0) == sum(expected["gelu"].values())
    assert not {"ReduceMean", "Reciprocal", "Sqrt", "Tanh"} & set(after)  # every RMS norm and tanh GELU went
    if sub == "transformer":
        assert after["com.microsoft::MultiHeadAttention"] == 3 and "Softmax" not in after
        assert "Pow" not in after
    assert_fused_equals_unfused(model, out, spec)


def test_ort_cuda_same_fusions_runnable_on_cpu(flux_graphs):
    """ort-cuda has no Flux-specific form (nothing packs across RMSNorm/RoPE): the same ops, which CPU runs too."""
    from tests.passes.cuda_reference import needs_cuda

    model, spec = flux_graphs["flux-schnell-tiny", "transformer"]
    out, report = optimize(model, "ort-cuda")
    fused = {k: v for k, v in report.passes.items() if v and k != "cleanup"}
    assert fused == EXPECTED["flux-schnell-tiny"]["transformer"]
    assert not needs_cuda(out)
    assert_fused_equals_unfused(model, out, spec)


def test_attention_heads_scale_and_inputs(flux_graphs):
    """num_heads and 1/sqrt(head_dim) read from the graph; q, k, v enter as [B, S, H·D] Reshapes of [B, S, H, D]."""
    for fixture, heads, head_dim in (("flux-tiny", 2, 16), ("flux-schnell-tiny", 3, 8)):
        model, _ = flux_graphs[fixture, "transformer"]
        m = ir.serde.deserialize_model(model)
        ort_attention_cpu(m)
        nodes = [n for n in m.graph if n.op_type == "MultiHeadAttention"]
        assert len(nodes) == 3 and all(n.domain == "com.microsoft" for n in nodes)
        for n in nodes:
            assert n.attributes["num_heads"].value == heads
            assert n.attributes["scale"].value == pytest.approx(head_dim ** -0.5)
            assert len(n.inputs) == 3
            for x in n.inputs:
                assert x.producer().op_type == "Reshape"
                assert x.producer().inputs[1].const_value.numpy().tolist() == [0, 0, heads * head_dim]
                assert list(x.producer().inputs[0].shape)[2:] == [heads, head_dim]


def _edit(model: onnx.ModelProto, edit) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    edit(copy.graph)
    return copy


def _first(graph, op_type: str):
    return next(n for n in graph.node if n.op_type == op_type)


def _set_initializer(graph, name: str, value) -> None:
    tensor = next(t for t in graph.initializer if t.name == name)
    tensor.CopyFrom(onnx.numpy_helper.from_array(np.asarray(value, np.float32).reshape(tensor.dims), name))


def _softmax_over_queries(graph):
    attr = next(a for a in _first(graph, "Softmax").attribute if a.name == "axis")
    attr.i = 2


def _mean_over_heads(graph):
    attr = next(a for a in _first(graph, "ReduceMean").attribute if a.name == "axes")
    del attr.ints[:]
    attr.ints.append(-2)


def _gelu_coefficient(graph):
    tanh = _first(graph, "Tanh")
    scale = next(n for n in graph.node if tanh.input[0] in n.output)  # Mul(inner, sqrt(2/pi))
    _set_initializer(graph, scale.input[1], 0.8)


BROKEN = {  # what breaks one instance of each pattern, and the counts left
    "softmax over the query axis": (_softmax_over_queries, "attention", {"MultiHeadAttention(BSHD)": 2}),
    "mean square over heads, not the head dim": (_mean_over_heads, "rms_norm", {"SimplifiedLayerNormalization": 7}),
    "tanh scale 0.8, not sqrt(2/pi)": (_gelu_coefficient, "gelu", {"FastGelu": 3}),
}


@pytest.mark.parametrize("broken", list(BROKEN))
def test_broken_pattern_is_left_alone(flux_graphs, broken):
    model, spec = flux_graphs["flux-tiny", "transformer"]
    edit, pass_name, counts = BROKEN[broken]
    model = _edit(model, edit)
    out, report = optimize(model, "ort-cpu")
    assert report.passes[pass_name] == counts
    assert_fused_equals_unfused(model, out, spec)  # the unfused instance still computes what it did


def test_rejections_say_why(flux_graphs, caplog):
    """With debug, a rule that fuses nothing (here: on the second run) logs its check's reason for each miss."""
    model = _edit(flux_graphs["flux-tiny", "transformer"][0], lambda g: (_gelu_coefficient(g), _mean_over_heads(g)))
    m = ir.serde.deserialize_model(model)
    for fusion in (ort_gelu, rms_norm_ort):
        assert fusion(m).modified and not fusion(m).modified
        with caplog.at_level(logging.INFO, logger="sdc.passes"):
            fusion(m, debug=True)
    assert "gelu/FastGelu: check rejected" in caplog.text and "tanh scale is 0.8, not 0.7978846" in caplog.text
    assert "ReduceMean over axes [-2], not only the last of 4" in caplog.text


def test_not_in_portable_or_tensorrt(flux_graphs):
    """The contrib ops stay out of the targets that must run elsewhere (SimplifiedLayerNormalization is not ONNX)."""
    model, _ = flux_graphs["flux-tiny", "transformer"]
    for target in ("portable", "tensorrt"):
        out, _ = optimize(model, target)
        after = ops(out)
        assert "SimplifiedLayerNormalization" not in after and not any(k.startswith("com.microsoft::") for k in after)
