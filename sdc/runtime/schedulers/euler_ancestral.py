"""Euler Ancestral (diffusers' EulerAncestralDiscreteScheduler) in numpy; noise comes from the caller."""

from __future__ import annotations

from typing import Any

import numpy as np

from sdc.runtime.schedulers import sigmas as sg
from sdc.runtime.schedulers.base import BETA_DEFAULTS, SPACINGS, base_timesteps
from sdc.runtime.schedulers.euler import SigmaScheduler


class EulerAncestralDiscreteScheduler(SigmaScheduler):
    """Euler step to sigma_down, then fresh noise of size sigma_up: needs a draw at every step."""

    class_name = "EulerAncestralDiscreteScheduler"
    defaults = dict(BETA_DEFAULTS, prediction_type="epsilon", timestep_spacing="linspace", steps_offset=0,
                    rescale_betas_zero_snr=False)
    choices = dict(prediction_type=("epsilon", "v_prediction"), timestep_spacing=SPACINGS)

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self.num_inference_steps = self._check_steps(num_inference_steps)
        cfg = self.config
        ts = base_timesteps(cfg["timestep_spacing"], cfg["num_train_timesteps"], n, cfg["steps_offset"])
        ts = ts.astype(np.float32)
        train = sg.train_sigmas(self.alphas_cumprod)
        sigmas = np.interp(ts, np.arange(0, len(train)), train)
        self.sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        self.timesteps = ts
        self._step_index = self._begin_index = None

    def _noise_at(self, step_index: int) -> bool:
        return True  # diffusers draws at every step, the last (sigma_up = 0) included

    def step(self, model_output: np.ndarray, timestep: Any, sample: np.ndarray,
             noise: np.ndarray | None = None) -> np.ndarray:
        model_output, sample = self._prepare(model_output, sample)
        noise = self._noise(noise, sample)
        self._init_step_index(timestep)
        i = self._step_index
        sigma_from, sigma_to = self.sigmas[i], self.sigmas[i + 1]
        x0 = self._x0(model_output, sample, sigma_from)
        sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        derivative = (sample - x0) / sigma_from
        prev = sample + derivative * (sigma_down - sigma_from)
        self._step_index = i + 1
        return (prev + noise * sigma_up).astype(np.float32)
