"""Pipeline-level facts that no single submodel config holds: widths that must agree across submodels.

A diffusers folder's configs are read one by one (`sdc.graphs.configs`); this module reads them
together. The UNet's cross-attention width must be what the text encoders produce (SDXL: both
encoders' hidden states side by side), and an SDXL UNet's add embedding must take the second
encoder's pooled projection plus the time ids this pipeline feeds (6 for a base, 5 for a refiner
with aesthetic scores). diffusers finds such a mismatch only at the first generation, with a shape
error deep in a matmul; here it is a one-line error before any slow work.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sdc.errors import ConfigError
from sdc.graphs.configs import ModelIndex

BASE_TIME_IDS = 6  # original size (2), crop top-left (2), target size (2)
REFINER_TIME_IDS = 5  # original size (2), crop top-left (2), aesthetic score


def num_time_ids(index: ModelIndex) -> int:
    return REFINER_TIME_IDS if index.requires_aesthetics_score else BASE_TIME_IDS


def resolve_configs(model_dir: Path, index: ModelIndex, names: list[str]) -> dict:
    """The typed config of each submodel in `names`, checked against the rest of the pipeline.

    Every present submodel's config is read (a bad one fails here, first), so the checks see the
    whole pipeline even when only some submodels are built.
    """
    from sdc.graphs import SUBMODELS, load_config

    model_dir = Path(model_dir)
    present = [n for n in SUBMODELS if index.has("vae" if n.startswith("vae_") else n)]
    cfgs = {n: load_config(model_dir, n) for n in dict.fromkeys(present + list(names))}
    if "unet" in cfgs:
        cfgs["unet"] = _check_unet(model_dir, index, cfgs)
    if "transformer" in cfgs:
        _check_flux(model_dir, cfgs)
    return {n: cfgs[n] for n in names}


def _check_flux(model_dir: Path, cfgs: dict) -> None:
    """The transformer reads T5's hidden states, CLIP's pooled output and 2x2-packed VAE latents."""
    from sdc.graphs.configs_flux import T5Config

    tf = cfgs["transformer"]
    path = model_dir / "transformer" / "config.json"
    t5, clip, vae = cfgs.get("text_encoder_2"), cfgs.get("text_encoder"), cfgs.get("vae_decoder")
    if not isinstance(t5, T5Config):
        raise ConfigError(model_dir / "text_encoder_2" / "config.json", "model_type",
                          "Flux's text_encoder_2 must be a T5 encoder")
    if tf.joint_attention_dim != t5.d_model:
        raise ConfigError(path, "joint_attention_dim", f"{tf.joint_attention_dim} != text_encoder_2 d_model {t5.d_model}",
                          "use the text encoders and transformer of one checkpoint")
    if clip is not None and tf.pooled_projection_dim != clip.hidden_size:
        raise ConfigError(path, "pooled_projection_dim", f"{tf.pooled_projection_dim} != text_encoder hidden_size "
                          f"{clip.hidden_size}", "use the text encoders and transformer of one checkpoint")
    if vae is not None and tf.in_channels != 4 * vae.latent_channels:
        raise ConfigError(path, "in_channels", f"{tf.in_channels} != 4 x the VAE's {vae.latent_channels} latent "
                          "channels (Flux packs 2x2 latent patches into tokens)", "use the VAE of this checkpoint")


def _check_unet(model_dir: Path, index: ModelIndex, cfgs: dict):
    unet = cfgs["unet"]
    unet_json = model_dir / "unet" / "config.json"
    encoders = [cfgs[n] for n in ("text_encoder", "text_encoder_2") if n in cfgs]
    if index.family == "sdxl":
        if not unet.text_time:
            raise ConfigError(unet_json, "addition_embed_type", f"{index.pipeline_class} needs an SDXL UNet "
                              "(addition_embed_type text_time)", "use the UNet that came with this pipeline")
        te2 = cfgs.get("text_encoder_2")
        if te2 is None or not te2.with_projection:
            raise ConfigError(model_dir / "text_encoder_2" / "config.json", "architectures",
                              "SDXL's text_encoder_2 must be a CLIPTextModelWithProjection (its pooled projection "
                              "feeds the UNet)")
        n = num_time_ids(index)
        unet = dataclasses.replace(unet, num_time_ids=n)
        if unet.text_embeds_dim != te2.projection_dim:
            kind = "a refiner's 5 (aesthetic score)" if n == REFINER_TIME_IDS else "a base's 6"
            raise ConfigError(
                unet_json, "projection_class_embeddings_input_dim",
                f"{unet.projection_class_embeddings_input_dim} does not fit text_encoder_2's projection_dim "
                f"{te2.projection_dim} + {kind} time ids x addition_time_embed_dim {unet.addition_time_embed_dim} "
                f"= {te2.projection_dim + n * unet.addition_time_embed_dim}",
                "a refiner UNet needs requires_aesthetics_score: true in model_index.json, a base UNet false"
                if abs(unet.text_embeds_dim - te2.projection_dim) == unet.addition_time_embed_dim
                else "use the text encoders and UNet of one checkpoint")
    elif unet.text_time:
        raise ConfigError(unet_json, "addition_embed_type", f"an SDXL UNet (text_time) in a {index.pipeline_class}",
                          "save the pipeline as StableDiffusionXLPipeline")
    width = sum(e.hidden_size for e in encoders)
    if encoders and any(c != width for c in unet.cross_attention_dim):
        names = " + ".join(f"{n} {cfgs[n].hidden_size}" for n in ("text_encoder", "text_encoder_2") if n in cfgs)
        raise ConfigError(unet_json, "cross_attention_dim",
                          f"{list(dict.fromkeys(unet.cross_attention_dim))} does not match the text encoders' "
                          f"hidden size ({names} = {width})", "use the text encoders and UNet of one checkpoint")
    return unet


def pipeline_config(model_dir: Path, name: str):
    """One submodel's config as `resolve_configs` gives it (SDXL time ids filled in): what specs need."""
    from sdc.graphs.configs import load_model_index

    return resolve_configs(model_dir, load_model_index(model_dir), [name])[name]
