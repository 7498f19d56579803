"""Stable Diffusion XL (base and refiner) in numpy, step for step like diffusers 0.42.

`StableDiffusionXLPipeline.__call__` follows diffusers' `StableDiffusionXLPipeline` when no `image`
is given and `StableDiffusionXLImg2ImgPipeline` when one is (pixels, or 4-channel latents such as a
base's `output_type="latent"` result for the refiner). What SDXL adds over SD (sdc.runtime.pipeline):
- two CLIP encoders: prompt embeddings are both encoders' penultimate hidden states side by side, the
  pooled embedding is the second encoder's projection (`text_embeds`); a refiner has only the second
  encoder, which then reads `prompt` (diffusers zips prompts with the encoders it has);
- no negative prompt with `force_zeros_for_empty_prompt` means zero negative embeddings;
- the UNet also takes `text_embeds` and `time_ids`: original size, crop top-left and target size, or
  for a refiner (`requires_aesthetics_score`) original size, crop and an aesthetic score;
- `denoising_end` stops a base early and `denoising_start` starts a refiner late (the base -> refiner
  hand-over), `guidance_rescale` rescales the guided prediction;
- VAEs with `latents_mean` / `latents_std` normalise latents per channel.
Random draws follow sdc.runtime.pipeline's order: initial latents, VAE posterior noise (pixels only),
`add_noise` noise (not when `denoising_start` hands over noisy latents), then scheduler noise per step.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sdc.errors import InputError
from sdc.runtime.pipeline import (Model, PipelineConfig, StableDiffusionPipeline, StepCallback, _check_call,
                                  _check_int, _check_number, _check_strength, _prompts, randn)

Size = tuple[int, int]


def _fraction(name: str, value: Any) -> float | None:
    """diffusers acts on denoising_start/end only when they are floats strictly between 0 and 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 < value < 1.0:
        raise InputError(f"{name} must be a fraction strictly between 0 and 1, got {value!r}")
    return float(value)


def _size(name: str, value: Any, default: Size | None) -> Size | None:
    if value is None:
        return default
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in value)):
        raise InputError(f"{name} must be two non-negative integers (height, width), got {value!r}")
    return (int(value[0]), int(value[1]))


def _second(name: str, value: Any, n: int) -> list[str] | None:
    """prompt_2 / negative_prompt_2 as a list of n strings; None when unset or empty (the first one applies)."""
    if not value:
        return None
    if isinstance(value, str):
        return [value] * n
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        if len(value) != n:
            raise InputError(f"{name} has {len(value)} entries but prompt has {n}")
        return list(value)
    raise InputError(f"{name} must be None, a string or a list of strings")


def _score(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not np.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value!r}")
    return float(value)


class StableDiffusionXLPipeline(StableDiffusionPipeline):
    """SDXL text-to-image and image-to-image (base or refiner) over numpy submodels."""

    REQUIRED_MODELS = ("text_encoder_2", "unet", "vae_decoder")

    def __init__(self, models: Mapping[str, Model], tokenizers: Mapping[str, Any], scheduler_config: Mapping[str, Any],
                 config: PipelineConfig | None = None):
        """`tokenizers`: submodel name -> tokenizer, for `text_encoder_2` and (a base) `text_encoder`."""
        super().__init__(models, tokenizers.get("text_encoder_2"), scheduler_config, config)
        self.tokenizers = dict(tokenizers)
        self.encoders = [n for n in ("text_encoder", "text_encoder_2") if n in models]
        for name in self.encoders:
            if self.tokenizers.get(name) is None:
                raise InputError(f"submodel {name} needs a tokenizer")

    @property
    def is_refiner(self) -> bool:
        return self.config.requires_aesthetics_score

    # ------------------------------------------------------------------ pieces

    def encode_prompt_xl(self, prompts: list[str], prompts_2: list[str], negatives: list[str] | None,
                         negatives_2: list[str] | None) -> tuple[np.ndarray, np.ndarray]:
        """(embeds [B', S, D1 + D2], pooled [B', P]); B' = 2B as [negative; positive] when negatives are given.

        Each encoder runs once on negatives + prompts together: CLIP rows are independent.
        """
        # diffusers zips [prompt, prompt_2] with the encoders present: a refiner's only encoder reads `prompt`.
        texts = [prompts, prompts_2][: len(self.encoders)]
        neg_texts = [negatives, negatives_2][: len(self.encoders)] if negatives is not None else None
        hidden, pooled = [], None
        for i, name in enumerate(self.encoders):
            batch = (neg_texts[i] if neg_texts else []) + texts[i]
            ids = np.asarray(self.tokenizers[name](batch), dtype=np.int64)
            out = self._run(name, input_ids=ids)
            hidden.append(np.asarray(out["hidden_states_penultimate"], dtype=np.float32))
            if "text_embeds" in out:  # only the projection encoder pools (diffusers: the last 2-D output)
                pooled = np.asarray(out["text_embeds"], dtype=np.float32)
        if pooled is None:
            raise InputError("SDXL needs a text encoder with projection (text_embeds) for the pooled embedding")
        return np.concatenate(hidden, axis=-1), pooled

    def _time_ids(self, img2img: bool, do_cfg: bool, batch: int, original: Size, crops: Size, target: Size,
                  neg_original: Size | None, neg_crops: Size, neg_target: Size | None, aesthetic: float,
                  neg_aesthetic: float) -> np.ndarray:
        """[B or 2B, n] time ids in the row order diffusers builds them (it differs between its two pipelines)."""
        if not img2img:  # StableDiffusionXLPipeline
            pos = [*original, *crops, *target]
            neg = [*neg_original, *neg_crops, *neg_target] if neg_original and neg_target else pos
            rows = [neg, pos] if do_cfg else [pos]
            # diffusers repeats the [negative, positive] pair per image: the rows interleave.
            return np.tile(np.asarray(rows, np.float32), (batch, 1))
        neg_original, neg_target = neg_original or original, neg_target or target
        if self.config.requires_aesthetics_score:
            pos, neg = [*original, *crops, aesthetic], [*neg_original, *neg_crops, neg_aesthetic]
        else:  # diffusers' img2img pairs the negative sizes with the positive crop
            pos, neg = [*original, *crops, *target], [*neg_original, *crops, *neg_target]
        pos_rows = np.tile(np.asarray([pos], np.float32), (batch, 1))
        return np.concatenate([np.tile(np.asarray([neg], np.float32), (batch, 1)), pos_rows]) if do_cfg else pos_rows

    def _img2img_timesteps(self, sched, steps: int, strength: float, start: float | None) -> np.ndarray:
        sched.set_timesteps(steps)
        if start is None:
            return np.asarray(sched.get_timesteps(steps, strength)[0])
        all_ts = np.asarray(sched.timesteps)
        n_train = sched.config["num_train_timesteps"]
        cutoff = int(round(n_train - start * n_train))
        n = int((all_ts < cutoff).sum())
        if sched.order == 2 and n % 2 == 0:
            n += 1  # do not cut a second-order step in half
        t_start = len(all_ts) - n
        if sched.uses_begin_index:
            sched.set_begin_index(t_start)
        return all_ts[t_start:]

    # ------------------------------------------------------------------ generation

    def __call__(  # noqa: PLR0913 - diffusers' keyword arguments, by name
        self,
        prompt: str | Sequence[str],
        prompt_2: str | Sequence[str] | None = None,
        negative_prompt: str | Sequence[str] | None = None,
        negative_prompt_2: str | Sequence[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        guidance_rescale: float = 0.0,
        seed: int | None = None,
        latents: np.ndarray | None = None,
        image: Any = None,
        strength: float = 0.3,
        denoising_start: float | None = None,
        denoising_end: float | None = None,
        original_size: Size | None = None,
        crops_coords_top_left: Size = (0, 0),
        target_size: Size | None = None,
        negative_original_size: Size | None = None,
        negative_crops_coords_top_left: Size = (0, 0),
        negative_target_size: Size | None = None,
        aesthetic_score: float = 6.0,
        negative_aesthetic_score: float = 2.5,
        scheduler: str | None = None,
        output_type: str = "pil",
        num_images_per_prompt: int = 1,
        callback: StepCallback | None = None,
    ):
        """Generate images (see the module docstring); returns PIL images, NHWC float32 in [0, 1], or latents.

        `image` (image-to-image, and the refiner) is what StableDiffusionPipeline takes, or NCHW latents
        with the VAE's latent channels, used as they are (a base's `output_type="latent"`).
        """
        self.last_timings = {}
        t_start = time.perf_counter()
        c = self.config
        prompts, negatives = _prompts(prompt, negative_prompt)
        # diffusers: `prompt_2 or prompt`, `negative_prompt_2 or negative_prompt` (an empty string falls back too)
        prompts_2 = _second("prompt_2", prompt_2, len(prompts)) or prompts
        negatives_2 = _second("negative_prompt_2", negative_prompt_2, len(prompts)) or negatives
        steps = _check_int("num_inference_steps", num_inference_steps, 1)
        per_prompt = _check_int("num_images_per_prompt", num_images_per_prompt, 1)
        _check_call(c, output_type, seed, image, latents, height, width)
        _check_number("guidance_scale", guidance_scale)
        _check_number("guidance_rescale", guidance_rescale)
        start, end = _fraction("denoising_start", denoising_start), _fraction("denoising_end", denoising_end)
        if start is not None and end is not None and start >= end:
            raise InputError(f"denoising_start {start} must be below denoising_end {end}")
        if image is None and self.is_refiner:
            raise InputError("this is an SDXL refiner (requires_aesthetics_score): it refines an image and cannot "
                             "start from noise; give it an image (sdc generate --image, or a base bundle with "
                             "--refiner THIS), or use a base model")
        if image is None and start is not None:
            raise InputError("denoising_start needs an image to continue from (the base's latents)")
        if image is not None and start is None:
            _check_strength(strength)
        crops = _size("crops_coords_top_left", crops_coords_top_left, (0, 0))
        neg_crops = _size("negative_crops_coords_top_left", negative_crops_coords_top_left, (0, 0))
        neg_original = _size("negative_original_size", negative_original_size, None)
        neg_target = _size("negative_target_size", negative_target_size, None)
        aesthetic = _score("aesthetic_score", aesthetic_score)
        neg_aesthetic = _score("negative_aesthetic_score", negative_aesthetic_score)

        batch = len(prompts) * per_prompt
        do_cfg = guidance_scale > 1.0
        rng = np.random.default_rng(seed)
        sched = self.make_scheduler(scheduler)
        init_latents = init_pixels = None
        if image is not None:  # pixels, or latents from a base, used as they are
            init_latents, init_pixels = self._init_image(image, batch, height, width, c.vae_scale_factor)
            timesteps = self._img2img_timesteps(sched, steps, float(strength), start)
            if len(timesteps) < 1:
                raise InputError(f"strength {strength} x num_inference_steps {steps} leaves no denoising step")
        else:
            h = c.default_height if height is None else int(height)
            w = c.default_width if width is None else int(width)
            shape = (batch, c.latent_channels, h // c.vae_scale_factor, w // c.vae_scale_factor)
            if latents is not None:
                latents = np.asarray(latents, dtype=np.float32)
                if latents.shape != shape:
                    raise InputError(f"latents have shape {latents.shape}, expected {shape} for {batch} images of {h}x{w}")
            sched.set_timesteps(steps)
            if sched.uses_begin_index:
                sched.set_begin_index(0)
            timesteps = np.asarray(sched.timesteps)
            latents = randn(rng, shape) if latents is None else latents
            latents = (latents * np.float32(sched.init_noise_sigma)).astype(np.float32)

        if image is not None:
            z = init_latents if init_latents is not None else self.encode_image(init_pixels, rng)
            z = np.concatenate([z] * (batch // z.shape[0]), axis=0)  # tiled, as diffusers
            if start is None:  # a hand-over (denoising_start) continues from latents that are already noisy
                noise = randn(rng, z.shape)
                z = sched.add_noise(z, noise, np.repeat(timesteps[:1], batch))
            latents = np.asarray(z, dtype=np.float32)
        if end is not None:
            n_train = sched.config["num_train_timesteps"]
            cutoff = int(round(n_train - end * n_train))
            timesteps = timesteps[: int((timesteps >= cutoff).sum())]

        zero_negatives = negative_prompt is None and c.force_zeros_for_empty_prompt
        embeds, pooled = self.encode_prompt_xl(prompts, prompts_2, negatives if do_cfg and not zero_negatives else None,
                                               negatives_2 if do_cfg and not zero_negatives else None)
        if do_cfg and zero_negatives:
            embeds = np.concatenate([np.zeros_like(embeds), embeds])
            pooled = np.concatenate([np.zeros_like(pooled), pooled])
        embeds, pooled = np.repeat(embeds, per_prompt, axis=0), np.repeat(pooled, per_prompt, axis=0)

        size = (latents.shape[2] * c.vae_scale_factor, latents.shape[3] * c.vae_scale_factor)
        original = _size("original_size", original_size, size)
        target = _size("target_size", target_size, size)
        time_ids = self._time_ids(image is not None, do_cfg, batch, original, crops, target, neg_original, neg_crops,
                                  neg_target, aesthetic, neg_aesthetic)

        latents = self._denoise(sched, timesteps, latents, batch, do_cfg, guidance_scale, rng, callback,
                                guidance_rescale=float(guidance_rescale), encoder_hidden_states=embeds,
                                text_embeds=pooled, time_ids=time_ids)
        return self._output(latents, output_type, t_start)
