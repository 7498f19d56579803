"""Flux.1 (dev and schnell) in numpy, step for step like diffusers 0.42's FluxPipeline / FluxImg2ImgPipeline.

What Flux does differently from Stable Diffusion (sdc.runtime.pipeline):
- text: CLIP's pooled output (`prompt`) and T5's hidden states (`prompt_2`, default `prompt`), the T5 ids
  padded to `max_sequence_length`; no negative prompt unless `true_cfg_scale` > 1 (true classifier-free
  guidance, two predictions per step); dev models take the guidance scale as a transformer input instead
  (`guidance_embeds`), schnell models take none;
- latents: the VAE's 16-channel latents are packed into tokens of 2x2 patches [B, (h/2)(w/2), 4C] (so
  height and width must be multiples of 2 x the VAE's downscale: 16 for Flux), the VAE has a shift
  besides its scale, and `latents=` takes diffusers' packed latents;
- rotary position tables over (0, row, column) ids, built here in float64 (sdc.graphs.flux.rope_tables)
  and fed to the transformer as inputs;
- flow-matching Euler sampling over sigmas linspace(1, 1/n, n), shifted by `mu` from the image sequence
  length when the scheduler config shifts dynamically (dev), or by its fixed shift (schnell).
Image-to-image follows FluxImg2ImgPipeline (its strength rule: t_start = int(n - n * strength)), with one
difference: without height/width the output takes the init image's size (rounded down to the packing
grid), as sdc's other pipelines do, where diffusers resizes every init image to 1024 x 1024.
Random draws follow sdc.runtime.pipeline's order: initial latents [B, C, h, w] (then packed), or for
image-to-image the VAE posterior noise and then the noise `scale_noise` mixes in.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sdc.errors import InputError
from sdc.runtime.pipeline import (Model, PipelineConfig, StableDiffusionPipeline, StepCallback, _check_call,
                                  _check_int, _check_number, _check_strength, _prompts, randn)
from sdc.runtime.pipeline_xl import _second
from sdc.runtime.rope import image_ids, rope_tables

MAX_SEQUENCE_LENGTH = 512  # diffusers' default and its upper bound for max_sequence_length
ROPE_THETA = 10000.0  # diffusers' FluxPosEmbed


def pack_latents(latents: np.ndarray) -> np.ndarray:
    """[B, C, h, w] -> [B, (h/2)(w/2), 4C]: each token a 2x2 patch, channels outermost (diffusers' _pack_latents)."""
    b, c, h, w = latents.shape
    return latents.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), 4 * c)


def unpack_latents(tokens: np.ndarray, h: int, w: int) -> np.ndarray:
    """[B, (h/2)(w/2), 4C] -> [B, C, h, w], the inverse of pack_latents for a latent grid h x w."""
    b, _, ch = tokens.shape
    return tokens.reshape(b, h // 2, w // 2, ch // 4, 2, 2).transpose(0, 3, 1, 4, 2, 5).reshape(b, ch // 4, h, w)


def calculate_shift(image_seq_len: int, cfg: Mapping[str, Any]) -> float:
    """FluxPipeline's `mu`: linear in the image sequence length between the scheduler config's two anchors."""
    base_len, max_len = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
    base_shift, max_shift = cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15)
    m = (max_shift - base_shift) / (max_len - base_len)
    return image_seq_len * m + base_shift - m * base_len


class FluxPipeline(StableDiffusionPipeline):
    """Flux text-to-image and image-to-image over numpy submodels (see the module docstring)."""

    REQUIRED_MODELS = ("text_encoder", "text_encoder_2", "transformer", "vae_decoder")

    def __init__(self, models: Mapping[str, Model], tokenizers: Mapping[str, Any], scheduler_config: Mapping[str, Any],
                 config: PipelineConfig | None = None):
        """`tokenizers`: {"text_encoder": CLIP tokenizer, "text_encoder_2": T5 tokenizer}."""
        super().__init__(models, tokenizers.get("text_encoder"), scheduler_config, config)
        self.tokenizers = dict(tokenizers)
        for name in ("text_encoder", "text_encoder_2"):
            if self.tokenizers.get(name) is None:
                raise InputError(f"submodel {name} needs a tokenizer")

    def _check_config(self) -> None:
        c = self.config
        if c.unet_in_channels != 4 * c.latent_channels:
            raise InputError(f"the transformer takes {c.unet_in_channels} channels per token, but 2x2 patches of the "
                             f"VAE's {c.latent_channels} latent channels are {4 * c.latent_channels}")
        if not c.rope_axes_dims:
            raise InputError("a Flux pipeline needs the transformer's rotary axes (rope_axes_dims)")

    @property
    def multiple(self) -> int:
        """Height and width must be multiples of this: the VAE's downscale times the 2x2 packing."""
        return 2 * self.config.vae_scale_factor

    def make_scheduler(self, name: str | None = None):
        from sdc.runtime.schedulers import from_config

        sched = from_config(self.scheduler_config, name or self.config.default_scheduler)
        if sched.uses_betas:
            raise InputError(f"{sched.class_name} samples a DDPM noise schedule; Flux's transformer predicts a flow "
                             "velocity: use FlowMatchEulerDiscreteScheduler (the bundle's own scheduler)")
        return sched

    # ------------------------------------------------------------------ pieces

    def encode_prompt_flux(self, prompts: list[str], prompts_2: list[str], max_sequence_length: int
                           ) -> tuple[np.ndarray, np.ndarray]:
        """(T5 hidden states [B, max_sequence_length, D], CLIP pooled output [B, P]) for B prompts."""
        clip_ids = np.asarray(self.tokenizers["text_encoder"](prompts), dtype=np.int64)
        pooled = np.asarray(self._run("text_encoder", input_ids=clip_ids)["pooler_output"], dtype=np.float32)
        t5_ids = np.asarray(self.tokenizers["text_encoder_2"](prompts_2, max_length=max_sequence_length), dtype=np.int64)
        embeds = np.asarray(self._run("text_encoder_2", input_ids=t5_ids)["last_hidden_state"], dtype=np.float32)
        return embeds, pooled

    def rope(self, text_tokens: int, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
        """Rotary tables for [text; image] tokens: text ids are all zero, image ids (0, row, column)."""
        ids = np.concatenate([np.zeros((text_tokens, 3), np.float32), image_ids(rows, cols)])
        return rope_tables(ids, tuple(self.config.rope_axes_dims), ROPE_THETA)

    def _predict(self, model_input: np.ndarray, t: Any, conditioning: Mapping[str, np.ndarray]) -> np.ndarray:
        """One transformer call: the flow velocity at sigma = t / 1000 (diffusers divides the timestep in float32)."""
        sigma = np.full((model_input.shape[0],), t, dtype=np.float32) / np.float32(1000.0)
        return self._run("transformer", hidden_states=model_input, timestep=sigma, **conditioning)["out_sample"]

    def _timesteps(self, sched, steps: int, sigmas: Any, image_seq_len: int) -> np.ndarray:
        """diffusers' retrieve_timesteps with custom sigmas linspace(1, 1/n, n) and mu from the sequence length."""
        if sigmas is None:
            sigmas = np.linspace(1.0, 1.0 / steps, steps)
        else:
            sigmas = np.asarray(sigmas, dtype=np.float64)
            if sigmas.ndim != 1 or len(sigmas) != steps:
                raise InputError(f"sigmas must be a list of num_inference_steps ({steps}) numbers")
        sched.set_timesteps(steps, sigmas=sigmas, mu=calculate_shift(image_seq_len, sched.config))
        return np.asarray(sched.timesteps)

    # ------------------------------------------------------------------ generation

    def __call__(  # noqa: PLR0913 - diffusers' keyword arguments, by name
        self,
        prompt: str | Sequence[str],
        prompt_2: str | Sequence[str] | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        negative_prompt_2: str | Sequence[str] | None = None,
        true_cfg_scale: float = 1.0,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 28,
        sigmas: Sequence[float] | None = None,
        guidance_scale: float = 3.5,
        seed: int | None = None,
        latents: np.ndarray | None = None,
        image: Any = None,
        strength: float = 0.6,
        max_sequence_length: int = MAX_SEQUENCE_LENGTH,
        scheduler: str | None = None,
        output_type: str = "pil",
        num_images_per_prompt: int = 1,
        callback: StepCallback | None = None,
    ):
        """Generate images; returns PIL images, NHWC float32 in [0, 1], or packed latents (`output_type="latent"`).

        `guidance_scale` feeds a dev model's guidance embedding (schnell ignores it); `true_cfg_scale` > 1
        with a negative prompt runs true classifier-free guidance. `latents` (text-to-image) are diffusers'
        packed latents [B, (H/16)(W/16), 64] for Flux. `image` (image-to-image) is what
        StableDiffusionPipeline takes, or NCHW latents with the VAE's latent channels, used as they are.
        """
        self.last_timings = {}
        t_start = time.perf_counter()
        c = self.config
        prompts, negatives = _prompts(prompt, negative_prompt)
        prompts_2 = _second("prompt_2", prompt_2, len(prompts)) or prompts
        steps = _check_int("num_inference_steps", num_inference_steps, 1)
        per_prompt = _check_int("num_images_per_prompt", num_images_per_prompt, 1)
        _check_call(c, output_type, seed, image, latents, height, width, self.multiple,
                    f" (the VAE's downscale {c.vae_scale_factor} x 2 for Flux's 2x2 latent patches)")
        guidance = _check_number("guidance_scale", guidance_scale)
        true_cfg = _check_number("true_cfg_scale", true_cfg_scale)
        limit = min(MAX_SEQUENCE_LENGTH, self.tokenizers["text_encoder_2"].model_max_length)
        seq_len = _check_int("max_sequence_length", max_sequence_length, 1)
        if seq_len > limit:
            raise InputError(f"max_sequence_length {seq_len} is above the T5 tokenizer's {limit}")
        if image is not None:
            _check_strength(strength)
        do_true_cfg = true_cfg > 1.0 and negative_prompt is not None  # as diffusers: both, or no negative branch
        negatives_2 = (_second("negative_prompt_2", negative_prompt_2, len(prompts)) or negatives) if do_true_cfg else None

        batch = len(prompts) * per_prompt
        rng = np.random.default_rng(seed)
        sched = self.make_scheduler(scheduler)
        if image is not None:
            init_latents, init_pixels = self._init_image(image, batch, height, width, self.multiple)
            if init_latents is not None and (init_latents.shape[2] % 2 or init_latents.shape[3] % 2):
                raise InputError(f"init latents of shape {init_latents.shape}: the latent grid must be even")
            lh, lw = ((init_latents.shape[2], init_latents.shape[3]) if init_latents is not None else
                      (init_pixels.shape[2] // c.vae_scale_factor, init_pixels.shape[3] // c.vae_scale_factor))
            timesteps = self._timesteps(sched, steps, sigmas, (lh // 2) * (lw // 2))
            # FluxImg2ImgPipeline.get_timesteps (SD3's rule: the float product, truncated after subtracting)
            t_begin = int(max(steps - min(steps * float(strength), steps), 0))
            timesteps = timesteps[t_begin:]
            sched.set_begin_index(t_begin)
            if len(timesteps) < 1:
                raise InputError(f"strength {strength} x num_inference_steps {steps} leaves no denoising step")
            z = init_latents if init_latents is not None else self.encode_image(init_pixels, rng)
            z = np.concatenate([z] * (batch // z.shape[0]), axis=0)  # tiled, as diffusers
            noise = randn(rng, z.shape)
            latents = pack_latents(np.asarray(sched.add_noise(z, noise, np.repeat(timesteps[:1], batch)), np.float32))
        else:
            h = c.default_height if height is None else int(height)
            w = c.default_width if width is None else int(width)
            if h % self.multiple or w % self.multiple:
                raise InputError(f"the bundle's default size {h}x{w} is not a multiple of {self.multiple}; "
                                 "give height and width")
            lh, lw = h // c.vae_scale_factor, w // c.vae_scale_factor
            packed = (batch, (lh // 2) * (lw // 2), 4 * c.latent_channels)
            if latents is not None:
                latents = np.asarray(latents, dtype=np.float32)
                if latents.shape != packed:
                    raise InputError(f"latents have shape {latents.shape}; Flux takes packed latents {packed} for "
                                     f"{batch} images of {h}x{w} (diffusers' [B, (H/{self.multiple})(W/{self.multiple}), "
                                     f"{4 * c.latent_channels}])")
            else:
                latents = pack_latents(randn(rng, (batch, c.latent_channels, lh, lw)))
            timesteps = self._timesteps(sched, steps, sigmas, packed[1])
            sched.set_begin_index(0)

        texts, texts_2 = (negatives + prompts, negatives_2 + prompts_2) if do_true_cfg else (prompts, prompts_2)
        embeds, pooled = self.encode_prompt_flux(texts, texts_2, seq_len)
        embeds, pooled = np.repeat(embeds, per_prompt, axis=0), np.repeat(pooled, per_prompt, axis=0)
        cos, sin = self.rope(embeds.shape[1], lh // 2, lw // 2)
        conditioning = dict(encoder_hidden_states=embeds, pooled_projections=pooled, rope_cos=cos, rope_sin=sin)
        if c.guidance_embeds:
            conditioning["guidance"] = np.full((embeds.shape[0],), guidance, dtype=np.float32)

        latents = self._denoise(sched, timesteps, latents, batch, do_true_cfg, true_cfg, rng, callback, **conditioning)
        if output_type == "latent":
            return self._output(latents, output_type, t_start)
        return self._output(unpack_latents(latents, lh, lw), output_type, t_start)
