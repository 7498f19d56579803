"""Typed configs of the UNet and the VAE (diffusers' UNet2DConditionModel and AutoencoderKL), read like
sdc.graphs.configs: every option that changes the computation is implemented or refused by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdc.errors import ConfigError, UnsupportedConfigError
from sdc.graphs.configs import _Reader, read_json


# ----------------------------------------------------------------------------- UNet


UNET_DOWN_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D")
UNET_UP_BLOCKS = ("CrossAttnUpBlock2D", "UpBlock2D")


@dataclass(frozen=True)
class UNetConfig:
    """UNet2DConditionModel options, per-block lists already expanded (index = down block index)."""

    path: Path
    in_channels: int
    out_channels: int
    sample_size: int
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    mid_block_type: str | None  # "UNetMidBlock2DCrossAttn" or None
    block_out_channels: tuple[int, ...]
    layers_per_block: tuple[int, ...]
    # per down block: one depth for all its attentions, or one per attention (SDXL's distilled variants, e.g. SSD-1B)
    transformer_layers_per_block: tuple[int | tuple[int, ...], ...]
    num_attention_heads: tuple[int, ...]  # diffusers' `attention_head_dim` means heads (SD 1.x/2.x)
    cross_attention_dim: tuple[int, ...]
    use_linear_projection: bool
    upcast_attention: bool
    flip_sin_to_cos: bool
    freq_shift: float
    norm_num_groups: int
    norm_eps: float
    act_fn: str
    downsample_padding: int
    mid_block_scale_factor: float
    center_input_sample: bool
    conv_in_kernel: int
    conv_out_kernel: int
    time_embedding_dim: int
    addition_embed_type: str | None = None  # "text_time" for SDXL
    addition_time_embed_dim: int | None = None
    projection_class_embeddings_input_dim: int | None = None
    # SDXL: how many time ids the pipeline feeds (6 for a base, 5 with an aesthetic score); set from the
    # pipeline folder by `sdc.graphs.family.resolve_configs`, which also checks the widths add up.
    num_time_ids: int | None = None
    # per up block (in up order), when the up path's depths are not the down path's reversed
    reverse_transformer_layers_per_block: tuple[int | tuple[int, ...], ...] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def text_time(self) -> bool:
        return self.addition_embed_type == "text_time"

    @property
    def text_embeds_dim(self) -> int | None:
        """Width of the pooled text embedding the add embedding expects (SDXL), given `num_time_ids`."""
        if not self.text_time or self.num_time_ids is None:
            return None
        return self.projection_class_embeddings_input_dim - self.num_time_ids * self.addition_time_embed_dim


def load_unet_config(path: Path) -> UNetConfig:
    path = Path(path)
    r = _Reader(path, read_json(path))
    down = tuple(r.require("down_block_types", list))
    up = tuple(r.require("up_block_types", list))
    for key, types, allowed in (("down_block_types", down, UNET_DOWN_BLOCKS), ("up_block_types", up, UNET_UP_BLOCKS)):
        for t in types:
            if t not in allowed:
                raise UnsupportedConfigError(path, key, t, ", ".join(allowed))
    n = len(down)
    if len(up) != n:
        raise ConfigError(path, "up_block_types", f"{len(up)} up blocks for {n} down blocks")
    boc = tuple(r.require("block_out_channels", list))
    if len(boc) != n:
        raise ConfigError(path, "block_out_channels", f"{len(boc)} values for {n} down blocks")
    groups = r.get("norm_num_groups", 32, int)
    for c in boc:
        if groups and c % groups:
            raise ConfigError(path, "norm_num_groups", f"{groups} does not divide block channels {c}")
    if r.get("num_attention_heads", None) is not None:
        # diffusers itself refuses this for UNet2DConditionModel.
        raise UnsupportedConfigError(path, "num_attention_heads", r.data["num_attention_heads"], "attention_head_dim")
    heads = r.per_block("attention_head_dim", r.get("attention_head_dim", 8), n, int)
    addition = r.only("addition_embed_type", (None, "text_time"), None, "none (SD 1.x / 2.x) or text_time (SDXL)")
    for key, default, allowed in (
        ("class_embed_type", None, (None,)),
        ("num_class_embeds", None, (None,)),
        ("encoder_hid_dim", None, (None,)),
        ("encoder_hid_dim_type", None, (None,)),
        ("time_cond_proj_dim", None, (None,)),
        ("timestep_post_act", None, (None,)),
        ("time_embedding_act_fn", None, (None,)),
        ("cross_attention_norm", None, (None,)),
        ("dual_cross_attention", False, (False,)),
        ("resnet_skip_time_act", False, (False,)),
        ("class_embeddings_concat", False, (False,)),
        ("resnet_time_scale_shift", "default", ("default",)),
        ("time_embedding_type", "positional", ("positional",)),
        ("attention_type", "default", ("default",)),
        ("resnet_out_scale_factor", 1.0, (1.0, 1)),
        ("addition_embed_type_num_heads", 64, (64,)),  # only used with addition_embed_type="text_image"
        ("mid_block_only_cross_attention", None, (None, False)),
    ):
        r.only(key, allowed, default)
    oca = r.get("only_cross_attention", False)
    if any(r.per_block("only_cross_attention", oca, n, bool)):
        raise UnsupportedConfigError(path, "only_cross_attention", oca, "only_cross_attention: false")
    mid = r.only("mid_block_type", ("UNetMidBlock2DCrossAttn", None), "UNetMidBlock2DCrossAttn")
    act = r.only("act_fn", ("silu", "swish"), "silu")
    layers = r.per_block("layers_per_block", r.get("layers_per_block", 2), n, int)
    depths = _depths(r, "transformer_layers_per_block", r.get("transformer_layers_per_block", 1), layers)
    reverse = r.get("reverse_transformer_layers_per_block", None)
    if reverse is not None:
        reverse = _depths(r, "reverse_transformer_layers_per_block", reverse, tuple(k + 1 for k in reversed(layers)))
    elif any(isinstance(d, tuple) for d in depths):
        raise ConfigError(path, "reverse_transformer_layers_per_block", "per-attention transformer depths need the "
                          "up path's depths too (diffusers refuses this config as well)", "set it as the checkpoint has it")
    k_in, k_out = r.get("conv_in_kernel", 3, int), r.get("conv_out_kernel", 3, int)
    for key, k in (("conv_in_kernel", k_in), ("conv_out_kernel", k_out)):
        if k % 2 == 0:
            raise UnsupportedConfigError(path, key, k, "odd kernel sizes")
    r.get("dropout", 0.0)  # inference only: dropout is the identity
    time_dim = r.get("addition_time_embed_dim", None, int)
    proj_dim = r.get("projection_class_embeddings_input_dim", None, int)
    if addition == "text_time":
        for key, value in (("addition_time_embed_dim", time_dim), ("projection_class_embeddings_input_dim", proj_dim)):
            if value is None or value <= 0:
                raise ConfigError(path, key, f"addition_embed_type text_time needs a positive {key}, got {value!r}")
    cfg = UNetConfig(
        path=path,
        in_channels=r.get("in_channels", 4, int),
        out_channels=r.get("out_channels", 4, int),
        sample_size=r.get("sample_size", 64, int) or 64,
        down_block_types=down,
        up_block_types=up,
        mid_block_type=mid,
        block_out_channels=boc,
        layers_per_block=layers,
        transformer_layers_per_block=depths,
        reverse_transformer_layers_per_block=reverse,
        num_attention_heads=heads,
        cross_attention_dim=r.per_block("cross_attention_dim", r.get("cross_attention_dim", 1280), n, int),
        use_linear_projection=bool(r.get("use_linear_projection", False, bool)),
        upcast_attention=bool(r.get("upcast_attention", False, bool)),
        flip_sin_to_cos=bool(r.get("flip_sin_to_cos", True, bool)),
        freq_shift=r.get("freq_shift", 0, float),
        norm_num_groups=groups,
        norm_eps=r.get("norm_eps", 1e-5, float),
        act_fn=act,
        downsample_padding=r.get("downsample_padding", 1, int),
        mid_block_scale_factor=r.get("mid_block_scale_factor", 1.0, float),
        center_input_sample=bool(r.get("center_input_sample", False, bool)),
        conv_in_kernel=k_in,
        conv_out_kernel=k_out,
        time_embedding_dim=r.get("time_embedding_dim", None, int) or boc[0] * 4,
        addition_embed_type=addition,
        addition_time_embed_dim=time_dim if addition else None,
        projection_class_embeddings_input_dim=proj_dim if addition else None,
    )
    r.refuse_unknown()
    return cfg


def _depths(r: _Reader, key: str, value: Any, layers: tuple[int, ...]) -> tuple[int | tuple[int, ...], ...]:
    """Transformer depths per block: an int for all, or per block an int or a list with one per attention."""
    def ok(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 1

    if ok(value):
        return (value,) * len(layers)
    if not isinstance(value, list) or len(value) != len(layers):
        raise ConfigError(r.path, key, f"expected an int or {len(layers)} entries, got {value!r}")
    out: list[int | tuple[int, ...]] = []
    for v, k in zip(value, layers):
        if ok(v):
            out.append(v)
        elif isinstance(v, list) and len(v) == k and all(ok(x) for x in v):
            out.append(tuple(v))
        else:
            raise ConfigError(r.path, key, f"entry {v!r}: expected a positive int or {k} of them (one per attention)")
    return tuple(out)


# ----------------------------------------------------------------------------- VAE


@dataclass(frozen=True)
class VAEConfig:
    path: Path
    in_channels: int
    out_channels: int
    latent_channels: int
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    norm_num_groups: int
    act_fn: str
    sample_size: int
    scaling_factor: float
    shift_factor: float | None
    use_quant_conv: bool
    use_post_quant_conv: bool
    mid_block_add_attention: bool
    force_upcast: bool
    latents_mean: tuple[float, ...] | None = None  # per-channel statistics some SDXL-family VAEs carry
    latents_std: tuple[float, ...] | None = None

    @property
    def downscale(self) -> int:
        """Image pixels per latent pixel (8 for SD)."""
        return 2 ** (len(self.block_out_channels) - 1)


def load_vae_config(path: Path) -> VAEConfig:
    path = Path(path)
    r = _Reader(path, read_json(path))
    down = tuple(r.get("down_block_types", ["DownEncoderBlock2D"], list))
    up = tuple(r.get("up_block_types", ["UpDecoderBlock2D"], list))
    for key, types, allowed in (("down_block_types", down, "DownEncoderBlock2D"), ("up_block_types", up, "UpDecoderBlock2D")):
        for t in types:
            if t != allowed:
                raise UnsupportedConfigError(path, key, t, allowed)
    boc = tuple(r.get("block_out_channels", [64], list))
    if not (len(boc) == len(down) == len(up)):
        raise ConfigError(path, "block_out_channels", f"{len(boc)} values for {len(down)} down / {len(up)} up blocks")
    stats = {}
    for key in ("latents_mean", "latents_std"):  # used by the pipelines, not by the VAE computation
        value = r.get(key, None, list)
        latent_channels = r.data.get("latent_channels", 4)
        if value is not None and (len(value) != latent_channels or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise ConfigError(path, key, f"expected {latent_channels} numbers (one per latent channel), got {value!r}")
        stats[key] = tuple(float(v) for v in value) if value is not None else None
    if (stats["latents_mean"] is None) != (stats["latents_std"] is None):
        raise ConfigError(path, "latents_std" if stats["latents_mean"] else "latents_mean",
                          "latents_mean and latents_std come together", "set both or neither")
    cfg = VAEConfig(
        path=path,
        in_channels=r.get("in_channels", 3, int),
        out_channels=r.get("out_channels", 3, int),
        latent_channels=r.get("latent_channels", 4, int),
        down_block_types=down,
        up_block_types=up,
        block_out_channels=boc,
        layers_per_block=r.get("layers_per_block", 1, int),
        norm_num_groups=r.get("norm_num_groups", 32, int),
        act_fn=r.only("act_fn", ("silu", "swish"), "silu"),
        sample_size=r.get("sample_size", 512, int) or 512,
        scaling_factor=r.get("scaling_factor", 0.18215, float),
        shift_factor=r.get("shift_factor", None, float),
        use_quant_conv=bool(r.get("use_quant_conv", True, bool)),
        use_post_quant_conv=bool(r.get("use_post_quant_conv", True, bool)),
        mid_block_add_attention=bool(r.get("mid_block_add_attention", True, bool)),
        force_upcast=bool(r.get("force_upcast", True, bool)),
        **stats,
    )
    r.refuse_unknown()
    return cfg
