"""FlowMatchEulerDiscreteScheduler (Flux, SD3): Euler steps on a rectified flow, sigmas from 1 to 0.

x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v, where the model predicts the velocity v; the timestep the
model sees is sigma * num_train_timesteps (Flux divides it by 1000 again). Sigmas are shifted towards
noise, by a fixed `shift`, or with `use_dynamic_shifting` by exp(mu) with mu chosen by the pipeline from
the image sequence length (FluxPipeline's `calculate_shift`). Arithmetic follows diffusers 0.42 dtype for
dtype: custom sigmas (what FluxPipeline passes) are shifted in float32, the default schedule in float64.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from sdc.errors import InputError
from sdc.runtime.schedulers.base import Scheduler, f32


class FlowMatchEulerDiscreteScheduler(Scheduler):
    class_name = "FlowMatchEulerDiscreteScheduler"
    uses_betas: ClassVar[bool] = False
    defaults = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, base_shift=0.5, max_shift=1.15,
                    base_image_seq_len=256, max_image_seq_len=4096, invert_sigmas=False, shift_terminal=None,
                    use_karras_sigmas=False, use_exponential_sigmas=False, use_beta_sigmas=False,
                    time_shift_type="exponential", stochastic_sampling=False)
    # what Flux's configs use; the rest of diffusers' options are refused by name
    choices = dict(invert_sigmas=(False,), shift_terminal=(None,), use_karras_sigmas=(False,),
                   use_exponential_sigmas=(False,), use_beta_sigmas=(False,), stochastic_sampling=(False,),
                   time_shift_type=("exponential", "linear"))

    def __init__(self, config=None, **kwargs: Any):
        super().__init__(config, **kwargs)
        n = self.config["num_train_timesteps"]
        t = np.linspace(1, n, n, dtype=np.float32)[::-1].copy()
        sigmas = t / np.float32(n)
        if not self.config["use_dynamic_shifting"]:
            sigmas = self._shift_fixed(sigmas)
        self.sigmas = sigmas.astype(np.float32)
        self.timesteps = (self.sigmas * np.float32(n)).astype(np.float32)
        self.sigma_max, self.sigma_min = float(self.sigmas[0]), float(self.sigmas[-1])

    def _shift_fixed(self, sigmas: np.ndarray) -> np.ndarray:
        shift = self.config["shift"]
        return shift * sigmas / (1 + (shift - 1) * sigmas)

    def time_shift(self, mu: float, sigmas: np.ndarray) -> np.ndarray:
        if self.config["time_shift_type"] == "exponential":
            return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** 1.0)
        return mu / (mu + (1 / sigmas - 1) ** 1.0)

    def set_timesteps(self, num_inference_steps: int | None = None, sigmas=None, mu: float | None = None) -> None:
        """diffusers' set_timesteps(num_inference_steps, sigmas=, mu=); `mu` is required with dynamic shifting."""
        if self.config["use_dynamic_shifting"] and mu is None:
            raise InputError(f"{self.class_name}: this config shifts by image size (use_dynamic_shifting); pass mu")
        if sigmas is None:
            n = self._check_steps(num_inference_steps)
            n_train = self.config["num_train_timesteps"]
            sig = np.linspace(self.sigma_max * n_train, self.sigma_min * n_train, n) / n_train  # float64, as diffusers
        else:
            sig = np.asarray(sigmas, dtype=np.float64).astype(np.float32)
            if num_inference_steps is not None and len(sig) != num_inference_steps:
                raise InputError(f"{len(sig)} sigmas for {num_inference_steps} steps")
            n = len(sig)
            if n < 1 or not np.all(np.isfinite(sig)) or sig.min() <= 0:
                raise InputError("sigmas must be positive and finite")
        sig = self.time_shift(float(mu), sig) if self.config["use_dynamic_shifting"] else self._shift_fixed(sig)
        sig = np.asarray(sig).astype(np.float32)
        self.num_inference_steps = n
        self.timesteps = (sig * np.float32(self.config["num_train_timesteps"])).astype(np.float32)
        self.sigmas = np.concatenate([sig, np.zeros(1, np.float32)])
        self._step_index = self._begin_index = None

    def step(self, model_output: np.ndarray, timestep: Any, sample: np.ndarray,
             noise: np.ndarray | None = None) -> np.ndarray:
        model_output, sample = self._prepare(model_output, sample)
        self._init_step_index(timestep)
        i = self._step_index
        dt = self.sigmas[i + 1] - self.sigmas[i]
        self._step_index = i + 1
        return (sample + dt * model_output).astype(np.float32)

    def add_noise(self, original: np.ndarray, noise: np.ndarray, timesteps: Any) -> np.ndarray:
        """diffusers' scale_noise: sigma * noise + (1 - sigma) * sample (image-to-image)."""
        original, noise = f32(original), f32(noise)
        sigma = self.sigmas[self._sigma_step_indices(timesteps)].reshape((-1,) + (1,) * (original.ndim - 1))
        return sigma * noise + (np.float32(1.0) - sigma) * original
