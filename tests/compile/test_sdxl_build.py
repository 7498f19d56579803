"""SDXL base and refiner through `sdc build` and the bundle runtime: contract, passes, parity with diffusers, bad input.

The generations are diffusers' (tests/fixtures/make_sdxl_pipeline_refs.py), replayed through ONNX
Runtime sessions of the built bundles; tests/runtime/test_pipeline_xl.py replays all of them through
the Paddle modules.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import sdc.runtime
from tests.compile.test_bad_input import assert_nothing_written, assert_one_line_error
from tests.conftest import run_sdc
from tests.runtime.test_pipeline_xl import load_case, run_reference

ATOL = 1e-3


def test_manifest_has_the_sdxl_contract(sdxl_bundles) -> None:
    base = json.loads((sdxl_bundles["sdxl-tiny"] / "manifest.json").read_text())
    refiner = json.loads((sdxl_bundles["sdxl-refiner-tiny"] / "manifest.json").read_text())
    assert base["source"]["family"] == refiner["source"]["family"] == "sdxl"
    assert set(base["submodels"]) == {"text_encoder", "text_encoder_2", "unet", "vae_encoder", "vae_decoder"}
    assert set(refiner["submodels"]) == {"text_encoder_2", "unet", "vae_encoder", "vae_decoder"}
    for manifest, n_ids in ((base, 6), (refiner, 5)):
        inputs = {t["name"]: t["shape"] for t in manifest["submodels"]["unet"]["inputs"]}
        assert inputs["text_embeds"] == ["batch", 24] and inputs["time_ids"] == ["batch", n_ids]
        assert inputs["encoder_hidden_states"][:2] == ["batch", "sequence"]
        te2 = [t["name"] for t in manifest["submodels"]["text_encoder_2"]["outputs"]]
        assert "text_embeds" in te2 and "hidden_states_penultimate" in te2
    assert base["pipeline"]["force_zeros_for_empty_prompt"] is True
    assert refiner["pipeline"]["requires_aesthetics_score"] is True
    assert base["defaults"]["guidance_scale"] == 5.0
    # the transformer stacks' attention and GELU fusions fire, and are counted
    tuned = next(a for a in base["submodels"]["unet"]["artifacts"] if a["target"] == "ort-cpu")
    # transformer blocks of make_sdxl_fixtures.BASE_UNET: down 2x1 + 2x2... per level (depths 1, 2, 3; the first
    # level has none), mid 3, up 3 layers x depths 3, 2: 2*2 + 2*3 + 3 + 3*3 + 3*2 = 28, each self + cross attention
    assert tuned["passes"]["attention"]["MultiHeadAttention"] == 2 * 28
    assert tuned["passes"]["gelu"]["Gelu"] == 28


@pytest.mark.parametrize("name", ["euler_64x96", "ddim_rescale_batch_sizes", "img2img_base", "refiner_img2img",
                                  "handover_euler"])
def test_bundles_match_diffusers(sdxl_bundles, name) -> None:
    pipes = {}

    def pipe(model):
        if model not in pipes:
            pipes[model] = sdc.runtime.load(sdxl_bundles[model], provider="cpu")
        return pipes[model]

    s, ref = load_case(name)
    image, _ = run_reference(pipe, s, ref)
    err = float(np.abs(image - ref["image"]).max())
    print(f"{name}: bundle image max abs {err:.2e}")
    assert err <= ATOL


def test_int8_base_generates_close_to_fp32(sdxl_bundles) -> None:
    """Every SDXL submodel quantizes (the second encoder's pooled output feeds a quantized projection)."""
    manifest = json.loads((sdxl_bundles["sdxl-tiny"] / "manifest.json").read_text())
    for name, sub in manifest["submodels"].items():
        int8 = [a for a in sub["artifacts"] if a["precision"] == "int8"]
        assert int8 and all(a["validation"]["passed"] for a in int8), name
    s, ref = load_case("euler_64x96")
    kw = dict(s["kwargs"], latents=ref["latents"], output_type="np")
    fp32 = sdc.runtime.load(sdxl_bundles["sdxl-tiny"], provider="cpu", precision="fp32")(**kw)
    int8 = sdc.runtime.load(sdxl_bundles["sdxl-tiny"], provider="cpu", precision="int8")(**kw)
    diff = float(np.abs(int8 - fp32).mean())
    print(f"int8 vs fp32 image: mean abs {diff:.3g}")
    assert 0 < diff < 0.1


def test_cli_base_and_refiner(sdxl_bundles, tmp_path) -> None:
    out = tmp_path / "xl.png"
    proc = run_sdc("generate", sdxl_bundles["sdxl-tiny"], "a red car", "--refiner", sdxl_bundles["sdxl-refiner-tiny"],
                   "--steps", "5", "--seed", "3", "--width", "96", "--crop", "0,8", "-o", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from PIL import Image

    with Image.open(out) as img:
        assert img.size == (96, 64)
        record = json.loads(img.text["sdc"])
    assert record["handover"] == 0.8 and record["crops_coords_top_left"] == [0, 8]
    assert "refined by" in " ".join(proc.stderr.split())  # the final line says what was done


def test_cli_refiner_as_base_is_refused(sdxl_bundles, tmp_path) -> None:
    out = tmp_path / "x.png"
    proc = run_sdc("generate", sdxl_bundles["sdxl-refiner-tiny"], "a red car", "-o", out)
    assert_one_line_error(proc, "SDXL refiner", "--image")
    assert not out.exists()


def test_cli_sdxl_options_on_an_sd_bundle_are_refused(bundles, tmp_path) -> None:
    proc = run_sdc("generate", bundles["sd1-tiny"], "a red car", "--aesthetic-score", "6", "-o", tmp_path / "x.png")
    assert_one_line_error(proc, "--aesthetic-score", "SDXL")


# ----------------------------------------------------------------------------- bad pipeline folders


def _edit(path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_missing_text_encoder_2(fixture_copy, tmp_path) -> None:
    import shutil

    model = fixture_copy("sdxl-tiny")
    shutil.rmtree(model / "text_encoder_2")
    out = tmp_path / "x.bundle"
    assert_one_line_error(run_sdc("build", model, "-o", out), "text_encoder_2", "folder missing")
    assert_nothing_written(out)
    index = json.loads((model / "model_index.json").read_text())
    del index["text_encoder_2"]
    (model / "model_index.json").write_text(json.dumps(index))
    assert_one_line_error(run_sdc("build", model, "-o", out), "model_index.json", "text_encoder_2", "component missing")
    assert_nothing_written(out)


def test_mismatched_projection_dims(fixture_copy, tmp_path) -> None:
    model = fixture_copy("sdxl-tiny")
    _edit(model / "text_encoder_2" / "config.json", projection_dim=20)
    out = tmp_path / "x.bundle"
    assert_one_line_error(run_sdc("build", model, "-o", out), "unet/config.json", "projection_class_embeddings_input_dim",
                          "projection_dim 20")
    assert_nothing_written(out)


def test_mismatched_cross_attention_width(fixture_copy, tmp_path) -> None:
    model = fixture_copy("sdxl-tiny")
    _edit(model / "unet" / "config.json", cross_attention_dim=40)
    out = tmp_path / "x.bundle"
    assert_one_line_error(run_sdc("build", model, "-o", out), "cross_attention_dim", "text_encoder 32 + text_encoder_2 40")
    assert_nothing_written(out)


def test_refiner_unet_without_aesthetic_score_flag(fixture_copy, tmp_path) -> None:
    """A refiner saved without requires_aesthetics_score would feed 6 time ids to a UNet built for 5."""
    model = fixture_copy("sdxl-refiner-tiny")
    _edit(model / "model_index.json", requires_aesthetics_score=False)
    out = tmp_path / "x.bundle"
    assert_one_line_error(run_sdc("build", model, "-o", out), "projection_class_embeddings_input_dim",
                          "requires_aesthetics_score")
    assert_nothing_written(out)


def test_sdxl_unet_in_an_sd_pipeline(fixture_copy, tmp_path) -> None:
    model = fixture_copy("sdxl-tiny")
    _edit(model / "model_index.json", _class_name="StableDiffusionPipeline")
    out = tmp_path / "x.bundle"
    assert_one_line_error(run_sdc("build", model, "-o", out), "addition_embed_type", "StableDiffusionXLPipeline")
    assert_nothing_written(out)
