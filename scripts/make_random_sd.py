"""Writes a random-weight, real-size Stable Diffusion diffusers folder (SD 1.5, SD 2.1 or SDXL base architecture).

Runs in the reference venv (requirements-ref.txt): diffusers builds the modules, so names and
shapes are diffusers' own, not ours. Used by the real-size build check and the benchmarks:

    .venv-ref/bin/python scripts/make_random_sd.py --arch sd15 -o out/sd15-random [--dtype fp16]
    .venv-ref/bin/python scripts/make_random_sd.py --arch sdxl -o out/sdxl-random   # 2.57 B-parameter UNet
    .venv/bin/sdc build out/sd15-random -o out/sd15.bundle
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "fixtures"))
from make_fixtures import write_tokenizer  # noqa: E402  (real CLIP vocabulary from open_clip's data file)

ARCHS = {
    "sd15": dict(
        clip=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  hidden_act="quick_gelu", eos_token_id=2, projection_dim=768),
        unet=dict(attention_head_dim=8, cross_attention_dim=768, sample_size=64),
        pad="<|endoftext|>",
        scheduler=("PNDMScheduler", dict(skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)),
    ),
    "sd21": dict(
        clip=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                  hidden_act="gelu", eos_token_id=2, projection_dim=512),
        unet=dict(attention_head_dim=[5, 10, 20, 20], cross_attention_dim=1024, use_linear_projection=True,
                  upcast_attention=True, sample_size=96),
        pad="!",
        scheduler=("DDIMScheduler", dict(prediction_type="v_prediction", steps_offset=1, set_alpha_to_one=False,
                                         clip_sample=False)),
    ),
}


# SDXL base 1.0's configs (stabilityai/stable-diffusion-xl-base-1.0), every option that shapes the graphs.
SDXL = dict(
    clip=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              hidden_act="quick_gelu", eos_token_id=2, projection_dim=768),
    clip2=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
               hidden_act="gelu", eos_token_id=2, projection_dim=1280),
    unet=dict(sample_size=128, attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280],
              down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
              up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
              transformer_layers_per_block=[1, 2, 10], cross_attention_dim=2048, use_linear_projection=True,
              addition_embed_type="text_time", addition_time_embed_dim=256,
              projection_class_embeddings_input_dim=2816, layers_per_block=2),
    vae=dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
             up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=1024,
             scaling_factor=0.13025, force_upcast=True),
    scheduler=dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                   timestep_spacing="leading", interpolation_type="linear", use_karras_sigmas=False),
)


def make_sdxl(out: Path, dtype: str) -> None:
    """SDXL base with random weights, made directly in the stored dtype (fp32 would need 10 GB for the UNet)."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    torch.set_default_dtype(torch.float16 if dtype == "fp16" else torch.float32)
    common = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406, pad_token_id=1)
    te1 = CLIPTextModel(CLIPTextConfig(**common, **SDXL["clip"]))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**common, **SDXL["clip2"]))
    unet = UNet2DConditionModel(**SDXL["unet"])
    vae = AutoencoderKL(**SDXL["vae"])
    write_tokenizer(out / "tokenizer", "<|endoftext|>")
    write_tokenizer(out / "tokenizer_2", "!")
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=CLIPTokenizer.from_pretrained(out / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(out / "tokenizer_2"), unet=unet,
        scheduler=EulerDiscreteScheduler(**SDXL["scheduler"]), force_zeros_for_empty_prompt=True)
    pipe.save_pretrained(out, safe_serialization=True)
    write_tokenizer(out / "tokenizer", "<|endoftext|>")  # keep the hub layout
    write_tokenizer(out / "tokenizer_2", "!")
    n = sum(p.numel() for p in unet.parameters())
    print(f"wrote {out}: sdxl, UNet {n / 1e6:.1f} M parameters, weights {dtype}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(ARCHS) + ["sdxl"], default="sd15")
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--dtype", choices=("fp32", "fp16"), default="fp16", help="stored weight dtype")
    args = ap.parse_args()
    if args.arch == "sdxl":
        return make_sdxl(args.out, args.dtype)

    import diffusers
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    spec = ARCHS[args.arch]
    torch.manual_seed(0)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406,
                                        pad_token_id=1, **spec["clip"]))
    unet = UNet2DConditionModel(**spec["unet"])  # diffusers' defaults are the SD layout
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=512,
    )
    name, kw = spec["scheduler"]
    scheduler = getattr(diffusers, name)(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", **kw)
    tok_dir = args.out / "tokenizer"
    write_tokenizer(tok_dir, spec["pad"])
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=clip, tokenizer=CLIPTokenizer.from_pretrained(tok_dir),
                                   unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    if args.dtype == "fp16":
        pipe.to(torch.float16)
    pipe.save_pretrained(args.out, safe_serialization=True)
    write_tokenizer(tok_dir, spec["pad"])  # keep the hub layout
    n = sum(p.numel() for p in unet.parameters())
    print(f"wrote {args.out}: {args.arch}, UNet {n / 1e6:.1f} M parameters, weights {args.dtype}")


if __name__ == "__main__":
    main()
