"""LCM (diffusers' LCMScheduler) in numpy: consistency-model steps, re-noised with caller noise between steps."""

from __future__ import annotations

from typing import Any

import numpy as np

from sdc.errors import ConfigError, InputError
from sdc.runtime.schedulers.base import BETA_DEFAULTS, DEFAULT_PATH, Scheduler

SIGMA_DATA = np.float32(0.5)  # fixed in diffusers' boundary-condition scalings


class LCMScheduler(Scheduler):
    """Latent consistency models: each step predicts x0 and re-noises it to the next timestep (not after the last)."""

    class_name = "LCMScheduler"
    defaults = dict(BETA_DEFAULTS, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    original_inference_steps=50, clip_sample=False, clip_sample_range=1.0, set_alpha_to_one=True,
                    steps_offset=0, prediction_type="epsilon", thresholding=False, dynamic_thresholding_ratio=0.995,
                    sample_max_value=1.0, timestep_spacing="leading", timestep_scaling=10.0,
                    rescale_betas_zero_snr=False)
    # timestep_spacing and steps_offset are accepted but, as in diffusers, do not affect LCM's schedule
    choices = dict(prediction_type=("epsilon", "sample", "v_prediction"), thresholding=(False,))

    def __init__(self, config: dict[str, Any] | None = None, *, path: str = DEFAULT_PATH, **overrides: Any):
        super().__init__(config, path=path, **overrides)
        self.final_alpha_cumprod = np.float32(1.0) if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]
        self.timesteps = np.arange(0, self.config["num_train_timesteps"])[::-1].copy().astype(np.int64)

    def _validate(self) -> None:
        super()._validate()
        steps = self.config["original_inference_steps"]
        n_train = self.config["num_train_timesteps"]
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= n_train:
            raise ConfigError(self.path, "original_inference_steps",
                              f"expected an integer in [1, num_train_timesteps], got {steps!r}")

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self._check_steps(num_inference_steps)
        original = self.config["original_inference_steps"]
        if n > original:
            raise InputError(f"LCM runs at most original_inference_steps={original} steps, got {n}")
        k = self.config["num_train_timesteps"] // original
        # the distillation schedule (every k-th timestep), then n of its points evenly from the noisy end
        origin = (np.arange(1, original + 1) * k - 1)[::-1].copy()
        idx = np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)
        self.timesteps = origin[idx].astype(np.int64)
        self.num_inference_steps = n
        self._step_index = self._begin_index = None

    def _noise_at(self, step_index: int) -> bool:
        return step_index != (self.num_inference_steps or 0) - 1  # the last step returns the x0 estimate as is

    def _scalings(self, t: int) -> tuple[np.float32, np.float32]:
        """Boundary-condition scalings (c_skip, c_out) of the consistency parameterisation, float32 like torch."""
        scaled = np.float32(t) * np.float32(self.config["timestep_scaling"])
        c_skip = SIGMA_DATA**2 / (scaled**2 + SIGMA_DATA**2)
        c_out = scaled / (scaled**2 + SIGMA_DATA**2) ** 0.5
        return c_skip, c_out

    def step(self, model_output: np.ndarray, timestep: Any, sample: np.ndarray,
             noise: np.ndarray | None = None) -> np.ndarray:
        model_output, sample = self._prepare(model_output, sample)
        self._init_step_index(timestep)
        i, t = self._step_index, int(timestep)
        prev_t = int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else t
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        b_t, b_prev = np.float32(1.0) - a_t, np.float32(1.0) - a_prev
        c_skip, c_out = self._scalings(t)
        pred = self.config["prediction_type"]
        if pred == "epsilon":
            x0 = (sample - np.sqrt(b_t) * model_output) / np.sqrt(a_t)
        elif pred == "sample":
            x0 = model_output
        else:
            x0 = np.sqrt(a_t) * sample - np.sqrt(b_t) * model_output
        if self.config["clip_sample"]:
            r = self.config["clip_sample_range"]
            x0 = np.clip(x0, -r, r).astype(np.float32)
        denoised = c_out * x0 + c_skip * sample
        if self._noise_at(i):
            denoised = np.sqrt(a_prev) * denoised + np.sqrt(b_prev) * self._noise(noise, sample)
        self._step_index = i + 1
        return denoised.astype(np.float32)
