"""The Paddle UNet and VAE halves against diffusers' outputs stored in the fixtures (no torch needed)."""

from __future__ import annotations

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")

from sdc.graphs import load, load_folder  # noqa: E402
from tests.conftest import FAMILIES, FIXTURES, REFS, SDXL_FAMILIES, load_cases  # noqa: E402

ATOL = 1e-4
OUTPUTS = {"unet": ("out_sample",), "vae_encoder": ("latent_parameters",), "vae_decoder": ("sample",)}
INPUTS = {
    # text_embeds / time_ids: SDXL UNets only (cases without them skip them)
    "unet": ("sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"),
    "vae_encoder": ("sample",),
    "vae_decoder": ("latent_sample",),
}


def _check(layer, name: str, cases: dict, label: str) -> None:
    assert len(cases) >= 2, cases.keys()
    for case, ref in sorted(cases.items()):
        with paddle.no_grad():
            out = layer(*[paddle.to_tensor(ref[i]) for i in INPUTS[name] if i in ref])
        out = out if isinstance(out, (tuple, list)) else (out,)
        for out_name, tensor in zip(OUTPUTS[name], out):
            got, want = tensor.numpy(), ref[out_name]
            assert got.shape == want.shape, (label, case, out_name, got.shape, want.shape)
            err = float(np.abs(got - want).max())
            print(f"{label} {case} {out_name}: max abs {err:.2e} (|ref| max {np.abs(want).max():.2f})")
            assert err <= ATOL, (label, case, out_name, err)


@pytest.mark.parametrize("family", FAMILIES + SDXL_FAMILIES)
@pytest.mark.parametrize("name", ["unet", "vae_encoder", "vae_decoder"])
def test_matches_diffusers(family: str, name: str) -> None:
    _check(load(FIXTURES / family, name), name, load_cases(REFS / family / f"{name}.npz"), f"{family}/{name}")


def test_inpainting_unet_with_odd_latent_sizes() -> None:
    """9-channel input, centred input, mid-block scale, custom time embedding width; includes a 5x7 latent."""
    layer = load_folder(FIXTURES / "unet-inpaint", "unet")
    cases = load_cases(REFS / "unet-inpaint" / "unet.npz")
    assert any(c["sample"].shape[2] % 2 for c in cases.values())
    _check(layer, "unet", cases, "unet-inpaint")


VARIANTS = FIXTURES / "variants"


@pytest.mark.parametrize("variant", sorted(p.name for p in VARIANTS.glob("unet-*")))
def test_unet_config_variants(variant: str) -> None:
    """Block order, per-block lists, no mid block, four levels, odd latents, other kernels and paddings."""
    folder = VARIANTS / variant
    _check(load_folder(folder, "unet"), "unet", load_cases(folder / "refs.npz"), variant)


@pytest.mark.parametrize("variant", sorted(p.name for p in VARIANTS.glob("vae-*")))
def test_vae_config_variants(variant: str) -> None:
    folder = VARIANTS / variant
    cases = load_cases(folder / "refs.npz")
    enc = {c: dict(sample=d["image"], latent_parameters=d["latent_parameters"]) for c, d in cases.items()}
    dec = {c: dict(latent_sample=d["latent_sample"], sample=d["decoded"]) for c, d in cases.items()}
    for name, sub_cases in (("vae_encoder", enc), ("vae_decoder", dec)):
        layer = load_folder(folder, name)
        _check(layer, name, sub_cases, f"{variant}/{name}")


def test_per_attention_depths_need_the_up_path(tmp_path) -> None:
    """Nested transformer depths without reverse_transformer_layers_per_block: a one-line config error (diffusers
    refuses it too), and a wrong-length entry names the field."""
    import json

    from sdc.errors import ConfigError
    from sdc.graphs.configs_unet import load_unet_config

    cfg = json.loads((VARIANTS / "unet-sdxl-asymmetric-depths" / "config.json").read_text())
    for change, field in ((dict(reverse_transformer_layers_per_block=None), "reverse_transformer_layers_per_block"),
                          (dict(transformer_layers_per_block=[1, [1, 2, 3], 1]), "transformer_layers_per_block")):
        path = tmp_path / "config.json"
        path.write_text(json.dumps(dict(cfg, **change)))
        with pytest.raises(ConfigError, match=field):
            load_unet_config(path)
