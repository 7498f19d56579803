"""Writes a random-weight, real-size Flux.1 diffusers folder, its big submodels in bf16 safetensors shards.

Runs in the reference venv (requirements-ref.txt). diffusers and transformers build each module on
PyTorch's meta device, so names and shapes are theirs and nothing is allocated at full size; each
tensor is then drawn on its own (seeded by its name) and written in bf16, a shard at a time, so the
12 B-parameter transformer needs about one shard (5 GB) of memory, not 24-48 GB.

    .venv-ref/bin/python scripts/make_random_flux.py -o out/flux-random                  # dev, full depth
    .venv-ref/bin/python scripts/make_random_flux.py -o out/flux-2x2 --double 2 --single 2 --t5-layers 2
    .venv-ref/bin/python scripts/make_random_flux.py -o out/flux-schnell --variant schnell

Values: Linear / embedding weights N(0, 1/fan_in) (so activations keep their scale through the
blocks), biases N(0, 0.02), norm weights 1 + N(0, 0.1). The T5 vocabulary is the tiny fixture's
(tests/fixtures/flux-tiny/tokenizer_2: ids stay below T5-XXL's 32128 rows); CLIP's is the real one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "fixtures"))
from make_fixtures import write_tokenizer  # noqa: E402  (real CLIP vocabulary from open_clip's data file)

ROOT = Path(__file__).resolve().parent.parent
SHARD_BYTES = 5 << 30  # the hub's shard size for Flux

TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                   num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                   axes_dims_rope=(16, 56, 56))
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
              dense_act_fn="gelu_new", is_gated_act=True, layer_norm_epsilon=1e-6, is_encoder_decoder=False,
              tie_word_embeddings=False)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=0, eos_token_id=2,
              pad_token_id=1)
VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2,
           norm_num_groups=32, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
           use_post_quant_conv=False)
SCHEDULERS = {
    "dev": dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                max_image_seq_len=4096),
    "schnell": dict(shift=1.0, use_dynamic_shifting=False, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                    max_image_seq_len=4096),
}


def draw(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """One tensor's random values (float32), seeded by its name: the same folder on every run."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    leaf = name.rsplit(".", 1)[-1]
    if len(shape) == 1:
        is_norm = "norm" in name or "layer_norm" in name
        if leaf == "weight" and is_norm:
            return 1.0 + 0.1 * torch.randn(shape, generator=gen)
        return 0.02 * torch.randn(shape, generator=gen)
    fan_in = shape[-1] if len(shape) == 2 else int(torch.tensor(shape[1:]).prod())
    if "relative_attention_bias" in name:
        fan_in = 1
    return torch.randn(shape, generator=gen) / fan_in ** 0.5


def write_sharded(module_shapes: dict[str, tuple[int, ...]], folder: Path, stem: str, seed: int,
                  dtype: torch.dtype = torch.bfloat16) -> tuple[int, int]:
    """Draw every tensor and write `stem`-NNNNN-of-NNNNN.safetensors shards plus the index; (params, bytes)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    itemsize = torch.empty((), dtype=dtype).element_size()
    groups: list[list[str]] = [[]]
    size = 0
    for name, shape in module_shapes.items():
        n = int(torch.tensor(shape).prod()) * itemsize if shape else itemsize
        if groups[-1] and size + n > SHARD_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += n
    weight_map, params, total = {}, 0, 0
    for i, names in enumerate(groups, 1):
        file = f"{stem}-{i:05d}-of-{len(groups):05d}.safetensors" if len(groups) > 1 else f"{stem}.safetensors"
        shard = {}
        for name in names:
            t = draw(name, module_shapes[name], seed).to(dtype)
            shard[name] = t
            params += t.numel()
            total += t.numel() * itemsize
            weight_map[name] = file
        save_file(shard, str(folder / file), metadata={"format": "pt"})
        del shard
        print(f"  {folder.name}/{file}: {len(names)} tensors", flush=True)
    if len(groups) > 1:
        (folder / f"{stem}.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1) + "\n")
    return params, total


def meta_shapes(module) -> dict[str, tuple[int, ...]]:
    """Parameter (and persistent buffer) shapes by state-dict name; a tied weight once, as save_pretrained writes
    it (T5's `shared.weight`, not its alias `encoder.embed_tokens.weight`)."""
    state = module.state_dict()
    names = [n for n, _ in module.named_parameters()] + [n for n, _ in module.named_buffers() if n in state]
    return {n: tuple(state[n].shape) for n in names}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--variant", choices=("dev", "schnell"), default="dev",
                    help="dev: guidance embedding and dynamic shift; schnell: neither")
    ap.add_argument("--double", type=int, default=19, help="double-stream blocks (19 in Flux.1)")
    ap.add_argument("--single", type=int, default=38, help="single-stream blocks (38 in Flux.1)")
    ap.add_argument("--t5-layers", type=int, default=24, help="T5 encoder layers (24 in T5-XXL)")
    ap.add_argument("--parts", default="transformer,text_encoder_2,text_encoder,vae",
                    help="which submodels to write (the rest of the folder is written always)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    parts = set(args.parts.split(","))
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    tf_cfg = dict(TRANSFORMER, num_layers=args.double, num_single_layers=args.single,
                  guidance_embeds=args.variant == "dev")
    with torch.device("meta"):
        tf = FluxTransformer2DModel(**tf_cfg)
        t5 = T5EncoderModel(T5Config(**dict(T5_XXL, num_layers=args.t5_layers)))
    tf.save_config(out / "transformer")
    if "transformer" in parts:
        n, b = write_sharded(meta_shapes(tf), out / "transformer", "diffusion_pytorch_model", args.seed)
        print(f"transformer: {n:,} parameters, {b / 1e9:.1f} GB bf16 ({time.perf_counter() - t0:.0f} s)", flush=True)
    t5.config.save_pretrained(out / "text_encoder_2")
    if "text_encoder_2" in parts:
        n, b = write_sharded(meta_shapes(t5), out / "text_encoder_2", "model", args.seed)
        print(f"text_encoder_2: {n:,} parameters, {b / 1e9:.1f} GB bf16 ({time.perf_counter() - t0:.0f} s)", flush=True)
    clip = CLIPTextModel(CLIPTextConfig(**CLIP_L))
    clip.config.save_pretrained(out / "text_encoder")
    if "text_encoder" in parts:
        write_sharded(meta_shapes(clip), out / "text_encoder", "model", args.seed, torch.float32)
    vae = AutoencoderKL(**VAE)
    vae.save_config(out / "vae")
    if "vae" in parts:
        write_sharded(meta_shapes(vae), out / "vae", "diffusion_pytorch_model", args.seed, torch.float32)
    FlowMatchEulerDiscreteScheduler(**SCHEDULERS[args.variant]).save_config(out / "scheduler")
    write_tokenizer(out / "tokenizer", "<|endoftext|>")
    shutil.copytree(ROOT / "tests" / "fixtures" / "flux-tiny" / "tokenizer_2", out / "tokenizer_2")
    index = json.loads((ROOT / "tests" / "fixtures" / "flux-tiny" / "model_index.json").read_text())
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    print(f"wrote {out} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
