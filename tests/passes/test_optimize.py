"""`sdc.passes.optimize`: every target's pipeline on the exports, the report, debug logging, external data."""

from __future__ import annotations

import json
import logging

import onnx
import pytest

from sdc.passes import TARGETS, optimize
from sdc.passes.onnx.optimize import UnknownTargetError
from sdc.passes.onnx.pipelines import PIPELINES
from tests.passes.cuda_reference import as_cpu_reference, needs_cuda
from tests.passes.helpers import assert_same_outputs, clip_feeds, ops, unet_feeds

EXPECTED_FUSIONS = {  # target -> pass -> counts, on the UNet export (7 GroupNorm, 2 self + 2 cross attention, 2 GELU)
    "portable": {},
    "ort-cpu": {"attention": {"MultiHeadAttention": 4}, "rms_norm": {}, "gelu": {"Gelu": 2}},
    "ort-cuda": {"group_norm": {"GroupNorm+SiLU": 5, "GroupNorm": 2}, "geglu": {}, "rms_norm": {},
                 "attention": {"MultiHeadAttention(packed QKV)": 2, "MultiHeadAttention(packed KV)": 2},
                 "gelu": {"Gelu": 2}},
    "tensorrt": {"group_norm": {"GroupNormalization": 7}},
}


def test_targets_are_the_pipelines():
    assert set(TARGETS) == set(PIPELINES)


@pytest.mark.parametrize("target", TARGETS)
def test_unet_every_target(exports, target):
    before = onnx.ModelProto()
    before.CopyFrom(exports["unet"])
    out, report = optimize(exports["unet"], target)
    assert exports["unet"] == before  # the input model is not modified
    assert {k: v for k, v in report.passes.items() if k != "cleanup"} == EXPECTED_FUSIONS[target]
    assert report.passes["cleanup"]["Identity"] == 97
    assert [i.name for i in out.graph.input] == ["sample", "timestep", "encoder_hidden_states"]
    assert [o.name for o in out.graph.output] == ["out_sample"]
    onnx.checker.check_model(out)
    runnable = as_cpu_reference(out) if needs_cuda(out) else out
    assert_same_outputs(exports["unet"], runnable, unet_feeds())


def test_report_json(exports):
    _, report = optimize(exports["clip"], "ort-cpu")
    data = json.loads(report.to_json())
    assert data["target"] == "ort-cpu"
    assert data["passes"]["attention"] == {"MultiHeadAttention": 2} and data["passes"]["gelu"] == {"Gelu": 2}
    assert data["total_changes"] == report.total_changes == sum(
        abs(n) for counts in report.passes.values() for n in counts.values())
    assert list(report.passes) == ["cleanup", "attention", "rms_norm", "gelu"]


def test_unknown_target_names_the_choices(exports):
    with pytest.raises(UnknownTargetError, match="ort-cpu"):
        optimize(exports["clip"], "ort-gpu")


def test_debug_logs_why_nothing_matched(exports, caplog):
    with caplog.at_level(logging.INFO, logger="sdc.passes"):
        _, report = optimize(exports["clip"], "ort-cuda", debug=True)
    assert report.passes["group_norm"] == {}
    messages = [r.getMessage() for r in caplog.records if r.name == "sdc.passes"]
    assert any(m.startswith("group_norm/GroupNorm") for m in messages)
    assert any(m.startswith("optimize ort-cuda:") for m in messages)
    # without debug, only the summary line
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sdc.passes"):
        optimize(exports["clip"], "ort-cuda")
    assert [r.getMessage().split(":")[0] for r in caplog.records if r.name == "sdc.passes"] == ["optimize ort-cuda"]


def test_model_loaded_from_external_data(exports, tmp_path):
    """Big models come with external data; optimize works on the loaded ModelProto and keeps every weight."""
    path = tmp_path / "model.onnx"
    copy = onnx.ModelProto()
    copy.CopyFrom(exports["clip"])  # save_model(save_as_external_data=True) rewrites the proto it is given
    onnx.save_model(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=64)
    loaded = onnx.load(str(path))
    out, _ = optimize(loaded, "ort-cpu")
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in out.graph.initializer)
    names = {t.name for t in out.graph.initializer}
    assert "encoder.layers.0.self_attn.q_proj.weight" in names and "embeddings.token_embedding.weight" in names
    assert_same_outputs(exports["clip"], out, clip_feeds())


def test_clip_every_target(exports):
    for target in TARGETS:
        out, _ = optimize(exports["clip"], target)
        assert [o.name for o in out.graph.output] == ["last_hidden_state", "pooler_output", "hidden_states_penultimate"]
        assert not needs_cuda(out)  # CLIP has no GroupNorm/GEGLU and its attention is masked (unpacked)
        assert_same_outputs(exports["clip"], out, clip_feeds(length=12))
        assert "Identity" not in ops(out)


@pytest.mark.parametrize("target", TARGETS)
def test_no_model_kept_alive(exports, target):
    """After optimize() returns nothing holds its IR model (so dropping the input frees a UNet's weights)."""
    import gc

    import onnx_ir as ir

    model = onnx.ModelProto()
    model.CopyFrom(exports["unet"])
    model.graph.name = f"kept-alive-probe-{target}"
    out, _ = optimize(model, target, debug=True)
    gc.collect()
    alive = [o for o in gc.get_objects() if isinstance(o, ir.Graph) and o.name == model.graph.name]
    assert not alive, "a rewrite rule still references the optimized graph (see _fusion.forget_matches)"
