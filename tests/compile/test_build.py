"""The compile spine on the committed fixtures: validated bundles whose ONNX graphs match diffusers."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tests.conftest import FAMILIES, FIXTURES, REFS, load_cases

CONTRACT = {
    "text_encoder": (["input_ids"], ["last_hidden_state", "pooler_output", "hidden_states_penultimate"]),
    "unet": (["sample", "timestep", "encoder_hidden_states"], ["out_sample"]),
    "vae_encoder": (["sample"], ["latent_parameters"]),
    "vae_decoder": (["latent_sample"], ["sample"]),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_artifact_validated(bundles, family):
    manifest = json.loads((bundles[family] / "manifest.json").read_text())
    assert set(manifest["submodels"]) == set(CONTRACT)
    for name, sub in manifest["submodels"].items():
        assert ([t["name"] for t in sub["inputs"]], [t["name"] for t in sub["outputs"]]) == CONTRACT[name]
        arts = {a["target"]: a for a in sub["artifacts"]}
        assert "portable" in arts
        for target, art in arts.items():
            v = art["validation"]
            print(f"{family} {name} {target}: max abs {v['max_abs']:.2e} over {v['shapes']}")
            assert v["passed"] and v["max_abs"] <= 1e-4
            assert len(v["shapes"]) >= 2
    # The CPU-tuned UNet exists and really is fused: one MultiHeadAttention per attention block.
    unet = {a["target"]: a for a in manifest["submodels"]["unet"]["artifacts"]}
    fused = sum(c.get("MultiHeadAttention", 0) for c in unet["ort-cpu"]["passes"].values())
    assert fused == 2 * _transformer_blocks(FIXTURES / family / "unet" / "config.json")


def _transformer_blocks(config_path) -> int:
    """Transformer blocks (self + cross attention each) a UNet config implies, counted independently of sdc."""
    cfg = json.loads(config_path.read_text())
    n = len(cfg["down_block_types"])
    depth = cfg.get("transformer_layers_per_block", 1)
    depth = depth if isinstance(depth, list) else [depth] * n
    layers = cfg["layers_per_block"]
    layers = layers if isinstance(layers, list) else [layers] * n
    total = sum(layers[i] * depth[i] for i, t in enumerate(cfg["down_block_types"]) if t.startswith("CrossAttn"))
    total += sum((layers[n - 1 - i] + 1) * depth[n - 1 - i] for i, t in enumerate(cfg["up_block_types"])
                 if t.startswith("CrossAttn"))
    return total + depth[-1]  # mid block


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_axes_are_named(bundles, family):
    model = onnx.load(str(bundles[family] / "unet" / "model.onnx"), load_external_data=False)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input}
    assert dims["sample"] == ["batch", 4, "latent_height", "latent_width"]
    assert dims["timestep"] == ["batch"]
    assert dims["encoder_hidden_states"] == ["batch", "sequence", 32]
    assert model.opset_import[0].version >= 17


@pytest.fixture(scope="module")
def loaded(bundles):
    """loaded(family, target): the bundle's runtime pipeline for that target, loaded once for every submodel's
    comparison (a load opens every submodel's session)."""
    import functools

    import sdc.runtime

    return functools.cache(lambda family, target: sdc.runtime.load(bundles[family], provider="cpu", verify="sizes",
                                                                  target=target))


@pytest.mark.parametrize("target", ["portable", "ort-cpu"])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", list(CONTRACT))
def test_onnx_matches_diffusers(loaded, family, name, target):
    """The shipped graphs (portable and fused) against diffusers itself, not only against Paddle."""
    pipe = loaded(family, target)
    inputs, outputs = CONTRACT[name]
    worst = 0.0
    for case, data in load_cases(REFS / family / f"{name}.npz").items():
        got = pipe.models[name](**{k: data[k] for k in inputs})
        for out in outputs:
            err = float(np.abs(got[out] - data[out]).max())
            worst = max(worst, err)
            assert err <= 1e-4, (case, out, err)
    print(f"{family} {name}: ONNX vs diffusers max abs {worst:.2e}")


def test_build_is_deterministic(bundles, tmp_path):
    """Same inputs, same bytes: every file of the rebuilt submodels repeats, and their manifest entries
    (the UNet and the text encoder: the graphs with fusions, shared weights and the tokenizer)."""
    from sdc.compile.build import build
    from sdc.compile.context import BuildOptions

    subs = ("text_encoder", "unet")
    again = build(FIXTURES / "sd1-tiny", tmp_path / "again.bundle", BuildOptions(submodels=subs)).manifest
    first = json.loads((bundles["sd1-tiny"] / "manifest.json").read_text())
    same_parts = lambda m: {k: v for k, v in m["files"].items() if k != "SUMMARY.txt"}  # noqa: E731 (the summary lists the submodels built)
    rebuilt = same_parts(again)
    assert rebuilt and rebuilt == {k: v for k, v in same_parts(first).items()
                                   if k.split("/")[0] in subs + ("tokenizer", "scheduler")}
    for name in subs:
        assert again["submodels"][name] == first["submodels"][name]
    for key in ("format", "format_version", "pipeline", "defaults"):
        assert again[key] == first[key]  # (`source` hashes the weights of the submodels built: not comparable)


def test_unet_onnx_at_sizes_validation_did_not_see(bundles):
    """Odd and off-multiple latent sizes (diffusers resizes skips to fit): ONNX still equals the Paddle module."""
    import paddle

    import sdc.graphs
    import sdc.runtime

    layer = sdc.graphs.load(FIXTURES / "sd1-tiny", "unet")
    pipe = sdc.runtime.load(bundles["sd1-tiny"], provider="cpu", verify="none")
    rng = np.random.default_rng(0)
    for b, h, w in ((1, 5, 7), (3, 9, 6)):
        inputs = dict(sample=rng.standard_normal((b, 4, h, w)).astype(np.float32),
                      timestep=rng.uniform(0, 1000, (b,)).astype(np.float32),
                      encoder_hidden_states=rng.standard_normal((b, 11, 32)).astype(np.float32))
        with paddle.no_grad():
            want = layer(*[paddle.to_tensor(v) for v in inputs.values()]).numpy()
        got = pipe.models["unet"](**inputs)["out_sample"]
        assert got.shape == want.shape == (b, 4, h, w)
        assert float(np.abs(got - want).max()) <= 1e-4


def test_streamed_weights_give_the_same_graphs(bundles, tmp_path):
    """Past the external-data threshold the passes run on references into a scratch export and the weights
    are copied into the bundle in chunks (sdc.compile.artifacts.stream_save): same numbers, one weight file
    per submodel that its tuned graph shares, page-aligned tensors."""
    import onnxruntime as ort

    from sdc.compile.build import build
    from sdc.compile.context import BuildOptions

    subs = ("vae_decoder",)  # the cheapest submodel with a fused (ort-cpu) graph
    streamed = build(FIXTURES / "sd1-tiny", tmp_path / "s.bundle",
                     BuildOptions(submodels=subs, external_data_threshold=0)).manifest
    first = json.loads((bundles["sd1-tiny"] / "manifest.json").read_text())
    rng = np.random.default_rng(0)
    for name in subs:
        arts = {a["target"]: a for a in streamed["submodels"][name]["artifacts"]}
        assert set(arts) == {a["target"] for a in first["submodels"][name]["artifacts"]}
        assert arts["ort-cpu"]["data_paths"][0] == arts["portable"]["data_paths"][0] == f"{name}/model.onnx.data"
        assert arts["ort-cpu"]["passes"] == next(a for a in first["submodels"][name]["artifacts"]
                                                  if a["target"] == "ort-cpu")["passes"]
        graph = onnx.load(str(tmp_path / "s.bundle" / arts["ort-cpu"]["path"]), load_external_data=False)
        offsets = [int(e.value) for t in graph.graph.initializer for e in t.external_data if e.key == "offset"]
        assert offsets and all(o % 4096 == 0 for o in offsets)
        spec = first["submodels"][name]
        dims = {"batch": 2, "sequence": 77, "latent_height": 8, "latent_width": 8}
        feed = {}
        for t in spec["inputs"]:
            shape = [dims[d] if isinstance(d, str) else d for d in t["shape"]]
            feed[t["name"]] = (rng.integers(0, 49407, shape) if t["dtype"] == "int64"
                               else rng.standard_normal(shape)).astype(t["dtype"])
        for target, art in arts.items():
            ref_art = next(a for a in first["submodels"][name]["artifacts"] if a["target"] == target)
            got = ort.InferenceSession(str(tmp_path / "s.bundle" / art["path"])).run(None, feed)
            want = ort.InferenceSession(str(bundles["sd1-tiny"] / ref_art["path"])).run(None, feed)
            for g, w in zip(got, want):
                assert np.array_equal(g, w), (name, target)
