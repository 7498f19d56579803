"""Helpers for the pass tests: sample inputs, ORT runs, op counting."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

ATOL = 1e-5  # fp32 on ORT CPU; fused kernels reorder sums, nothing more


def unet_feeds(seed: int = 0, hw=(8, 6), context_len: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "sample": rng.standard_normal((2, 4, *hw)).astype(np.float32),
        "timestep": np.array([3.0, 700.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((2, context_len, 24)).astype(np.float32),
    }


def clip_feeds(seed: int = 0, length: int = 7) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seed).integers(0, 64, (2, length)).astype(np.int64)
    ids[:, -1] = 9  # an EOS token, as the pooling expects
    return {"input_ids": ids}


def run(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    if isinstance(model, ir.Model):
        model = ir.serde.serialize_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def assert_same_outputs(before, after, feeds: dict[str, np.ndarray], atol: float = ATOL) -> float:
    """ORT CPU outputs of `after` equal `before`'s within atol (outputs matched by name); returns max |diff|."""
    names = [o.name for o in (before.graph.output if hasattr(before, "graph") else before.outputs)]
    ref, got = run(before, feeds), run(after, feeds)
    worst = 0.0
    for name, r, g in zip(names, ref, got):
        assert r.shape == g.shape, (name, r.shape, g.shape)
        err = float(np.abs(r - g).max())
        assert err <= atol, f"{name}: max |diff| {err:.3g} > {atol}"
        worst = max(worst, err)
    return worst


def ops(model) -> dict[str, int]:
    """Op histogram ('com.microsoft::Op' for contrib ops) of a ModelProto or ir.Model."""
    from sdc.passes.onnx._fusion import op_histogram

    if not isinstance(model, ir.Model):
        model = ir.serde.deserialize_model(model)
    return op_histogram(model)


def to_ir(model) -> "ir.Model":
    """A fresh ir.Model over a copy of the proto, so passes do not touch the session-wide exports."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return ir.serde.deserialize_model(copy)


def cleaned(model) -> "ir.Model":
    from sdc.passes.onnx.cleanup import cleanup

    m = to_ir(model)
    cleanup(m)
    return m


def skip_unless_cuda(what: str) -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"{what} runs only on ORT's CUDA provider (structure and CPU reference checked above)")


def make_model(nodes, inputs, outputs, initializers=(), opset: int = 17) -> onnx.ModelProto:
    """A checked opset-`opset` model from onnx.helper parts; inputs/outputs as (name, elem_type, shape)."""
    from onnx import helper

    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
        list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    return model


def const(name: str, value, dtype=np.float32) -> "onnx.TensorProto":
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)
