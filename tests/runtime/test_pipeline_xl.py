"""The numpy SDXL pipeline (base, refiner, hand-over) against diffusers' end-to-end generations, and its input checks.

References come from tests/fixtures/make_sdxl_pipeline_refs.py (diffusers 0.42 + torch, seeded numpy
noise); here they run through Paddle submodels of the fixture folders and sdc's numpy schedulers and
tokenizers. tests/compile/test_sdxl_build.py runs some of them through built bundles (ONNX Runtime).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdc.errors import InputError
from tests.conftest import FIXTURES, REFS, load_refs_case

REFS_XL = REFS / "pipelines-xl"
INDEX = json.loads((REFS_XL / "index.json").read_text(encoding="utf-8"))
ATOL = 1e-3  # on images in [0, 1]


def load_case(name: str) -> tuple[dict, dict[str, np.ndarray]]:
    return load_refs_case(REFS_XL, name)


def call_kwargs(s: dict, arrays: dict[str, np.ndarray]) -> dict:
    """sdc keyword arguments that reproduce a reference generation (tuples where diffusers takes tuples)."""
    kw = {k: (tuple(v) if isinstance(v, list) and k.endswith(("size", "top_left")) else v)
          for k, v in s["kwargs"].items() if k != "size"}
    if s["img2img"]:
        kw["image"] = arrays["init_image"].astype(np.float32) / 255.0
    elif "latents" in arrays:
        kw["latents"] = arrays["latents"]
    return kw


def run_reference(pipes, s: dict, arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Run one reference case through `pipes[model]` (base, then refiner for a hand-over)."""
    steps: list[np.ndarray] = []
    record = lambda i, n, t, lat: steps.append(lat)  # noqa: E731
    pipe = pipes(s["model"])
    if not s["refiner"]:
        return pipe(**call_kwargs(s, arrays), output_type="np", callback=record), steps
    latents = pipe(**call_kwargs(s, arrays), output_type="latent", callback=record)
    err = float(np.abs(latents - arrays["base_latents"]).max())
    assert err <= 1e-3, f"base latents at the hand-over differ from diffusers by {err:.3g}"
    return pipes("sdxl-refiner-tiny")(image=latents, **s["refiner"], output_type="np"), steps


def _pipeline(model: str):
    """The runtime's SDXL pipeline over Paddle modules of a fixture folder (no bundle)."""
    pytest.importorskip("paddle")
    from tests.runtime.paddle_models import fixture_pipeline

    return fixture_pipeline(FIXTURES / model)


@pytest.mark.parametrize("name", sorted(INDEX))
def test_matches_diffusers(name: str) -> None:
    s, ref = load_case(name)
    image, steps = run_reference(_pipeline, s, ref)
    err = float(np.abs(image - ref["image"]).max())
    lat_err = float(np.abs(steps[-1] - ref["step_latents"][-1]).max())
    print(f"{name}: image max abs {err:.2e}, last base step latents {lat_err:.2e}")
    assert len(steps) == len(ref["step_latents"])
    assert image.shape == ref["image"].shape and image.dtype == np.float32
    assert err <= ATOL, f"{name}: image differs from diffusers by {err:.3g} (latents by {lat_err:.3g})"


def test_cases_cover_the_issue() -> None:
    """Two sizes (non-square), every runtime scheduler, img2img, refiner, hand-over: the committed refs hold them."""
    from sdc.runtime.schedulers import ALIASES

    cases = [load_case(n)[0] for n in INDEX]
    sizes = {(c["kwargs"]["height"], c["kwargs"]["width"]) for c in cases if not c["img2img"]}
    assert {(64, 96), (96, 64)} <= sizes
    used = {c["kwargs"]["scheduler"] for c in cases} | {c["refiner"]["scheduler"] for c in cases if c["refiner"]}
    assert set(ALIASES) <= used, set(ALIASES) - used
    assert any(c["img2img"] and c["model"] == "sdxl-tiny" for c in cases)
    assert any(c["model"] == "sdxl-refiner-tiny" for c in cases)
    assert any(c["refiner"] for c in cases)


@pytest.mark.parametrize("kwargs,message", [
    (dict(denoising_start=0.5), "denoising_start needs an image"),
    (dict(denoising_end=1.5), "denoising_end must be a fraction"),
    (dict(image=np.zeros((1, 64, 64, 3), np.float32), denoising_start=0.8, denoising_end=0.5), "must be below"),
    (dict(original_size=(64,)), "original_size must be two"),
    (dict(prompt_2=["a", "b"]), "prompt_2 has 2 entries"),
    (dict(guidance_rescale=-1), "guidance_rescale must be"),
    (dict(aesthetic_score=float("nan")), "aesthetic_score must be a finite number"),
])
def test_bad_arguments(kwargs, message) -> None:
    pipe = _pipeline("sdxl-tiny")
    with pytest.raises(InputError, match=message):
        pipe("a cat", num_inference_steps=2, **kwargs)


def test_refiner_cannot_start_from_noise() -> None:
    with pytest.raises(InputError, match="SDXL refiner"):
        _pipeline("sdxl-refiner-tiny")("a cat", num_inference_steps=2)


def test_rescale_noise_cfg_matches_formula() -> None:
    from sdc.runtime.pipeline import rescale_noise_cfg

    rng = np.random.default_rng(0)
    cfg, text = rng.standard_normal((2, 4, 3, 5)).astype(np.float32), rng.standard_normal((2, 4, 3, 5)).astype(np.float32)
    out = rescale_noise_cfg(cfg, text, 0.7)
    for i in range(2):
        ratio = text[i].std(ddof=1) / cfg[i].std(ddof=1)
        np.testing.assert_allclose(out[i], 0.7 * cfg[i] * ratio + 0.3 * cfg[i], rtol=1e-5, atol=1e-6)
