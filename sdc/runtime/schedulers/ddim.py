"""DDIM (diffusers' DDIMScheduler) in numpy, including eta > 0 with caller-supplied noise."""

from __future__ import annotations

from typing import Any

import numpy as np

from sdc.runtime.schedulers.base import BETA_DEFAULTS, DEFAULT_PATH, SPACINGS, Scheduler, base_timesteps

PREDICTIONS = ("epsilon", "sample", "v_prediction")


class DDIMScheduler(Scheduler):
    """Denoising diffusion implicit models; `eta` (0 = deterministic) is a sampling argument, not config."""

    class_name = "DDIMScheduler"
    defaults = dict(BETA_DEFAULTS, clip_sample=True, set_alpha_to_one=True, steps_offset=0,
                    prediction_type="epsilon", thresholding=False, dynamic_thresholding_ratio=0.995,
                    clip_sample_range=1.0, sample_max_value=1.0, timestep_spacing="leading",
                    rescale_betas_zero_snr=False)
    choices = dict(prediction_type=PREDICTIONS, timestep_spacing=SPACINGS, thresholding=(False,))
    uses_begin_index = False  # diffusers' DDIM has no set_begin_index

    def __init__(self, config: dict[str, Any] | None = None, *, eta: float = 0.0, path: str = DEFAULT_PATH,
                 **overrides: Any):
        super().__init__(config, path=path, **overrides)
        self.eta = float(eta)
        self.final_alpha_cumprod = np.float32(1.0) if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]
        self.timesteps = np.arange(0, self.config["num_train_timesteps"])[::-1].copy().astype(np.int64)

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self.num_inference_steps = self._check_steps(num_inference_steps)
        cfg = self.config
        ts = base_timesteps(cfg["timestep_spacing"], cfg["num_train_timesteps"], n, cfg["steps_offset"])
        self.timesteps = np.round(ts).astype(np.int64)

    def _noise_at(self, step_index: int) -> bool:
        return self.eta > 0

    def step(self, model_output: np.ndarray, timestep: Any, sample: np.ndarray,
             noise: np.ndarray | None = None) -> np.ndarray:
        model_output, sample = self._prepare(model_output, sample)
        cfg = self.config
        t = int(timestep)
        # diffusers steps back by num_train // n whatever the spacing, and so must we to match it
        prev_t = t - cfg["num_train_timesteps"] // self.num_inference_steps
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        b_t = np.float32(1.0) - a_t

        pred = cfg["prediction_type"]
        if pred == "epsilon":
            x0 = (sample - b_t**0.5 * model_output) / a_t**0.5
            eps = model_output
        elif pred == "sample":
            x0 = model_output
            eps = (sample - a_t**0.5 * x0) / b_t**0.5
        else:  # v_prediction
            x0 = a_t**0.5 * sample - b_t**0.5 * model_output
            eps = a_t**0.5 * model_output + b_t**0.5 * sample
        if cfg["clip_sample"]:
            r = cfg["clip_sample_range"]
            x0 = np.clip(x0, -r, r).astype(np.float32)

        b_prev = np.float32(1.0) - a_prev
        variance = (b_prev / b_t) * (np.float32(1.0) - a_t / a_prev)
        std_dev_t = np.float32(self.eta) * variance**0.5
        direction = (np.float32(1.0) - a_prev - std_dev_t**2) ** 0.5 * eps
        prev = a_prev**0.5 * x0 + direction
        if self.eta > 0:
            prev = prev + std_dev_t * self._noise(noise, sample)
        return prev.astype(np.float32)
