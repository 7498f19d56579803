"""Bundle -> images: the Paddle-free runtime (Python API and `sdc generate`) against diffusers' own pipelines.

Every committed reference generation (tests/fixtures/refs/pipelines, from make_pipeline_refs.py) is
replayed through the ONNX bundle built from the same fixture: all schedulers, both families,
image-to-image, batches and non-square sizes. Tolerance: max abs 1e-3 on the [0, 1] image.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import load_pipeline_case, pipeline_cases, pipeline_kwargs, run_sdc

ATOL = 1e-3
CASES = pipeline_cases()


@pytest.fixture(scope="module")
def pipes(bundles):
    import sdc.runtime

    return {family: sdc.runtime.load(path, provider="cpu") for family, path in bundles.items()}


@pytest.mark.parametrize("key", sorted(CASES))
def test_python_api_matches_diffusers(pipes, key):
    s, ref = load_pipeline_case(key)
    pipe = pipes[s["family"]]
    # On CPU the runtime runs the fused (ort-cpu) graphs: this is the passes' end-to-end check too.
    assert pipe.models["unet"].path.name == "model.ort-cpu.fp32.onnx"
    assert pipe.models["text_encoder"].path.name == "model.ort-cpu.fp32.onnx"
    image = pipe(**pipeline_kwargs(s, ref), output_type="np")
    err = float(np.abs(image - ref["image"]).max())
    print(f"{key}: bundle image vs diffusers max abs {err:.2e}")
    assert image.shape == ref["image"].shape
    assert err <= ATOL, (key, err)


# Fixed latents (both families), seed-drawn latents with ancestral noise, and image-to-image, through the real CLI.
CLI_CASES = ["sd1-tiny_euler_a", "sd1-tiny_pndm_64x96", "sd2-tiny_ddim", "sd1-tiny_img2img_ddim"]


@pytest.mark.parametrize("key", CLI_CASES)
def test_cli_generate_matches_diffusers(bundles, tmp_path, key):
    from PIL import Image

    s, ref = load_pipeline_case(key)
    args = ["generate", bundles[s["family"]], s["prompt"], "-o", tmp_path / "out.png", "--negative", s["negative_prompt"],
            "--steps", s["num_inference_steps"], "--guidance", s["guidance_scale"], "--seed", s["seed"],
            "--scheduler", s["scheduler"], "--provider", "cpu"]
    if s["img2img"]:
        Image.fromarray(ref["init_image"][0]).save(tmp_path / "init.png")
        args += ["--image", tmp_path / "init.png", "--strength", s["strength"]]
    else:
        args += ["--height", s["height"], "--width", s["width"]]
        if "latents" in ref:  # otherwise the seed draws them, in the same order as the reference
            np.save(tmp_path / "latents.npy", ref["latents"])
            args += ["--latents", tmp_path / "latents.npy"]
    res = run_sdc(*args)
    assert res.returncode == 0, res.stderr
    png = Image.open(tmp_path / "out.png")
    got = np.asarray(png, dtype=np.int32)
    want = np.round(ref["image"][0] * 255).astype(np.int32)
    assert got.shape == want.shape
    # 1e-3 on [0, 1] is a quarter of one 8-bit level; rounding at a .5 boundary may still flip a level.
    assert np.abs(got - want).max() <= 1, key
    record = json.loads(png.text["sdc"])
    assert record["prompt"] == s["prompt"] and record["num_inference_steps"] == s["num_inference_steps"]
    assert record["scheduler"] == s["scheduler"]
