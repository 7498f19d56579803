"""The Paddle UNet and VAE halves against diffusers' outputs stored in the fixtures (no torch needed)."""

from __future__ import annotations

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")

from sdc.graphs import build, load  # noqa: E402
from sdc.graphs.configs import load_unet_config  # noqa: E402
from sdc.graphs.weights import assign_weights, find_weight_files, read_weights  # noqa: E402
from tests.conftest import FAMILIES, FIXTURES, REFS, load_cases  # noqa: E402

ATOL = 1e-4
OUTPUTS = {"unet": ("out_sample",), "vae_encoder": ("latent_parameters",), "vae_decoder": ("sample",)}
INPUTS = {
    "unet": ("sample", "timestep", "encoder_hidden_states"),
    "vae_encoder": ("sample",),
    "vae_decoder": ("latent_sample",),
}


def _check(layer, name: str, cases: dict, label: str) -> None:
    assert len(cases) >= 3, cases.keys()
    for case, ref in sorted(cases.items()):
        with paddle.no_grad():
            out = layer(*[paddle.to_tensor(ref[i]) for i in INPUTS[name]])
        out = out if isinstance(out, (tuple, list)) else (out,)
        for out_name, tensor in zip(OUTPUTS[name], out):
            got, want = tensor.numpy(), ref[out_name]
            assert got.shape == want.shape, (label, case, out_name, got.shape, want.shape)
            err = float(np.abs(got - want).max())
            print(f"{label} {case} {out_name}: max abs {err:.2e} (|ref| max {np.abs(want).max():.2f})")
            assert err <= ATOL, (label, case, out_name, err)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", ["unet", "vae_encoder", "vae_decoder"])
def test_matches_diffusers(family: str, name: str) -> None:
    _check(load(FIXTURES / family, name), name, load_cases(REFS / family / f"{name}.npz"), f"{family}/{name}")


def test_inpainting_unet_with_odd_latent_sizes() -> None:
    """9-channel input, centred input, mid-block scale, custom time embedding width; includes a 5x7 latent."""
    folder = FIXTURES / "unet-inpaint"
    cfg = load_unet_config(folder / "config.json")
    layer = build("unet", cfg)
    with paddle.no_grad():
        assign_weights(layer, read_weights(find_weight_files(folder)), str(folder))
    cases = load_cases(REFS / "unet-inpaint" / "unet.npz")
    assert any(c["sample"].shape[2] % 2 for c in cases.values())
    _check(layer, "unet", cases, "unet-inpaint")
