"""Typed configs parsed from a diffusers folder: model_index.json and each submodel's config.json.

Every option that changes the computation is either implemented (and parsed here into a typed,
per-block-normalised field) or refused with `UnsupportedConfigError` naming file, field and value.
Nothing is silently ignored: an option we do not know, set to a non-trivial value, is refused too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdc.errors import ConfigError, UnsupportedConfigError

SUPPORTED_PIPELINES = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionImg2ImgPipeline": "sd",
    "StableDiffusionInpaintPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",  # the refiner's class; a base saved as img2img too
    "FluxPipeline": "flux",
    "FluxImg2ImgPipeline": "flux",
}
# Components a pipeline folder must have, per family. An SDXL refiner has no `text_encoder`/`tokenizer`.
REQUIRED_COMPONENTS = {
    "sd": ("text_encoder", "tokenizer", "unet", "vae", "scheduler"),
    "sdxl": ("text_encoder_2", "tokenizer_2", "unet", "vae", "scheduler"),
    "flux": ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "transformer", "vae", "scheduler"),
}
# Pipeline options of model_index.json that change what the pipeline computes (type-checked).
PIPELINE_OPTIONS = {"force_zeros_for_empty_prompt": bool, "requires_aesthetics_score": bool}


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object, turning every failure into a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, None, "file not found", "is this a diffusers-format model folder?")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(path, None, f"not valid JSON ({e})", "restore the file from the original checkpoint")
    if not isinstance(data, dict):
        raise ConfigError(path, None, "expected a JSON object")
    return data


class _Reader:
    """Reads fields of one config dict with type checks; records which keys were consumed."""

    def __init__(self, path: Path, data: dict[str, Any]):
        self.path, self.data, self.used = path, data, set()

    def get(self, key: str, default: Any, types: tuple[type, ...] | type | None = None) -> Any:
        self.used.add(key)
        value = self.data.get(key, default)
        if value is None or types is None:
            return value
        types = types if isinstance(types, tuple) else (types,)
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = "/".join(t.__name__ for t in types)
            raise ConfigError(self.path, key, f"expected {names}, got {value!r}")
        return value

    def require(self, key: str, types: tuple[type, ...] | type) -> Any:
        if key not in self.data:
            raise ConfigError(self.path, key, "missing required field", "copy it from the original config.json")
        return self.get(key, None, types)

    def only(self, key: str, allowed: tuple, default: Any, supported: str = "") -> Any:
        """A field whose other valid diffusers values sdc does not implement."""
        value = self.get(key, default)
        if value not in allowed:
            raise UnsupportedConfigError(self.path, key, value, supported or f"{key} in {list(allowed)}")
        return value

    def per_block(self, key: str, value: Any, n: int, types: type) -> tuple:
        """Expand an int-or-list option to one value per block, checking list length."""
        def ok(v: Any) -> bool:
            return isinstance(v, types) and (types is bool or not isinstance(v, bool))

        if isinstance(value, (list, tuple)):
            if len(value) != n or not all(ok(v) for v in value):
                raise ConfigError(self.path, key, f"expected {n} values of type {types.__name__}, got {value!r}")
            return tuple(value)
        if not ok(value):
            raise ConfigError(self.path, key, f"expected {types.__name__} or list, got {value!r}")
        return (value,) * n

    def refuse_unknown(self) -> None:
        """Unknown options set to something non-trivial would change the computation: refuse them."""
        for key, value in self.data.items():
            if key.startswith("_") or key in self.used:
                continue
            if value in (None, False, [], {}, 0.0) and not isinstance(value, str):
                continue
            raise UnsupportedConfigError(self.path, key, value, "the options listed in sdc/graphs/configs.py")


# ----------------------------------------------------------------------------- model_index.json


@dataclass(frozen=True)
class ModelIndex:
    """The pipeline folder: its class, family and which component folders exist."""

    root: Path
    pipeline_class: str
    family: str  # "sd" for Stable Diffusion 1.x / 2.x, "sdxl" for SDXL base and refiner
    components: dict[str, tuple[str, str]]  # folder -> (library, class)
    options: dict[str, Any] = field(default_factory=dict)  # PIPELINE_OPTIONS present in model_index.json

    def has(self, name: str) -> bool:
        return name in self.components

    @property
    def force_zeros_for_empty_prompt(self) -> bool:
        """SDXL: no negative prompt means zero embeddings, not the encoded empty string (diffusers' default: on)."""
        return bool(self.options.get("force_zeros_for_empty_prompt", self.family == "sdxl"))

    @property
    def requires_aesthetics_score(self) -> bool:
        """SDXL refiner: time ids carry an aesthetic score (5 of them) instead of the target size (6)."""
        return bool(self.options.get("requires_aesthetics_score", False))


def load_model_index(model_dir: Path) -> ModelIndex:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ConfigError(model_dir, None, "model folder not found", "pass a diffusers-format folder")
    path = model_dir / "model_index.json"
    data = read_json(path)
    cls = data.get("_class_name")
    if not isinstance(cls, str):
        raise ConfigError(path, "_class_name", "missing pipeline class", "is this a diffusers pipeline folder?")
    if cls not in SUPPORTED_PIPELINES:
        raise UnsupportedConfigError(path, "_class_name", cls, ", ".join(sorted(SUPPORTED_PIPELINES)))
    components = {}
    for key, value in data.items():
        if key.startswith("_") or not isinstance(value, list) or len(value) != 2:
            continue
        if value[0] is None or value[1] is None:
            continue  # optional component left out (e.g. safety_checker)
        components[key] = (str(value[0]), str(value[1]))
    family = SUPPORTED_PIPELINES[cls]
    for required in REQUIRED_COMPONENTS[family]:
        if required not in components:
            raise ConfigError(path, required, "component missing", f"a {cls} folder needs it")
        if not (model_dir / required).is_dir():
            raise ConfigError(model_dir / required, None, "component folder missing",
                              f"model_index.json lists {required}: restore the folder from the original checkpoint")
    if family == "sdxl" and ("text_encoder" in components) != ("tokenizer" in components):
        raise ConfigError(path, "tokenizer" if "text_encoder" in components else "text_encoder", "component missing",
                          "SDXL's first text encoder and its tokenizer come together")
    options = {}
    for key, kind in PIPELINE_OPTIONS.items():
        if key in data:
            if not isinstance(data[key], kind):
                raise ConfigError(path, key, f"expected {kind.__name__}, got {data[key]!r}")
            options[key] = data[key]
    return ModelIndex(model_dir, cls, family, components, options)


# ----------------------------------------------------------------------------- CLIP text encoder


@dataclass(frozen=True)
class CLIPTextConfig:
    path: Path
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int
    hidden_act: str  # "quick_gelu" (SD 1.x, CLIP ViT-L) or "gelu" (SD 2.x, OpenCLIP)
    layer_norm_eps: float
    eos_token_id: int
    with_projection: bool  # CLIPTextModelWithProjection (SDXL text_encoder_2): adds text_embeds
    projection_dim: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def load_clip_config(path: Path) -> CLIPTextConfig:
    path = Path(path)
    r = _Reader(path, read_json(path))
    arch = r.get("architectures", ["CLIPTextModel"], list) or ["CLIPTextModel"]
    if arch[0] not in ("CLIPTextModel", "CLIPTextModelWithProjection"):
        raise UnsupportedConfigError(path, "architectures", arch[0], "CLIPTextModel, CLIPTextModelWithProjection")
    hidden = r.require("hidden_size", int)
    heads = r.require("num_attention_heads", int)
    if hidden % heads:
        raise ConfigError(path, "num_attention_heads", f"{heads} does not divide hidden_size {hidden}")
    # transformers configs carry many generic keys (dropout, torch_dtype, ...): not refused.
    return CLIPTextConfig(
        path=path,
        vocab_size=r.require("vocab_size", int),
        hidden_size=hidden,
        intermediate_size=r.require("intermediate_size", int),
        num_hidden_layers=r.require("num_hidden_layers", int),
        num_attention_heads=heads,
        max_position_embeddings=r.get("max_position_embeddings", 77, int),
        hidden_act=r.only("hidden_act", ("quick_gelu", "gelu"), "quick_gelu"),
        layer_norm_eps=r.get("layer_norm_eps", 1e-5, float),
        eos_token_id=r.get("eos_token_id", 2, int),
        with_projection=arch[0] == "CLIPTextModelWithProjection",
        projection_dim=r.get("projection_dim", hidden, int),
    )
