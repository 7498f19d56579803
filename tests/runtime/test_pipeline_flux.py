"""The numpy Flux pipeline (dev-like and schnell-like) against diffusers' end-to-end generations, and its checks.

References come from tests/fixtures/make_flux_pipeline_refs.py (diffusers 0.42 + torch, seeded numpy
noise); here they run through Paddle submodels of the fixture folders and sdc's numpy scheduler and
tokenizers. tests/compile/test_flux_build.py runs some of them through built bundles (ONNX Runtime).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdc.errors import InputError
from sdc.runtime.pipeline_flux import pack_latents, unpack_latents
from tests.conftest import FIXTURES, REFS, load_refs_case

REFS_FLUX = REFS / "pipelines-flux"
INDEX = json.loads((REFS_FLUX / "index.json").read_text(encoding="utf-8"))
ATOL = 1e-3  # on images in [0, 1]


def load_case(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    return load_refs_case(REFS_FLUX, name)


def call_kwargs(s: dict, arrays: dict[str, np.ndarray]) -> dict:
    """sdc keyword arguments that reproduce a reference generation."""
    kw = {k: v for k, v in s["kwargs"].items() if k != "size"}
    if s["img2img"]:
        kw["image"] = arrays["init_image"].astype(np.float32) / 255.0
    elif "latents" in arrays:
        kw["latents"] = arrays["latents"]
    return kw


def run_reference(pipe, s: dict, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    steps: list[np.ndarray] = []
    image = pipe(**call_kwargs(s, arrays), output_type="np", callback=lambda i, n, t, lat: steps.append(lat))
    return image, steps


def _pipeline(model: str):
    """The runtime's Flux pipeline over Paddle modules of a fixture folder (no bundle)."""
    pytest.importorskip("paddle")
    from tests.runtime.paddle_models import fixture_pipeline

    return fixture_pipeline(FIXTURES / model)


@pytest.mark.parametrize("name", sorted(INDEX))
def test_matches_diffusers(name: str) -> None:
    s, ref = load_case(name)
    image, steps = run_reference(_pipeline(s["model"]), s, ref)
    err = float(np.abs(image - ref["image"]).max())
    lat_err = float(np.abs(steps[0] - ref["step_latents"][0]).max())
    print(f"{name}: image max abs {err:.2e}, first step latents {lat_err:.2e}")
    assert len(steps) == len(ref["step_latents"])
    assert steps[0].shape == ref["step_latents"][0].shape  # packed tokens, as diffusers' callback sees them
    assert image.shape == ref["image"].shape and image.dtype == np.float32
    assert err <= ATOL, f"{name}: image differs from diffusers by {err:.3g} (first step latents by {lat_err:.3g})"


def test_cases_cover_the_issue() -> None:
    """dev-like and schnell-like, two sizes each (non-square), image-to-image, true CFG, T5 at its default length."""
    cases = [load_case(n)[0] for n in INDEX]
    for model in ("flux-tiny", "flux-schnell-tiny"):
        sizes = {(c["kwargs"]["height"], c["kwargs"]["width"]) for c in cases if c["model"] == model and not c["img2img"]}
        assert len(sizes) >= 2 and any(h != w for h, w in sizes), (model, sizes)
        assert any(c["img2img"] and c["model"] == model for c in cases)
    assert any(c["kwargs"].get("true_cfg_scale", 1) > 1 for c in cases)
    assert any(c["kwargs"]["max_sequence_length"] == 512 for c in cases)


def test_packing_round_trips_and_matches_diffusers_layout() -> None:
    """Token (i, j) holds the 2x2 patch at rows 2i..2i+1, columns 2j..2j+1, channel-major inside."""
    z = np.arange(2 * 3 * 4 * 6, dtype=np.float32).reshape(2, 3, 4, 6)
    tokens = pack_latents(z)
    assert tokens.shape == (2, 2 * 3, 12)
    np.testing.assert_array_equal(tokens[1, 3 + 2], z[1, :, 2:4, 4:6].reshape(-1))  # row 1, column 2
    np.testing.assert_array_equal(unpack_latents(tokens, 4, 6), z)


def test_latent_output_is_packed_and_decodes_to_the_image() -> None:
    pipe = _pipeline("flux-tiny")
    kw = dict(prompt="a cat", height=32, width=48, num_inference_steps=2, seed=3, max_sequence_length=8)
    lat = pipe(**kw, output_type="latent")
    assert lat.shape == (1, (16 // 2) * (24 // 2), 64)
    np.testing.assert_allclose(pipe.decode_latents(unpack_latents(lat, 16, 24)), pipe(**kw, output_type="np"), atol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    (dict(height=70), "height must be a multiple of 4"),
    (dict(width=30), "width must be a multiple of 4"),
    (dict(max_sequence_length=513), "max_sequence_length 513 is above the T5 tokenizer's 512"),
    (dict(max_sequence_length=0), "max_sequence_length must be an integer >= 1"),
    (dict(latents=np.zeros((1, 16, 16, 16), np.float32)), "packed latents"),
    (dict(true_cfg_scale=float("inf")), "true_cfg_scale must be a finite number"),
    (dict(sigmas=[1.0, 0.5]), "sigmas must be a list of num_inference_steps"),
    (dict(scheduler="ddim"), "flow velocity"),
    (dict(prompt_2=["a", "b"]), "prompt_2 has 2 entries"),
    (dict(image=np.zeros((1, 64, 64, 3), np.float32), strength=0.0), "strength must be in"),
])
def test_bad_arguments(kwargs, message) -> None:
    pipe = _pipeline("flux-tiny")
    with pytest.raises(InputError, match=message):
        pipe(**{"prompt": "a cat", "num_inference_steps": 3, "height": 32, "width": 32, **kwargs})


def test_schnell_multiple_follows_the_vae() -> None:
    """Height and width are multiples of 2 x the VAE's downscale: 8 for this 3-level VAE (16 for Flux's)."""
    pipe = _pipeline("flux-schnell-tiny")
    assert pipe.multiple == 8
    with pytest.raises(InputError, match="multiple of 8"):
        pipe("a cat", height=36, width=32, num_inference_steps=1)
