"""The tiny Flux pipelines (dev-like and schnell-like) through `sdc build` and the bundle runtime: T5 and the
transformer export, validate and verify; generations through ONNX Runtime equal diffusers'; `sdc generate`
takes the Flux options; bad folders and arguments fail with one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.compile.test_bad_input import assert_nothing_written, assert_one_line_error
from tests.conftest import run_sdc
from tests.runtime.test_pipeline_flux import ATOL, load_case, run_reference


@pytest.fixture(scope="module")
def flux_bundle(flux_bundles):
    return flux_bundles["flux-tiny"]


@pytest.fixture(scope="module")
def schnell_bundle(flux_bundles):
    return flux_bundles["flux-schnell-tiny"]


def test_builds_validated_and_verifies(flux_bundle) -> None:
    m = json.loads((flux_bundle / "manifest.json").read_text())
    assert m["source"]["family"] == "flux"
    assert set(m["submodels"]) == {"text_encoder", "text_encoder_2", "transformer", "vae_encoder", "vae_decoder"}
    inputs = {t["name"]: t["shape"] for t in m["submodels"]["transformer"]["inputs"]}
    assert inputs["hidden_states"] == ["batch", "image_tokens", 64]
    assert inputs["rope_cos"] == ["tokens", 16] and inputs["guidance"] == ["batch"]
    assert m["submodels"]["text_encoder_2"]["outputs"][0]["shape"] == ["batch", "sequence", 32]
    assert all(a["validation"]["passed"] for s in m["submodels"].values() for a in s["artifacts"])
    assert (flux_bundle / "tokenizer_2" / "tokenizer.json").is_file()
    assert m["pipeline"]["latent_channels"] == 16 and m["pipeline"]["vae_shift_factor"] == pytest.approx(0.1159)
    assert m["defaults"]["steps"] == 28 and m["defaults"]["guidance_scale"] == 3.5  # FluxPipeline's defaults
    assert m["pipeline"]["guidance_embeds"] is True and m["pipeline"]["rope_axes_dims"] == [4, 6, 6]
    assert run_sdc("verify", flux_bundle).returncode == 0


@pytest.mark.parametrize("name", ["dev_64x96", "dev_true_cfg_prompt2_per_prompt", "dev_img2img", "schnell_64x96",
                                  "schnell_img2img"])
def test_bundle_generates_like_diffusers(name, flux_bundle, schnell_bundle) -> None:
    """The ONNX Runtime bundle (fused artifacts) reproduces diffusers' FluxPipeline / FluxImg2ImgPipeline."""
    import sdc.runtime

    s, ref = load_case(name)
    pipe = sdc.runtime.load(flux_bundle if s["model"] == "flux-tiny" else schnell_bundle)
    assert type(pipe).__name__ == "FluxPipeline" and pipe.config.guidance_embeds == (s["model"] == "flux-tiny")
    image, steps = run_reference(pipe, s, ref)
    err = float(np.abs(image - ref["image"]).max())
    assert len(steps) == len(ref["step_latents"]) and image.shape == ref["image"].shape
    assert err <= ATOL, f"{name}: bundle image differs from diffusers by {err:.3g}"


def test_generate_cli_takes_the_flux_options(flux_bundle, tmp_path) -> None:
    from PIL import Image

    out = tmp_path / "x.png"
    proc = run_sdc("generate", flux_bundle, "a red car", "-o", out, "--steps", "2", "--height", "32", "--width", "48",
                   "--negative", "blurry", "--true-cfg", "2", "--prompt-2", "an oil painting", "--max-sequence-length", "16",
                   "--seed", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    img = Image.open(out)
    assert img.size == (48, 32)
    record = json.loads(img.text["sdc"])
    assert record["true_cfg_scale"] == 2.0 and record["max_sequence_length"] == 16
    assert f"wrote {out}" in " ".join(proc.stderr.split())  # the final line says what was done


@pytest.mark.parametrize("args,needles", [
    (["--height", "42"], ["height must be a multiple of 4"]),
    (["--max-sequence-length", "600"], ["max_sequence_length 600 is above the T5 tokenizer's 512"]),
    (["--original-size", "64x64"], ["--original-size", "SDXL", "FluxPipeline"]),
    (["--scheduler", "euler"], ["flow velocity"]),
])
def test_generate_cli_refuses_bad_flux_arguments(flux_bundle, tmp_path, args, needles) -> None:
    out = tmp_path / "x.png"
    assert_one_line_error(run_sdc("generate", flux_bundle, "a cat", "-o", out, "--steps", "1", *args), *needles)
    assert not out.exists()


def test_sd_bundle_refuses_flux_options(bundles, tmp_path) -> None:
    out = tmp_path / "x.png"
    proc = run_sdc("generate", bundles["sd1-tiny"], "a red car", "--true-cfg", "2", "-o", out)
    assert_one_line_error(proc, "--true-cfg", "Flux bundles", "StableDiffusionPipeline")
    assert not out.exists()


@pytest.mark.parametrize("breakage,needles", [
    ("missing_tokenizer_2", ["tokenizer_2", "component folder missing"]),
    ("spiece_only", ["tokenizer.json", "spiece.model"]),
])
def test_unusable_t5_tokenizer_is_refused_before_building(fixture_copy, tmp_path, breakage, needles) -> None:
    import shutil

    model = fixture_copy("flux-tiny")
    if breakage == "missing_tokenizer_2":
        shutil.rmtree(model / "tokenizer_2")
    else:
        (model / "tokenizer_2" / "tokenizer.json").unlink()
        (model / "tokenizer_2" / "spiece.model").write_bytes(b"\x00")
    out = tmp_path / "x.bundle"
    assert_one_line_error(run_sdc("build", model, "-o", out), *needles)
    assert_nothing_written(out)


def test_mismatched_text_width_and_reduced_precision_are_refused(fixture_copy, tmp_path) -> None:
    model = fixture_copy("flux-tiny")
    out = tmp_path / "x.bundle"
    assert_one_line_error(run_sdc("build", model, "-o", out, "--precision", "fp32,int8"), "--precision", "Flux")
    assert_nothing_written(out)
    cfg = json.loads((model / "transformer" / "config.json").read_text())
    (model / "transformer" / "config.json").write_text(json.dumps(dict(cfg, joint_attention_dim=24)))
    assert_one_line_error(run_sdc("build", model, "-o", out), "joint_attention_dim", "d_model 32")
    assert_nothing_written(out)
