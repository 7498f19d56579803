"""The Paddle T5 encoder (Flux's text_encoder_2) against transformers' outputs stored in the fixtures."""

from __future__ import annotations

import json

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")

from sdc.graphs import load_folder  # noqa: E402
from tests.conftest import FIXTURES, load_cases  # noqa: E402

VARIANTS = sorted(p.name for p in (FIXTURES / "variants").glob("t5-*"))


@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_transformers(variant: str) -> None:
    """Gated GELU and ReLU feed-forwards, two bucket layouts, sequences shorter and longer than max distance."""
    folder = FIXTURES / "variants" / variant
    layer = load_folder(folder, "text_encoder_2")
    cases = load_cases(folder / "refs.npz")
    assert any(c["input_ids"].shape[1] > json.loads((folder / "config.json").read_text())
               ["relative_attention_max_distance"] for c in cases.values())
    for case, ref in sorted(cases.items()):
        with paddle.no_grad():
            got = layer(paddle.to_tensor(ref["input_ids"])).numpy()
        err = float(np.abs(got - ref["last_hidden_state"]).max())
        print(f"{variant} {case}: max abs {err:.2e}")
        assert got.shape == ref["last_hidden_state"].shape
        assert err <= 1e-4, (variant, case, err)


def test_buckets_match_transformers_formula() -> None:
    """Every relative position from -600 to 600, against a float32 numpy transcription of transformers'."""
    from sdc.graphs.t5 import relative_position_bucket

    rel = np.arange(-600, 601, dtype=np.int64)
    for buckets, max_distance in ((32, 128), (16, 20), (64, 256)):
        got = relative_position_bucket(paddle.to_tensor(rel), buckets, max_distance).numpy()
        half = buckets // 2
        exact = half // 2
        dist = np.abs(rel)
        with np.errstate(divide="ignore"):
            large = exact + (np.log(dist.astype(np.float32) / np.float32(exact)) / np.float32(np.log(max_distance / exact))
                             * np.float32(half - exact)).astype(np.int64)
        want = (rel > 0) * half + np.where(dist < exact, dist, np.minimum(large, half - 1))
        assert np.array_equal(got, want), (buckets, max_distance)


@pytest.mark.parametrize("variant", VARIANTS)
def test_exports_with_a_dynamic_sequence(tmp_path, variant: str) -> None:
    """Trace, paddle2onnx (the build's worker function) and ONNX Runtime at three lengths: the in-graph buckets
    export, and one graph serves 9, 77 and 300 tokens."""
    import onnx
    import onnxruntime as ort

    from sdc.compile.export import attach_weights
    from sdc.compile.p2o_worker import export
    from sdc.graphs.specs import spec_for
    from sdc.passes.program import run_program_passes

    folder = FIXTURES / "variants" / variant
    layer = load_folder(folder, "text_encoder_2")
    spec = spec_for("text_encoder_2", layer.cfg)
    inputs = [paddle.static.InputSpec([None, None], "int64", "input_ids")]
    paddle.jit.save(paddle.jit.to_static(layer, input_spec=inputs, full_graph=True), str(tmp_path / "model"))
    run_program_passes(tmp_path / "model.json")
    assert export(str(tmp_path / "model.json"), str(tmp_path / "graph.onnx"), 17) == "ok"
    model = onnx.load(str(tmp_path / "graph.onnx"))
    attach_weights(model, layer, "text_encoder_2")  # consumes the traced layer's parameters
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    errs = {}
    for case, ref in sorted(load_cases(folder / "refs.npz").items()):
        got = session.run(None, {session.get_inputs()[0].name: ref["input_ids"]})[0]
        err = float(np.abs(got - ref["last_hidden_state"]).max())
        print(f"onnx {case}: max abs {err:.2e}")
        errs[case] = err
    assert max(errs.values()) <= 1e-4, errs
    assert spec.output_names == ["last_hidden_state"]
    dummy = spec.dummy_inputs({"batch": 2, "sequence": 16})["input_ids"]
    assert dummy.min() >= 0 and dummy.max() < 1000 and (dummy == 1).any()  # words, </s>, padding
