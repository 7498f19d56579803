"""Streamed weights (sdc.compile.streamed): a depth-tied export whose blocks get their own weights streamed from the
checkpoint must be the real model: bit-equal to a normal build, generating like diffusers, bf16 checkpoints stored
bf16; and a graph whose tied weights cannot be told apart is refused, never guessed."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest

from sdc.errors import ExportError
from tests.conftest import FIXTURES, run_sdc


def _build(model: Path, out: Path, *args: str) -> dict:
    proc = run_sdc("build", model, "-o", out, *args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def streamed_flux(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("streamed") / "flux.bundle"
    _build(FIXTURES / "flux-tiny", out, "--stream-weights", "on")
    return out


def test_streamed_bundle_generates_like_diffusers(streamed_flux) -> None:
    """Every block's weights end up where they belong: the image matches diffusers' (a misplaced block would not)."""
    import sdc.runtime
    from tests.runtime.test_pipeline_flux import ATOL, load_case, run_reference

    m = json.loads((streamed_flux / "manifest.json").read_text())
    for name, runs in (("transformer", {"single_transformer_blocks": 2}), ("text_encoder_2", {"encoder.block": 3})):
        arts = m["submodels"][name]["artifacts"]
        assert {a["target"] for a in arts} == {"portable", "ort-cpu"}  # the fused graph untied too
        assert all(a["weights"]["blocks"] == runs and a["weights"]["storage"] == ["fp32"] for a in arts)
    assert "weights" not in m["submodels"]["vae_decoder"]["artifacts"][0]  # no repeated blocks: built as usual
    for target in ("portable", "ort-cpu"):
        s, ref = load_case("dev_64x96")
        image, _ = run_reference(sdc.runtime.load(streamed_flux, target=target), s, ref)
        assert float(np.abs(image - ref["image"]).max()) <= ATOL


def _write_bf16(src: Path, dst: Path) -> None:
    """The safetensors file `src` with every float32 tensor rounded to bf16 (numpy only: what a hub bf16 file holds)."""
    from sdc.graphs.weights import read_ref, safetensors_refs

    header, blobs, offset = {}, [], 0
    for key, ref in safetensors_refs(src).items():
        arr = np.ascontiguousarray(read_ref(ref))
        if arr.dtype == np.float32:
            bits = arr.view(np.uint32)
            arr = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
            dtype = "BF16"
        else:
            dtype = {np.dtype(np.int64): "I64"}[arr.dtype]
        raw = arr.tobytes()
        header[key] = {"dtype": dtype, "shape": list(ref.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    dst.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def test_bf16_checkpoint_is_streamed_as_bf16_and_equals_a_normal_build(fixture_copy, tmp_path) -> None:
    model = fixture_copy("flux-schnell-tiny")  # 2 double-stream blocks: one tied run
    weights = model / "transformer" / "diffusion_pytorch_model.safetensors"
    _write_bf16(weights, weights)
    streamed = _build(model, tmp_path / "s.bundle", "--only", "transformer", "--stream-weights", "on")
    _build(model, tmp_path / "n.bundle", "--only", "transformer", "--stream-weights", "off")
    art = streamed["submodels"]["transformer"]["artifacts"][0]
    assert art["weights"]["storage"] == ["bf16"] and art["weights"]["blocks"] == {"transformer_blocks": 2}
    graph = onnx.load(str(tmp_path / "s.bundle" / art["path"]), load_external_data=False)
    inits = {t.name: t for t in graph.graph.initializer}
    assert inits["transformer_blocks.1.attn.to_q.weight"].data_type == onnx.TensorProto.BFLOAT16
    assert any(n.op_type == "Cast" and n.input[0] == "transformer_blocks.1.attn.to_q.weight" for n in graph.graph.node)
    normal = onnx.load(str(tmp_path / "n.bundle" / art["path"]), load_external_data=False)
    stored = {g: sum(int(e.value) for t in m.graph.initializer if t.name.startswith("transformer_blocks.")
                     and len(t.dims) == 2 for e in t.external_data if e.key == "length")
              for g, m in (("s", graph), ("n", normal))}
    assert stored["s"] * 2 == stored["n"] > 0  # the blocks' weight matrices in half the bytes: bf16, not widened
    import onnxruntime as ort

    from sdc.graphs.family import pipeline_config
    from sdc.graphs.specs import spec_for

    spec = spec_for("transformer", pipeline_config(model, "transformer"))
    inputs = spec.dummy_inputs({"batch": 2, "image_tokens": 12, "text_tokens": 9, "tokens": 21}, seed=3)
    outs = [ort.InferenceSession(str(b / "transformer" / "model.onnx"), providers=["CPUExecutionProvider"])
            .run(None, inputs)[0] for b in (tmp_path / "s.bundle", tmp_path / "n.bundle")]
    assert np.array_equal(outs[0], outs[1])  # bf16 -> float32 is exact: the same numbers as the widened build


def _tied_graph(second_tag: str | None):
    """x -> MatMul(blocks.0.w) -> MatMul(blocks.0.w) -> y, the two reads tagged as blocks 0 and 1 (or not)."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(2, dtype=np.float32), "blocks.0.w")
    names = ["mm0@blocks.0", "mm1" + (f"@{second_tag}" if second_tag else "")]
    nodes = [helper.make_node("MatMul", ["x", "blocks.0.w"], ["h"], name=names[0]),
             helper.make_node("MatMul", ["h", "blocks.0.w"], ["y"], name=names[1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [w])
    return helper.make_model(graph)


def test_untie_names_each_block_and_refuses_what_it_cannot_place() -> None:
    from sdc.compile.streamed import untie
    from sdc.graphs.tied import Tie

    tie = Tie("blocks", 0, 2)
    model = _tied_graph("blocks.1")
    assert untie(model, (tie,)) == 1
    assert [n.input[1] for n in model.graph.node] == ["blocks.0.w", "blocks.1.w"]
    assert {t.name for t in model.graph.initializer} == {"blocks.0.w", "blocks.1.w"}
    with pytest.raises(ExportError, match="belongs to no block"):
        untie(_tied_graph(None), (tie,))  # an untagged reader with nothing tagged downstream
    with pytest.raises(ExportError, match="read by blocks \\[0\\], expected 0..1"):
        untie(_tied_graph("blocks.0"), (tie,))  # both reads in block 0: merged computations
