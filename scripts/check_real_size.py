"""Opt-in real-size check: SD 1.5, SD 2.1 (and with --arch sdxl, SDXL base) architectures with random weights.

No checkpoint files are needed: the configs below are the published diffusers configs (the fields
that matter), parsed by sdc's own config readers, and the Paddle modules are instantiated with
random weights. Prints parameter counts and forward wall times (batch 1; SD 1.5 at 512x512,
SD 2.1 at 768x768):

    .venv/bin/python scripts/check_real_size.py [--arch sd15 sd21] [--submodels unet vae_decoder]

Needs ~10 GB of memory for SD 2.1's UNet at 768x768 (attention scores over 9216 tokens).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

UNET_COMMON = dict(
    _class_name="UNet2DConditionModel", in_channels=4, out_channels=4, block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    layers_per_block=2, norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, act_fn="silu",
    downsample_padding=1, mid_block_scale_factor=1, center_input_sample=False,
)
VAE = dict(
    _class_name="AutoencoderKL", in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2,
    norm_num_groups=32, act_fn="silu", scaling_factor=0.18215,
)
CLIP_COMMON = dict(architectures=["CLIPTextModel"], vocab_size=49408, max_position_embeddings=77, layer_norm_eps=1e-5,
                   bos_token_id=0, pad_token_id=1)
ARCHS = {
    "sd15": dict(
        size=512,
        unet=dict(UNET_COMMON, attention_head_dim=8, cross_attention_dim=768, sample_size=64),
        vae=dict(VAE, sample_size=512),
        text_encoder=dict(CLIP_COMMON, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                          num_attention_heads=12, hidden_act="quick_gelu", eos_token_id=2, projection_dim=768),
    ),
    "sd21": dict(
        size=768,
        unet=dict(UNET_COMMON, attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024, sample_size=96,
                  use_linear_projection=True, upcast_attention=True),
        vae=dict(VAE, sample_size=768),
        text_encoder=dict(CLIP_COMMON, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                          num_attention_heads=16, hidden_act="gelu", eos_token_id=2, projection_dim=512),
    ),
    "sdxl": dict(  # stabilityai/stable-diffusion-xl-base-1.0 (needs ~24 GB for the UNet forward at 1024x1024)
        size=1024,
        unet=dict(UNET_COMMON, block_out_channels=[320, 640, 1280],
                  down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                  up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                  attention_head_dim=[5, 10, 20], transformer_layers_per_block=[1, 2, 10], cross_attention_dim=2048,
                  use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                  projection_class_embeddings_input_dim=2816, sample_size=128),
        vae=dict(VAE, sample_size=1024, scaling_factor=0.13025),
        text_encoder=dict(CLIP_COMMON, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                          num_attention_heads=12, hidden_act="quick_gelu", eos_token_id=2, projection_dim=768),
        text_encoder_2=dict(CLIP_COMMON, architectures=["CLIPTextModelWithProjection"], hidden_size=1280,
                            intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, hidden_act="gelu",
                            eos_token_id=2, projection_dim=1280),
    ),
}
DEFAULT_ARCHS = ("sd15", "sd21")
SUBMODELS = ("text_encoder", "text_encoder_2", "unet", "vae_encoder", "vae_decoder")


def write_configs(arch: str, folder: Path) -> None:
    """The architecture's config.json files in diffusers' folder layout."""
    for sub in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if sub in ARCHS[arch]:
            (folder / sub).mkdir(parents=True, exist_ok=True)
            (folder / sub / "config.json").write_text(json.dumps(ARCHS[arch][sub]))


def check(arch: str, names: list[str], folder: Path) -> None:
    import numpy as np
    import paddle

    from sdc.graphs import build, load_config
    from sdc.graphs.specs import spec_for

    a = ARCHS[arch]
    write_configs(arch, folder)
    for name in names:
        if name not in a and not name.startswith("vae_"):
            continue  # e.g. text_encoder_2 outside SDXL
        cfg = load_config(folder, name)
        if getattr(cfg, "text_time", False):
            cfg = dataclasses.replace(cfg, num_time_ids=6)  # a base's time ids
        paddle.seed(0)
        layer = build(name, cfg)
        params = sum(int(np.prod(p.shape)) for p in layer.parameters())
        spec = spec_for(name, cfg)
        size = a["size"]
        dims = {"batch": 1, "sequence": 77, "height": size, "width": size, "latent_height": size // 8, "latent_width": size // 8}
        inputs = [paddle.to_tensor(v) for v in spec.dummy_inputs(dims).values()]
        t0 = time.perf_counter()
        with paddle.no_grad():
            out = layer(*inputs)
        dt = time.perf_counter() - t0
        out = out if isinstance(out, (tuple, list)) else (out,)
        finite = all(bool(np.isfinite(o.numpy()).all()) for o in out)
        shapes = ", ".join(str(list(o.shape)) for o in out[:1])
        print(f"{arch:5s} {name:13s} {params / 1e6:8.1f} M params  forward {dt:7.2f} s at {size}x{size}  out {shapes}"
              f"  finite={finite}", flush=True)
        del layer, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", choices=sorted(ARCHS), default=list(DEFAULT_ARCHS))
    ap.add_argument("--submodels", nargs="+", choices=SUBMODELS, default=list(SUBMODELS))
    args = ap.parse_args()
    import paddle

    paddle.set_device("cpu")
    for arch in args.arch:
        with tempfile.TemporaryDirectory() as tmp:
            check(arch, args.submodels, Path(tmp))


if __name__ == "__main__":
    main()
