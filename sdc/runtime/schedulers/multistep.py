"""Common part of the multistep solvers (DPM-Solver++, UniPC): sigma schedule, model-output history, add_noise."""

from __future__ import annotations

from typing import Any

import numpy as np

from sdc.runtime.schedulers import sigmas as sg
from sdc.runtime.schedulers.base import DEFAULT_PATH, ZERO_SNR_ALPHA, Scheduler, f32


class MultistepScheduler(Scheduler):
    """Solvers in log-SNR time that reuse the last `solver_order` data predictions."""

    missing_index_is_last = True  # diffusers' multistep schedulers fall back to the last step

    def __init__(self, config: dict[str, Any] | None = None, *, path: str = DEFAULT_PATH, **overrides: Any):
        super().__init__(config, path=path, **overrides)
        if self.config["rescale_betas_zero_snr"]:
            self.alphas_cumprod[-1] = ZERO_SNR_ALPHA
        n_train = self.config["num_train_timesteps"]
        self.sigmas = sg.train_sigmas(self.alphas_cumprod)
        self.timesteps = np.linspace(0, n_train - 1, n_train, dtype=np.float32)[::-1].copy()
        self._reset_history()

    def _reset_history(self) -> None:
        self.model_outputs: list[np.ndarray | None] = [None] * self.config["solver_order"]
        self.lower_order_nums = 0

    def _cfg_any(self, key: str) -> Any:
        """An option of this class, or one a config of another class carried along (diffusers keeps those)."""
        return self.config[key] if key in self.config else self.extra_config.get(key)

    def _timesteps_and_sigmas(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self._check_steps(num_inference_steps)
        self.timesteps, self.sigmas = self._timesteps_and_sigmas(n)
        self.num_inference_steps = len(self.timesteps)
        self._reset_history()
        self._step_index = self._begin_index = None

    def _push(self, converted: np.ndarray) -> None:
        """Append a converted model output to the history, dropping the oldest."""
        self.model_outputs = self.model_outputs[1:] + [converted]

    def add_noise(self, original: np.ndarray, noise: np.ndarray, timesteps: Any) -> np.ndarray:
        original, noise = f32(original), f32(noise)
        sigma = self.sigmas[self._sigma_step_indices(timesteps)]
        alpha_t, sigma_t = sg.alpha_sigma(sigma.reshape((-1,) + (1,) * (original.ndim - 1)))
        return alpha_t * original + sigma_t * noise
