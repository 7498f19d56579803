"""The numpy Stable Diffusion pipeline against diffusers' end-to-end images, and its input checks.

References come from tests/fixtures/make_pipeline_refs.py (diffusers + torch, seeded numpy noise);
here the same generations run through Paddle submodels (tests/runtime/paddle_models.py) and sdc's
numpy schedulers and tokenizer.
"""

from __future__ import annotations


import numpy as np
import pytest

from sdc.errors import InputError
from sdc.runtime.pipeline import PipelineConfig, StableDiffusionPipeline, randn

from tests.conftest import FIXTURES, load_pipeline_case, pipeline_cases, pipeline_kwargs

INDEX = pipeline_cases()
ATOL = 1e-3  # on images in [0, 1]


# ----------------------------------------------------------------------------- reference cases


def _pipeline(family: str) -> StableDiffusionPipeline:
    pytest.importorskip("paddle")
    from tests.runtime.paddle_models import fixture_pipeline

    return fixture_pipeline(FIXTURES / family)


@pytest.mark.parametrize("key", sorted(INDEX))
def test_matches_diffusers(key: str) -> None:
    s, ref = load_pipeline_case(key)
    pipe = _pipeline(s["family"])
    steps: list[np.ndarray] = []
    # img2img cases alternate input kinds: a PIL image must give the same result as the float array.
    kw = pipeline_kwargs(s, ref, image_as_pil=s["img2img"] and key.endswith("euler_a"))
    image = pipe(**kw, output_type="np", callback=lambda i, n, t, lat: steps.append(lat))
    lat_err = float(np.abs(steps[-1] - ref["step_latents"][-1]).max())
    err = float(np.abs(image - ref["image"]).max())
    print(f"{key}: image max abs {err:.2e}, final latents max abs {lat_err:.2e}")
    assert image.shape == ref["image"].shape and image.dtype == np.float32
    assert len(steps) == len(ref["step_latents"])
    assert err <= ATOL, f"{key}: image differs from diffusers by {err:.3g} (latents by {lat_err:.3g})"


def test_output_types_and_callback() -> None:
    s, ref = load_pipeline_case("sd1-tiny_ddim")
    pipe = _pipeline("sd1-tiny")
    seen: list[tuple[int, int]] = []
    latents = pipe(**pipeline_kwargs(s, ref), output_type="latent", callback=lambda i, n, t, lat: seen.append((i, n)))
    n = s["num_inference_steps"]
    assert seen == [(i, n) for i in range(1, n + 1)]
    assert np.abs(latents - ref["step_latents"][-1]).max() < 1e-3
    pil = pipe(**pipeline_kwargs(s, ref), output_type="pil")
    assert len(pil) == 1 and pil[0].size == (s["width"], s["height"]) and pil[0].mode == "RGB"
    diff = np.abs(np.asarray(pil[0], dtype=np.int32) - np.round(ref["image"][0] * 255).astype(np.int32))
    assert diff.max() <= 1  # rounding at a .5 boundary may flip


def test_seed_reproducible_and_default_size() -> None:
    pipe = _pipeline("sd1-tiny")
    kw = dict(prompt="a cat", num_inference_steps=2, scheduler="euler_a", output_type="latent")
    a, b = pipe(**kw, seed=3), pipe(**kw, seed=3)
    assert np.array_equal(a, b) and a.shape == (1, 4, 8, 8)  # default 64x64 from unet sample_size 8 x 8
    assert not np.array_equal(a, pipe(**kw, seed=4))


# ----------------------------------------------------------------------------- input errors (no models needed)


class _Stub:
    """Models and tokenizer that must never be reached: every error is raised before any model runs."""

    def __call__(self, *args, **kwargs):
        raise AssertionError("a model ran although the inputs are invalid")


@pytest.fixture
def stub_pipe() -> StableDiffusionPipeline:
    models = {n: _Stub() for n in ("text_encoder", "unet", "vae_encoder", "vae_decoder")}
    cfg = PipelineConfig(default_height=64, default_width=64)
    return StableDiffusionPipeline(models, _Stub(), {"_class_name": "DDIMScheduler"}, cfg)


IMG = np.zeros((64, 64, 3), np.float32)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(height=65), "height must be a multiple of 8"),
        (dict(width=100), "width must be a multiple of 8"),
        (dict(height=0), "height must be an integer >= 1"),
        (dict(num_inference_steps=0), "num_inference_steps must be an integer >= 1"),
        (dict(num_inference_steps=2.5), "num_inference_steps must be an integer"),
        (dict(guidance_scale=-1.0), "guidance_scale must be a finite number >= 0"),
        (dict(guidance_scale=float("nan")), "guidance_scale must be a finite number"),
        (dict(num_images_per_prompt=0), "num_images_per_prompt must be an integer >= 1"),
        (dict(output_type="jpeg"), "output_type must be one of"),
        (dict(seed=-1), "seed must be a non-negative integer"),
        (dict(prompt=[]), "prompt must be a string or a non-empty list"),
        (dict(prompt=["a", "b"], negative_prompt=["x"]), "negative_prompt has 1 entries but prompt has 2"),
        (dict(latents=np.zeros((1, 4, 8, 9), np.float32)), "latents have shape (1, 4, 8, 9), expected (1, 4, 8, 8)"),
        (dict(prompt=["a", "b"], latents=np.zeros((1, 4, 8, 8), np.float32)), "expected (2, 4, 8, 8)"),
        (dict(image=IMG, strength=0.0), "strength must be in (0, 1]"),
        (dict(image=IMG, strength=1.5), "strength must be in (0, 1]"),
        (dict(image=IMG, strength=0.1, num_inference_steps=5), "leaves no denoising step"),
        (dict(image=IMG, latents=np.zeros((1, 4, 8, 8), np.float32)), "either latents"),
        (dict(image=IMG + 2), "values must lie in [0, 1]"),
        (dict(image=np.zeros((1, 3, 64, 64), np.float32) - 2), "values must lie in [-1, 1]"),
        (dict(image=np.zeros((64, 64), np.float32)), "is not HWC/NHWC/NCHW"),
        (dict(image="cat.png"), "unsupported image type str"),
        (dict(image=np.zeros((4, 4, 3), np.float32)), "smaller than the VAE downscale factor"),
        (dict(image=np.zeros((2, 64, 64, 3), np.float32), prompt="a"), "2 images cannot be spread over 1"),
    ],
)
def test_input_errors(stub_pipe: StableDiffusionPipeline, kwargs: dict, message: str) -> None:
    kwargs = dict(dict(prompt="a cat"), **kwargs)
    with pytest.raises(InputError) as err:
        stub_pipe(**kwargs)
    text = str(err.value)
    assert message in text and "\n" not in text, text


def test_inpainting_unet_refused() -> None:
    with pytest.raises(InputError, match="inpainting"):
        StableDiffusionPipeline({}, _Stub(), {}, PipelineConfig(unet_in_channels=9))


def test_randn_is_float32_and_ordered() -> None:
    rng = np.random.default_rng(0)
    a, b = randn(rng, (2, 3)), randn(rng, (2, 3))
    assert a.dtype == np.float32 and not np.array_equal(a, b)
    assert np.array_equal(a, np.random.default_rng(0).standard_normal((2, 3), dtype=np.float32))


def test_image_preprocessing_matches_pil_and_layouts() -> None:
    from PIL import Image

    from sdc.runtime.pipeline_images import preprocess

    u8 = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    want = u8.astype(np.float32).transpose(2, 0, 1)[None] / 255.0 * 2 - 1
    for img in (u8, u8[None], u8.astype(np.float32) / 255.0, Image.fromarray(u8), [Image.fromarray(u8)], want):
        got = preprocess(img, None, None, 8)
        assert got.shape == (1, 3, 16, 24) and got.dtype == np.float32
        assert np.abs(got - want).max() < 1e-6
    # Sizes round down to a multiple of 8 (nearest-neighbour for arrays, Lanczos for PIL), or resize to order.
    assert preprocess(u8[:15, :20], None, None, 8).shape == (1, 3, 8, 16)
    assert preprocess(Image.fromarray(u8), 32, 48, 8).shape == (1, 3, 32, 48)
