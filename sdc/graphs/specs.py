"""Each submodel's I/O contract: names, dtypes, named dynamic dims, dummy inputs, validation tolerance.

Tracing builds its InputSpecs from here, export names the ONNX axes from here, validation draws its
inputs from here, and the runtime reads the same contract back from the manifest. A dynamic dim is a
string; the same name means the same size everywhere in one bundle (`height`/`width` are image
pixels, `latent_height`/`latent_width` latent pixels).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sdc.graphs.configs import CLIPTextConfig
from sdc.graphs.configs_flux import FluxConfig, T5Config
from sdc.graphs.configs_unet import UNetConfig, VAEConfig

Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32 / int64
    shape: tuple[Dim, ...]

    def concrete(self, dims: dict[str, int]) -> tuple[int, ...]:
        return tuple(d if isinstance(d, int) else dims[d] for d in self.shape)

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class SubmodelSpec:
    """The contract of one submodel, plus what validation needs to exercise it."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # Validation passes when max|onnx - paddle| <= atol + rtol * max|paddle| for every output.
    atol: float
    rtol: float
    # At least two sizes for every dynamic dim: validation runs one case per entry.
    sample_dims: tuple[dict[str, int], ...]
    extra: dict = field(default_factory=dict)  # family facts dummy inputs need (token ids, ...)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def dynamic_dims(self) -> set[str]:
        return {d for t in self.inputs + self.outputs for d in t.shape if isinstance(d, str)}

    def dummy_inputs(self, dims: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
        """Inputs of the given sizes with realistic value ranges (token ids, timesteps, images in [-1, 1])."""
        rng = np.random.default_rng(seed)
        out = {}
        if self.name == "transformer":  # Flux: sigma-scale timesteps, real rotary tables for (0, row, col) ids
            return self._flux_inputs(dims, rng)
        for t in self.inputs:
            shape = t.concrete(dims)
            if t.name == "input_ids":
                out[t.name] = _token_ids(shape, rng, **self.extra)
            elif t.name == "timestep":
                out[t.name] = rng.uniform(0, 1000, shape).astype(np.float32)
            elif t.name == "time_ids":  # SDXL sizes, crops and aesthetic scores: pixels, or 0 .. 10
                out[t.name] = np.round(rng.uniform(0, 1024, shape)).astype(np.float32)
            elif t.name == "sample" and self.name == "vae_encoder":
                out[t.name] = rng.uniform(-1, 1, shape).astype(np.float32)
            else:
                out[t.name] = rng.standard_normal(shape).astype(t.dtype)
        return out

    def _flux_inputs(self, dims: dict[str, int], rng) -> dict[str, np.ndarray]:
        from sdc.runtime.rope import rope_tables

        out = {}
        for t in self.inputs:
            if t.name.startswith("rope_") or t.name in ("timestep", "guidance"):
                continue
            out[t.name] = rng.standard_normal(t.concrete(dims)).astype(np.float32)
        n_img, n_txt, b = dims["image_tokens"], dims["text_tokens"], dims["batch"]
        out["rope_cos"], out["rope_sin"] = rope_tables(sample_ids(n_txt, n_img), tuple(self.extra["axes_dims_rope"]))
        out["timestep"] = rng.uniform(0.05, 1.0, b).astype(np.float32)
        if any(t.name == "guidance" for t in self.inputs):
            out["guidance"] = rng.uniform(1.0, 5.0, b).astype(np.float32)
        return {t.name: out[t.name] for t in self.inputs}

    def to_json(self) -> dict:
        return {
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }


def sample_ids(text_tokens: int, image_tokens: int) -> np.ndarray:
    """(0, row, column) ids of sample inputs: text ids zero, image tokens on a near-square grid, row-major
    (the bench feeds diffusers the same ids as img_ids / txt_ids)."""
    ids = np.zeros((text_tokens + image_tokens, 3), np.float32)
    cols = max(1, int(np.sqrt(image_tokens)))
    ids[text_tokens:, 1], ids[text_tokens:, 2] = np.arange(image_tokens) // cols, np.arange(image_tokens) % cols
    return ids


def _token_ids(shape: tuple[int, int], rng, vocab_size: int, bos: int | None, eos: int, pad: int) -> np.ndarray:
    """BOS (CLIP; T5 has none), random words, EOS, then padding: what a tokenizer really feeds the encoder."""
    b, s = shape
    ids = np.full((b, s), pad, dtype=np.int64)
    start = 0 if bos is None else 1
    low, high = (0, min(vocab_size, bos)) if bos is not None else (max(eos, pad) + 1, vocab_size)
    for i in range(b):
        n = int(rng.integers(0, max(1, s - 1 - start)))
        if bos is not None:
            ids[i, 0] = bos
        ids[i, start : start + n] = rng.integers(low, high, n)
        ids[i, min(start + n, s - 1)] = eos
    return ids


def clip_spec(cfg: CLIPTextConfig, name: str = "text_encoder") -> SubmodelSpec:
    hs = ("batch", "sequence", cfg.hidden_size)
    outputs = [TensorSpec("last_hidden_state", "float32", hs), TensorSpec("pooler_output", "float32", ("batch", cfg.hidden_size))]
    if cfg.with_projection:
        outputs.append(TensorSpec("text_embeds", "float32", ("batch", cfg.projection_dim)))
    outputs.append(TensorSpec("hidden_states_penultimate", "float32", hs))
    s = cfg.max_position_embeddings
    return SubmodelSpec(
        name=name,
        inputs=(TensorSpec("input_ids", "int64", ("batch", "sequence")),),
        outputs=tuple(outputs),
        atol=1e-4,
        rtol=1e-4,
        sample_dims=({"batch": 1, "sequence": s}, {"batch": 2, "sequence": min(s, 16)}),
        extra=dict(vocab_size=cfg.vocab_size, bos=min(49406, cfg.vocab_size - 2), eos=min(49407, cfg.vocab_size - 1),
                   pad=min(49407, cfg.vocab_size - 1)),
    )


def unet_multiple(cfg: UNetConfig) -> int:
    """Latent sizes must be multiples of this for the skip connections to line up."""
    return 2 ** (len(cfg.block_out_channels) - 1)


def unet_spec(cfg: UNetConfig) -> SubmodelSpec:
    m = unet_multiple(cfg)
    inputs = [
        TensorSpec("sample", "float32", ("batch", cfg.in_channels, "latent_height", "latent_width")),
        TensorSpec("timestep", "float32", ("batch",)),
        TensorSpec("encoder_hidden_states", "float32", ("batch", "sequence", cfg.cross_attention_dim[0])),
    ]
    if cfg.text_time:
        if cfg.num_time_ids is None:
            raise ValueError("an SDXL UNet's spec needs num_time_ids (sdc.graphs.family.resolve_configs sets it)")
        # Static widths: the add embedding's first Linear fixes text_embeds + time-id sinusoids together.
        inputs += [TensorSpec("text_embeds", "float32", ("batch", cfg.text_embeds_dim)),
                   TensorSpec("time_ids", "float32", ("batch", cfg.num_time_ids))]
    return SubmodelSpec(
        name="unet",
        inputs=tuple(inputs),
        outputs=(TensorSpec("out_sample", "float32", ("batch", cfg.out_channels, "latent_height", "latent_width")),),
        atol=1e-4,
        rtol=1e-4,
        sample_dims=(
            {"batch": 1, "latent_height": 2 * m, "latent_width": 2 * m, "sequence": 77},
            {"batch": 2, "latent_height": 2 * m, "latent_width": 3 * m, "sequence": 16},
        ),
    )


def vae_encoder_spec(cfg: VAEConfig) -> SubmodelSpec:
    d = cfg.downscale
    return SubmodelSpec(
        name="vae_encoder",
        inputs=(TensorSpec("sample", "float32", ("batch", cfg.in_channels, "height", "width")),),
        outputs=(TensorSpec("latent_parameters", "float32", ("batch", 2 * cfg.latent_channels, "latent_height", "latent_width")),),
        atol=1e-4,
        rtol=1e-4,
        sample_dims=({"batch": 1, "height": 4 * d, "width": 4 * d}, {"batch": 2, "height": 4 * d, "width": 6 * d}),
    )


def vae_decoder_spec(cfg: VAEConfig) -> SubmodelSpec:
    return SubmodelSpec(
        name="vae_decoder",
        inputs=(TensorSpec("latent_sample", "float32", ("batch", cfg.latent_channels, "latent_height", "latent_width")),),
        outputs=(TensorSpec("sample", "float32", ("batch", cfg.out_channels, "height", "width")),),
        atol=1e-4,
        rtol=1e-4,
        sample_dims=({"batch": 1, "latent_height": 4, "latent_width": 4}, {"batch": 2, "latent_height": 4, "latent_width": 6}),
    )


def t5_spec(cfg: T5Config, name: str = "text_encoder_2") -> SubmodelSpec:
    """Flux's T5 encoder: token ids of any length (the pipeline pads to max_sequence_length)."""
    return SubmodelSpec(
        name=name,
        inputs=(TensorSpec("input_ids", "int64", ("batch", "sequence")),),
        outputs=(TensorSpec("last_hidden_state", "float32", ("batch", "sequence", cfg.d_model)),),
        atol=1e-4,
        rtol=1e-4,
        sample_dims=({"batch": 1, "sequence": 77}, {"batch": 2, "sequence": 16}),
        extra=dict(vocab_size=cfg.vocab_size, bos=None, eos=1, pad=0),  # T5: </s> = 1, <pad> = 0
    )


def transformer_spec(cfg: FluxConfig) -> SubmodelSpec:
    """Flux's transformer over packed latent tokens; the rotary tables are inputs (see sdc.graphs.flux)."""
    d = cfg.attention_head_dim
    inputs = [
        TensorSpec("hidden_states", "float32", ("batch", "image_tokens", cfg.in_channels)),
        TensorSpec("encoder_hidden_states", "float32", ("batch", "text_tokens", cfg.joint_attention_dim)),
        TensorSpec("pooled_projections", "float32", ("batch", cfg.pooled_projection_dim)),
        TensorSpec("timestep", "float32", ("batch",)),
        TensorSpec("rope_cos", "float32", ("tokens", d)),  # tokens = text_tokens + image_tokens
        TensorSpec("rope_sin", "float32", ("tokens", d)),
    ]
    if cfg.guidance_embeds:
        inputs.append(TensorSpec("guidance", "float32", ("batch",)))
    return SubmodelSpec(
        name="transformer",
        inputs=tuple(inputs),
        outputs=(TensorSpec("out_sample", "float32", ("batch", "image_tokens", cfg.out_channels)),),
        atol=1e-4,
        rtol=1e-4,
        sample_dims=({"batch": 1, "image_tokens": 16, "text_tokens": 16, "tokens": 32},
                     {"batch": 2, "image_tokens": 15, "text_tokens": 8, "tokens": 23}),
        extra=dict(axes_dims_rope=cfg.axes_dims_rope),
    )


def spec_for(name: str, cfg) -> SubmodelSpec:
    if isinstance(cfg, FluxConfig):
        return transformer_spec(cfg)
    if isinstance(cfg, T5Config):
        return t5_spec(cfg, name)
    if name.startswith("text_encoder"):
        return clip_spec(cfg, name)
    return {"unet": unet_spec, "vae_encoder": vae_encoder_spec, "vae_decoder": vae_decoder_spec}[name](cfg)
