"""Paddle submodels built from diffusers checkpoints: `load(model_dir, name)` is the public entry point.

Each module's `forward` takes the inputs of DESIGN.md's contract table positionally, in order, and
returns the outputs in order (a tuple when there are several). Paddle is imported lazily so that
`import sdc.graphs.configs` stays cheap.
"""

from __future__ import annotations

from pathlib import Path

from sdc.errors import ConfigError

SUBMODELS = ("text_encoder", "text_encoder_2", "unet", "transformer", "vae_encoder", "vae_decoder")


def folder_of(name: str) -> str:
    """The diffusers folder a submodel's config and weights live in."""
    return "vae" if name.startswith("vae_") else name


def load_config(model_dir: Path, name: str):
    """The typed config of submodel `name` of a diffusers pipeline folder."""
    if name not in SUBMODELS:
        raise ConfigError(model_dir, None, f"unknown submodel {name!r}", f"choose one of {', '.join(SUBMODELS)}")
    return _parse_config(Path(model_dir) / folder_of(name) / "config.json", name)


def _parse_config(path: Path, name: str):
    from sdc.graphs import configs, configs_flux, configs_unet

    if name.startswith("text_encoder"):
        if configs.read_json(path).get("model_type") in ("t5", "umt5"):  # Flux's text_encoder_2
            return configs_flux.load_t5_config(path)
        return configs.load_clip_config(path)
    if name == "unet":
        return configs_unet.load_unet_config(path)
    if name == "transformer":
        return configs_flux.load_flux_config(path)
    return configs_unet.load_vae_config(path)


def build(name: str, cfg):
    """An uninitialised Paddle Layer for submodel `name` (random weights), in eval mode."""
    from sdc.graphs.configs_flux import T5Config

    if isinstance(cfg, T5Config):
        from sdc.graphs.t5 import T5EncoderModel as cls
    elif name.startswith("text_encoder"):
        from sdc.graphs.clip import CLIPTextModel as cls
    elif name == "unet":
        from sdc.graphs.unet import UNet2DConditionModel as cls
    elif name == "transformer":
        from sdc.graphs.flux import FluxTransformer2DModel as cls
    elif name == "vae_encoder":
        from sdc.graphs.vae import VaeEncoder as cls
    elif name == "vae_decoder":
        from sdc.graphs.vae import VaeDecoder as cls
    else:
        raise ValueError(name)
    layer = cls(cfg)
    layer.eval()
    return layer


def _ignore_for(name: str):
    if name == "vae_encoder":
        return lambda k: not k.startswith(("encoder.", "quant_conv."))
    if name == "vae_decoder":
        return lambda k: not k.startswith(("decoder.", "post_quant_conv."))
    return lambda k: False


def load(model_dir, name: str, dtype: str = "float32", allow_pickle: bool = False):
    """Submodel `name` of the diffusers folder `model_dir` as a Paddle Layer with its weights loaded."""
    model_dir = Path(model_dir)
    load_config(model_dir, name)  # names the pipeline folder when `name` is unknown
    return load_folder(model_dir / folder_of(name), name, dtype, allow_pickle)


def load_folder(folder, name: str, dtype: str = "float32", allow_pickle: bool = False):
    """Submodel `name` from one submodel folder (config.json + weights), e.g. a standalone UNet or VAE."""
    import paddle

    from sdc.graphs.weights import assign_weights, find_weight_files, read_weights

    folder = Path(folder)
    cfg = _parse_config(folder / "config.json", name)
    files = find_weight_files(folder, allow_pickle=allow_pickle)
    tensors = read_weights(files)
    layer = build(name, cfg)
    if dtype != "float32":
        layer.to(dtype=dtype)
    with paddle.no_grad():
        assign_weights(layer, tensors, str(folder), ignore=_ignore_for(name), dtype=dtype)
    return layer
