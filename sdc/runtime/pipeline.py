"""Stable Diffusion (1.x/2.x) text-to-image and image-to-image in numpy, step for step like diffusers.

The pipeline only orchestrates: submodels are callables `models[name](**inputs) -> {output: ndarray}`
named as in DESIGN.md's contract table (ONNX Runtime sessions in a bundle, Paddle layers in tests),
schedulers come from `sdc.runtime.schedulers`, the tokenizer from `sdc.runtime.tokenizer`.

Randomness: one `np.random.default_rng(seed)` per call, drawn in this order (the pipeline references
in tests/fixtures/make_pipeline_refs.py replay the same order through diffusers):
  1. initial latents [B, C, h, w] (text-to-image, only when `latents` is not given);
  2. image-to-image: VAE posterior noise (latent = mean + exp(0.5 * clip(logvar, -30, 20)) * noise),
     then the noise `scheduler.add_noise` mixes in;
  3. per step, the scheduler's noise when `scheduler.needs_noise` (ancestral samplers, LCM, ...).
Every draw is `randn` below: float32 standard normals from numpy's generator.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdc.errors import InputError
from sdc.runtime.pipeline_images import preprocess, to_pil

Model = Callable[..., Mapping[str, np.ndarray]]
# callback(step, total, timestep, latents): called after each scheduler step; `step` counts 1..total.
StepCallback = Callable[[int, int, float, np.ndarray], None]
OUTPUT_TYPES = ("pil", "np", "latent")


def randn(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    """Standard normal float32 draws: the only way this pipeline makes noise."""
    return rng.standard_normal(tuple(int(d) for d in shape), dtype=np.float32)


@dataclass(frozen=True)
class PipelineConfig:
    """Facts about the model the pipeline needs; the bundle manifest (or a diffusers folder) fills it."""

    scaling_factor: float = 0.18215
    shift_factor: float | None = None  # None for SD 1.x/2.x; Flux-style VAEs shift before scaling
    vae_scale_factor: int = 8  # 2 ** (len(vae block_out_channels) - 1)
    latent_channels: int = 4
    unet_in_channels: int = 4
    unet_out_channels: int = 4
    default_height: int = 512  # unet sample_size * vae_scale_factor
    default_width: int = 512
    default_scheduler: str | None = None  # None: the class named in scheduler_config
    # SDXL: per-channel latent statistics some VAEs carry (latents = (z - mean) * scale / std); None: scale only
    latents_mean: tuple[float, ...] | None = None
    latents_std: tuple[float, ...] | None = None
    # SDXL pipeline options (model_index.json): zero negative embeddings when no negative prompt is given;
    # a refiner's time ids carry aesthetic scores instead of the target size.
    force_zeros_for_empty_prompt: bool = False
    requires_aesthetics_score: bool = False
    # Flux: the transformer's guidance embedding (dev) and its rotary axes (the runtime builds the tables)
    guidance_embeds: bool = False
    rope_axes_dims: tuple[int, ...] | None = None

    @classmethod
    def from_diffusers(cls, model_dir: str | Path, default_scheduler: str | None = None) -> PipelineConfig:
        """Read the fields from a diffusers folder's model_index.json and unet/ (or transformer/) and vae/ config.json."""
        model_dir = Path(model_dir)
        vae = json.loads((model_dir / "vae" / "config.json").read_text(encoding="utf-8"))
        index_path = model_dir / "model_index.json"
        index = json.loads(index_path.read_text(encoding="utf-8")) if index_path.is_file() else {}
        xl = str(index.get("_class_name", "")).startswith("StableDiffusionXL")
        factor = 2 ** (len(vae.get("block_out_channels", [64])) - 1)
        flux = {}
        if (model_dir / "transformer" / "config.json").is_file():  # Flux: tokens of 2x2 latent patches
            tf = json.loads((model_dir / "transformer" / "config.json").read_text(encoding="utf-8"))
            in_ch = int(tf.get("in_channels", 64))
            out_ch = int(tf.get("out_channels") or in_ch)
            h = w = int(vae.get("sample_size", 1024))
            flux = dict(guidance_embeds=bool(tf.get("guidance_embeds", False)),
                        rope_axes_dims=tuple(int(a) for a in tf.get("axes_dims_rope", (16, 56, 56))))
        else:
            unet = json.loads((model_dir / "unet" / "config.json").read_text(encoding="utf-8"))
            in_ch, out_ch = int(unet.get("in_channels", 4)), int(unet.get("out_channels", 4))
            size = unet.get("sample_size", 64)
            h, w = (size * factor, size * factor) if isinstance(size, int) else (size[0] * factor, size[1] * factor)
        return cls(
            scaling_factor=float(vae.get("scaling_factor", 0.18215)),
            shift_factor=vae.get("shift_factor"),
            vae_scale_factor=factor,
            latent_channels=int(vae.get("latent_channels", 4)),
            unet_in_channels=in_ch,
            unet_out_channels=out_ch,
            default_height=h,
            default_width=w,
            default_scheduler=default_scheduler,
            latents_mean=tuple(vae["latents_mean"]) if vae.get("latents_mean") else None,
            latents_std=tuple(vae["latents_std"]) if vae.get("latents_std") else None,
            force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", xl)),
            requires_aesthetics_score=bool(index.get("requires_aesthetics_score", False)),
            **flux,
        )


def _prompts(prompt: str | Sequence[str], negative: str | Sequence[str] | None) -> tuple[list[str], list[str]]:
    """Prompt and negative prompt as equal-length lists; a single negative applies to every prompt."""
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, Sequence) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    else:
        raise InputError("prompt must be a string or a non-empty list of strings")
    if negative is None or isinstance(negative, str):
        negatives = [negative or ""] * len(prompts)
    elif isinstance(negative, Sequence) and all(isinstance(n, str) for n in negative):
        negatives = list(negative)
        if len(negatives) != len(prompts):
            raise InputError(f"negative_prompt has {len(negatives)} entries but prompt has {len(prompts)}")
    else:
        raise InputError("negative_prompt must be None, a string or a list of strings")
    return prompts, negatives


def rescale_noise_cfg(noise_cfg: np.ndarray, noise_pred_text: np.ndarray, guidance_rescale: float) -> np.ndarray:
    """diffusers' `rescale_noise_cfg` (Lin et al. 2023, section 3.4): match the text prediction's std per sample."""
    axes = tuple(range(1, noise_cfg.ndim))
    std_text = noise_pred_text.std(axis=axes, keepdims=True, ddof=1)  # torch.std is unbiased
    std_cfg = noise_cfg.std(axis=axes, keepdims=True, ddof=1)
    rescaled = noise_cfg * (std_text / std_cfg)
    return (guidance_rescale * rescaled + (1.0 - guidance_rescale) * noise_cfg).astype(np.float32)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_number(name: str, value: Any, minimum: float = 0.0) -> float:
    """A finite number >= minimum (guidance scales and the like); bools are refused, not read as 0/1."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not np.isfinite(value) \
            or value < minimum:
        raise InputError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")
    return float(value)


def _check_strength(strength: Any) -> float:
    if not (isinstance(strength, (int, float, np.number)) and 0.0 < strength <= 1.0):
        raise InputError(f"strength must be in (0, 1], got {strength!r}")
    return float(strength)


def _check_call(c: PipelineConfig, output_type: str, seed: Any, image: Any, latents: Any, height: Any,
                width: Any, multiple: int | None = None, why: str = "") -> None:
    """The argument checks every pipeline's __call__ shares. Height and width must be multiples of `multiple`
    (default: the VAE's downscale; `why` says what makes a pipeline's larger)."""
    if output_type not in OUTPUT_TYPES:
        raise InputError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
        raise InputError(f"seed must be a non-negative integer or None, got {seed!r}")
    if image is not None and latents is not None:
        raise InputError("pass either latents (text-to-image) or image (image-to-image), not both")
    # diffusers checks 8; this is the VAE downscale factor (8 for SD). The UNet needs no larger
    # multiple: like diffusers' it resizes odd-sized skip connections on the way up.
    multiple = multiple or c.vae_scale_factor
    for name, value in (("height", height), ("width", width)):
        if value is not None and (_check_int(name, value, 1) % multiple):
            raise InputError(f"{name} must be a multiple of {multiple}{why}, got {value}")


class StableDiffusionPipeline:
    """Text-to-image and image-to-image generation over numpy submodels, matching diffusers' SD pipelines."""

    REQUIRED_MODELS = ("text_encoder", "unet", "vae_decoder")

    def __init__(self, models: Mapping[str, Model], tokenizer: Callable[[list[str]], np.ndarray],
                 scheduler_config: Mapping[str, Any], config: PipelineConfig | None = None):
        self.models = models
        self.tokenizer = tokenizer
        self.scheduler_config = dict(scheduler_config)
        self.config = config or PipelineConfig()
        self._check_config()
        for name in self.REQUIRED_MODELS:
            if name not in models:
                raise InputError(f"the pipeline needs submodel {name!r}; got {', '.join(sorted(models)) or 'none'}")
        self._local = threading.local()  # per-thread state: one pipeline serves concurrent callers

    def _check_config(self) -> None:
        if self.config.unet_in_channels != self.config.latent_channels:
            # An inpainting UNet also takes mask and masked-image latents: a different pipeline.
            raise InputError(
                f"UNet takes {self.config.unet_in_channels} input channels but the VAE has "
                f"{self.config.latent_channels} latent channels: inpainting models need an inpainting pipeline"
            )

    @property
    def last_timings(self) -> dict[str, float]:
        """Seconds per stage of this thread's latest call (for `sdc bench`); each thread sees its own."""
        if not hasattr(self._local, "timings"):
            self._local.timings = {}
        return self._local.timings

    @last_timings.setter
    def last_timings(self, value: dict[str, float]) -> None:
        self._local.timings = value

    # ------------------------------------------------------------------ pieces

    def make_scheduler(self, name: str | None = None):
        """A fresh scheduler (they hold per-generation state) from the model's scheduler config."""
        from sdc.runtime.schedulers import ALIASES, from_config

        sched = from_config(self.scheduler_config, name or self.config.default_scheduler)
        if not sched.uses_betas:
            raise InputError(f"{sched.class_name} is a flow-matching scheduler (Flux); this UNet predicts noise on a "
                             f"DDPM schedule: choose one of {', '.join(ALIASES)}")
        return sched

    def encode_prompt(self, prompts: list[str], negatives: list[str] | None) -> np.ndarray:
        """Text embeddings [B, S, D], or [2B, S, D] as [negative; positive] when `negatives` is given."""
        texts = (negatives or []) + prompts
        ids = np.asarray(self.tokenizer(texts), dtype=np.int64)
        # One encoder call for both halves: CLIP rows are independent, so this equals two calls.
        return np.asarray(self._run("text_encoder", input_ids=ids)["last_hidden_state"], dtype=np.float32)

    def _latent_stats(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-channel (mean, std) [1, C, 1, 1] of VAEs that carry them (some SDXL-family VAEs), else None."""
        c = self.config
        if c.latents_mean is None or c.latents_std is None:
            return None
        return (np.asarray(c.latents_mean, np.float32).reshape(1, -1, 1, 1),
                np.asarray(c.latents_std, np.float32).reshape(1, -1, 1, 1))

    def decode_latents(self, latents: np.ndarray) -> np.ndarray:
        """Latents -> NHWC float32 images in [0, 1]."""
        stats = self._latent_stats()
        if stats is not None:
            z = latents * stats[1] / np.float32(self.config.scaling_factor) + stats[0]
        else:
            z = latents / self.config.scaling_factor
            if self.config.shift_factor is not None:
                z = z + self.config.shift_factor
        sample = self._run("vae_decoder", latent_sample=z.astype(np.float32))["sample"]
        return np.clip(np.asarray(sample, dtype=np.float32) / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)

    def encode_image(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """NCHW image in [-1, 1] -> scaled latents, sampling the VAE posterior with noise from `rng`."""
        if "vae_encoder" not in self.models:
            raise InputError("image-to-image needs a vae_encoder, which this model does not have")
        params = np.asarray(self._run("vae_encoder", sample=image)["latent_parameters"], dtype=np.float32)
        mean, logvar = np.split(params, 2, axis=1)
        std = np.exp(0.5 * np.clip(logvar, -30.0, 20.0))
        latents = mean + std * randn(rng, mean.shape)
        stats = self._latent_stats()
        if stats is not None:
            return ((latents - stats[0]) * np.float32(self.config.scaling_factor) / stats[1]).astype(np.float32)
        if self.config.shift_factor is not None:
            latents = latents - self.config.shift_factor
        return (latents * self.config.scaling_factor).astype(np.float32)

    def _init_image(self, image: Any, batch: int, height: int | None, width: int | None, multiple: int,
                    latents_ok: bool = True) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Image-to-image's input as (latents, pixels), one of them None: NCHW latents with the VAE's latent
        channels are used as they are where the pipeline takes them (a base's latents for a refiner), anything
        else is a picture (sdc.runtime.pipeline_images.preprocess, sizes rounded down to `multiple`). Refused
        when the images cannot be spread over the `batch` generations."""
        latents = pixels = None
        c = self.config
        if latents_ok and isinstance(image, np.ndarray) and image.ndim == 4 and image.shape[1] == c.latent_channels != 3:
            latents = np.asarray(image, dtype=np.float32)
        else:
            pixels = preprocess(image, height, width, multiple)
        n_images = (latents if latents is not None else pixels).shape[0]
        if batch % n_images:
            raise InputError(f"{n_images} images cannot be spread over {batch} generations "
                             "(prompts x num_images_per_prompt must be a multiple of the image count)")
        return latents, pixels

    def _run(self, name: str, **inputs: np.ndarray) -> Mapping[str, np.ndarray]:
        t0 = time.perf_counter()
        out = self.models[name](**inputs)
        self.last_timings[name] = self.last_timings.get(name, 0.0) + time.perf_counter() - t0
        return out

    # ------------------------------------------------------------------ generation

    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        seed: int | None = None,
        latents: np.ndarray | None = None,
        image: Any = None,
        strength: float = 0.8,
        scheduler: str | None = None,
        output_type: str = "pil",
        num_images_per_prompt: int = 1,
        callback: StepCallback | None = None,
    ):
        """Generate images; returns a list of PIL images, an NHWC float32 array in [0, 1], or latents.

        `image` (image-to-image) is a PIL image or list of them, a float array in [0, 1] shaped HWC or
        NHWC (uint8 in [0, 255] too), or a float array in [-1, 1] shaped NCHW; its size (rounded down
        to a multiple of 8) is the output size unless height/width are given, then it is resized.
        `strength` in (0, 1] is how much of the schedule runs. `latents` (text-to-image only) replace
        the first draw and are multiplied by the scheduler's init_noise_sigma, as in diffusers.
        """
        self.last_timings = {}
        t_start = time.perf_counter()
        c = self.config
        prompts, negatives = _prompts(prompt, negative_prompt)
        steps = _check_int("num_inference_steps", num_inference_steps, 1)
        per_prompt = _check_int("num_images_per_prompt", num_images_per_prompt, 1)
        _check_call(c, output_type, seed, image, latents, height, width)
        _check_number("guidance_scale", guidance_scale)
        if image is not None:
            _check_strength(strength)

        batch = len(prompts) * per_prompt
        init = None
        if image is not None:
            _, init = self._init_image(image, batch, height, width, c.vae_scale_factor, latents_ok=False)
            if min(int(steps * strength), steps) < 1:  # diffusers' get_timesteps would return no step
                raise InputError(f"strength {strength} x num_inference_steps {steps} leaves no denoising step")
        else:
            h = c.default_height if height is None else int(height)
            w = c.default_width if width is None else int(width)
            shape = (batch, c.latent_channels, h // c.vae_scale_factor, w // c.vae_scale_factor)
            if latents is not None:
                latents = np.asarray(latents, dtype=np.float32)
                if latents.shape != shape:
                    raise InputError(f"latents have shape {latents.shape}, expected {shape} for {batch} images "
                                     f"of {h}x{w}")

        do_cfg = guidance_scale > 1.0  # as diffusers: guidance 1 (or less) runs the UNet on the prompt only
        rng = np.random.default_rng(seed)
        sched = self.make_scheduler(scheduler)
        sched.set_timesteps(steps)
        timesteps = np.asarray(sched.timesteps)
        if init is not None:
            timesteps = np.asarray(sched.get_timesteps(steps, float(strength))[0])
            init_latents = self.encode_image(init, rng)
            # Tiled, not interleaved, like diffusers: image i pairs with generation i mod len(images).
            init_latents = np.concatenate([init_latents] * (batch // init.shape[0]), axis=0)
            noise = randn(rng, init_latents.shape)
            latents = np.asarray(sched.add_noise(init_latents, noise, np.repeat(timesteps[:1], batch)), dtype=np.float32)
        else:
            if latents is None:
                latents = randn(rng, shape)
            latents = (latents * np.float32(sched.init_noise_sigma)).astype(np.float32)

        embeds = self.encode_prompt(prompts, negatives if do_cfg else None)
        # num_images_per_prompt copies sit next to each other: [p0, p0, p1, p1], as in diffusers.
        embeds = np.repeat(embeds, per_prompt, axis=0)

        latents = self._denoise(sched, timesteps, latents, batch, do_cfg, guidance_scale, rng, callback,
                                encoder_hidden_states=embeds)
        return self._output(latents, output_type, t_start)

    def _denoise(self, sched, timesteps: np.ndarray, latents: np.ndarray, batch: int, do_cfg: bool,
                 guidance_scale: float, rng: np.random.Generator, callback: StepCallback | None,
                 guidance_rescale: float = 0.0, **conditioning: np.ndarray) -> np.ndarray:
        """The denoising loop: the denoiser on [uncond; cond] (with guidance) and the scheduler's steps.

        `conditioning`: the denoiser's inputs besides its latents and timestep (encoder_hidden_states, and
        SDXL's text_embeds and time_ids, Flux's pooled projections, rotary tables and guidance), already
        doubled for guidance where they have a batch dim.
        """
        t_loop = time.perf_counter()
        for i, t in enumerate(timesteps):
            model_input = np.concatenate([latents, latents]) if do_cfg else latents
            model_input = np.asarray(sched.scale_model_input(model_input, t), dtype=np.float32)
            pred = np.asarray(self._predict(model_input, t, conditioning), dtype=np.float32)
            if do_cfg:
                uncond, cond = pred[:batch], pred[batch:]
                pred = uncond + np.float32(guidance_scale) * (cond - uncond)
                if guidance_rescale > 0.0:
                    pred = rescale_noise_cfg(pred, cond, float(guidance_rescale))
            noise = randn(rng, sched.step_noise_shape(latents)) if sched.needs_noise else None
            latents = np.asarray(sched.step(pred, t, latents, noise=noise), dtype=np.float32)
            if callback is not None:
                callback(i + 1, len(timesteps), float(t), latents)
        self.last_timings["denoise_loop"] = time.perf_counter() - t_loop
        return latents

    def _predict(self, model_input: np.ndarray, t: Any, conditioning: Mapping[str, np.ndarray]) -> np.ndarray:
        """One denoiser call: the UNet's noise prediction at timestep t."""
        tt = np.full((model_input.shape[0],), t, dtype=np.float32)
        return self._run("unet", sample=model_input, timestep=tt, **conditioning)["out_sample"]

    def _output(self, latents: np.ndarray, output_type: str, t_start: float):
        """Latents as asked for (latent, np or pil); records the call's total time."""
        if output_type == "latent":
            result: Any = latents
        else:
            images = self.decode_latents(latents)
            result = images if output_type == "np" else to_pil(images)
        self.last_timings["total"] = time.perf_counter() - t_start
        return result
