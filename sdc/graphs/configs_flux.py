"""Typed configs of the Flux family's own submodels (T5 encoder so far), read like sdc.graphs.configs.

Every option that changes the computation is implemented or refused by name (`UnsupportedConfigError`);
transformers' generic keys (dropout, decoder sizes, token ids) do not change the encoder's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdc.errors import ConfigError, UnsupportedConfigError
from sdc.graphs.configs import _Reader, read_json

# feed_forward_proj -> (gated, activation); "gated-gelu" is T5 v1.1's (Flux, SD3, PixArt), gelu_new = tanh form
T5_FEED_FORWARD = {"gated-gelu": (True, "gelu_new"), "relu": (False, "relu"), "gated-relu": (True, "relu"),
                   "gelu": (False, "gelu_new")}


@dataclass(frozen=True)
class T5Config:
    path: Path
    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_heads: int
    relative_attention_num_buckets: int
    relative_attention_max_distance: int
    gated: bool
    activation: str  # "gelu_new" (tanh approximation) or "relu"
    layer_norm_epsilon: float


def load_t5_config(path: Path) -> T5Config:
    path = Path(path)
    r = _Reader(path, read_json(path))
    arch = r.get("architectures", ["T5EncoderModel"], list) or ["T5EncoderModel"]
    # (UMT5EncoderModel, with a relative bias per layer, is another computation: refused here too)
    if arch[0] not in ("T5EncoderModel", "T5Model", "T5ForConditionalGeneration"):
        raise UnsupportedConfigError(path, "architectures", arch[0], "T5EncoderModel")
    ff = r.get("feed_forward_proj", "relu", str)
    if ff not in T5_FEED_FORWARD:
        raise UnsupportedConfigError(path, "feed_forward_proj", ff, ", ".join(T5_FEED_FORWARD))
    gated, act = T5_FEED_FORWARD[ff]
    heads = r.require("num_heads", int)
    buckets = r.get("relative_attention_num_buckets", 32, int)
    if buckets < 4 or buckets % 4:
        raise ConfigError(path, "relative_attention_num_buckets", f"expected a multiple of 4 >= 4, got {buckets}")
    return T5Config(
        path=path,
        vocab_size=r.require("vocab_size", int),
        d_model=r.require("d_model", int),
        d_kv=r.require("d_kv", int),
        d_ff=r.require("d_ff", int),
        num_layers=r.require("num_layers", int),
        num_heads=heads,
        relative_attention_num_buckets=buckets,
        relative_attention_max_distance=r.get("relative_attention_max_distance", 128, int),
        gated=gated,
        activation=act,
        layer_norm_epsilon=r.get("layer_norm_epsilon", 1e-6, float),
    )


@dataclass(frozen=True)
class FluxConfig:
    """FluxTransformer2DModel options (diffusers 0.42)."""

    path: Path
    patch_size: int
    in_channels: int
    out_channels: int
    num_layers: int
    num_single_layers: int
    attention_head_dim: int
    num_attention_heads: int
    joint_attention_dim: int
    pooled_projection_dim: int
    guidance_embeds: bool
    axes_dims_rope: tuple[int, ...]

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


def load_flux_config(path: Path) -> FluxConfig:
    path = Path(path)
    r = _Reader(path, read_json(path))
    cls = r.get("_class_name", "FluxTransformer2DModel", str)
    if cls != "FluxTransformer2DModel":
        raise UnsupportedConfigError(path, "_class_name", cls, "FluxTransformer2DModel")
    head_dim = r.get("attention_head_dim", 128, int)
    axes = r.get("axes_dims_rope", [16, 56, 56], list)
    if not all(isinstance(a, int) and a > 0 and a % 2 == 0 for a in axes) or sum(axes) != head_dim:
        raise ConfigError(path, "axes_dims_rope", f"{axes}: expected even sizes that add up to attention_head_dim "
                          f"{head_dim}")
    patch = r.only("patch_size", (1,), 1, "patch_size 1 (Flux packs 2x2 latents into tokens itself)")
    cin = r.get("in_channels", 64, int)
    cfg = FluxConfig(
        path=path,
        patch_size=patch,
        in_channels=cin,
        out_channels=r.get("out_channels", None, int) or cin,
        num_layers=r.get("num_layers", 19, int),
        num_single_layers=r.get("num_single_layers", 38, int),
        attention_head_dim=head_dim,
        num_attention_heads=r.get("num_attention_heads", 24, int),
        joint_attention_dim=r.get("joint_attention_dim", 4096, int),
        pooled_projection_dim=r.get("pooled_projection_dim", 768, int),
        guidance_embeds=bool(r.get("guidance_embeds", False, bool)),
        axes_dims_rope=tuple(axes),
    )
    r.refuse_unknown()
    return cfg
