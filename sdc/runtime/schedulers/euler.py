"""Euler (diffusers' EulerDiscreteScheduler) in numpy, with Karras / exponential sigmas and log-linear interpolation."""

from __future__ import annotations

from typing import Any

import numpy as np

from sdc.errors import ConfigError, UnsupportedConfigError
from sdc.runtime.schedulers import sigmas as sg
from sdc.runtime.schedulers.base import (BETA_DEFAULTS, DEFAULT_PATH, SPACINGS, ZERO_SNR_ALPHA, Scheduler,
                                        base_timesteps, f32, linspace_f32)


class SigmaScheduler(Scheduler):
    """Common part of the Euler pair: k-diffusion style sigmas, input scaling and add_noise."""

    def __init__(self, config: dict[str, Any] | None = None, *, path: str = DEFAULT_PATH, **overrides: Any):
        super().__init__(config, path=path, **overrides)
        if self.config["rescale_betas_zero_snr"]:
            self.alphas_cumprod[-1] = ZERO_SNR_ALPHA
        self.sigmas = np.concatenate([sg.train_sigmas(self.alphas_cumprod)[::-1], [0.0]]).astype(np.float32)
        n_train = self.config["num_train_timesteps"]
        self.timesteps = np.linspace(0, n_train - 1, n_train, dtype=float)[::-1].astype(np.float32)

    @property
    def init_noise_sigma(self) -> float:  # type: ignore[override]
        """Standard deviation of the initial noise: the largest sigma (times sqrt(1 + 1/sigma^2) for leading)."""
        max_sigma = self.sigmas.max()
        if self.config["timestep_spacing"] in ("linspace", "trailing"):
            return float(max_sigma)
        return float((max_sigma**2 + np.float32(1.0)) ** 0.5)

    def scale_model_input(self, sample: np.ndarray, timestep: Any = None) -> np.ndarray:
        """x / sqrt(sigma^2 + 1): the UNet expects variance-preserving inputs."""
        self._init_step_index(timestep)
        sigma = self.sigmas[self._step_index]
        return (f32(sample) / ((sigma**2 + np.float32(1.0)) ** 0.5)).astype(np.float32)

    def add_noise(self, original: np.ndarray, noise: np.ndarray, timesteps: Any) -> np.ndarray:
        original, noise = f32(original), f32(noise)
        sigma = self.sigmas[self._sigma_step_indices(timesteps)]
        return original + noise * sigma.reshape((-1,) + (1,) * (original.ndim - 1))

    def _x0(self, model_output: np.ndarray, sample: np.ndarray, sigma: np.float32) -> np.ndarray:
        pred = self.config["prediction_type"]
        if pred == "epsilon":
            return sample - sigma * model_output
        if pred == "v_prediction":
            var = sigma**2 + np.float32(1.0)
            return model_output * (-sigma / var**0.5) + (sample / var)
        return model_output  # "sample" / "original_sample"


class EulerDiscreteScheduler(SigmaScheduler):
    """Euler method on the probability-flow ODE in sigma space (s_churn = 0, as pipelines call it)."""

    class_name = "EulerDiscreteScheduler"
    defaults = dict(BETA_DEFAULTS, prediction_type="epsilon", interpolation_type="linear", use_karras_sigmas=False,
                    use_exponential_sigmas=False, use_beta_sigmas=False, sigma_min=None, sigma_max=None,
                    timestep_spacing="linspace", timestep_type="discrete", steps_offset=0,
                    rescale_betas_zero_snr=False, final_sigmas_type="zero")
    choices = dict(prediction_type=("epsilon", "v_prediction", "sample", "original_sample"),
                   interpolation_type=("linear", "log_linear"), timestep_spacing=SPACINGS,
                   final_sigmas_type=("zero", "sigma_min"), use_beta_sigmas=(False, None),
                   timestep_type=("discrete", "continuous"))

    def _validate(self) -> None:
        super()._validate()
        cfg = self.config
        if sum(bool(cfg[k]) for k in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")) > 1:
            raise ConfigError(self.path, "use_karras_sigmas",
                              "only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas may be set")
        if cfg["timestep_type"] == "continuous" and cfg["prediction_type"] == "v_prediction":
            raise UnsupportedConfigError(self.path, "timestep_type", "continuous", "'discrete' with v_prediction")

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self.num_inference_steps = self._check_steps(num_inference_steps)
        cfg = self.config
        ts = base_timesteps(cfg["timestep_spacing"], cfg["num_train_timesteps"], n, cfg["steps_offset"])
        ts = ts.astype(np.float32)
        train = sg.train_sigmas(self.alphas_cumprod)
        log_sigmas = np.log(train)
        if cfg["interpolation_type"] == "linear":
            sigmas = np.interp(ts, np.arange(0, len(train)), train)
        else:  # log_linear: n + 1 levels from torch.linspace in float32 (diffusers keeps all of them)
            sigmas = np.exp(linspace_f32(np.log(train[-1]), np.log(train[0]), n + 1))
        bounds = (cfg["sigma_min"], cfg["sigma_max"])
        if cfg["use_karras_sigmas"]:
            sigmas = sg.karras_sigmas(sigmas, n, *bounds)
            ts = sg.sigma_to_t(sigmas, log_sigmas)
        elif cfg["use_exponential_sigmas"]:
            sigmas = sg.exponential_sigmas(sigmas, n, *bounds)
            ts = sg.sigma_to_t(sigmas, log_sigmas)
        last = train[0] if cfg["final_sigmas_type"] == "sigma_min" else 0.0
        self.sigmas = np.concatenate([sigmas, [last]]).astype(np.float32)
        self.timesteps = ts.astype(np.float32)
        self._step_index = self._begin_index = None

    def step(self, model_output: np.ndarray, timestep: Any, sample: np.ndarray,
             noise: np.ndarray | None = None) -> np.ndarray:
        model_output, sample = self._prepare(model_output, sample)
        self._init_step_index(timestep)
        i = self._step_index
        sigma = self.sigmas[i]  # = sigma_hat: without churn (gamma = 0) diffusers' sigma_hat is sigma
        derivative = (sample - self._x0(model_output, sample, sigma)) / sigma
        dt = self.sigmas[i + 1] - sigma
        self._step_index = i + 1
        return (sample + derivative * dt).astype(np.float32)
