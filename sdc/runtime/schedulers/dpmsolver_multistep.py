"""DPM-Solver++ multistep (diffusers' DPMSolverMultistepScheduler) in numpy: orders 1-3, ODE and SDE variants."""

from __future__ import annotations

from typing import Any

import numpy as np

from sdc.errors import ConfigError
from sdc.runtime.schedulers import sigmas as sg
from sdc.runtime.schedulers.base import BETA_DEFAULTS, SPACINGS
from sdc.runtime.schedulers.multistep import MultistepScheduler

ONE = np.float32(1.0)


class DPMSolverMultistepScheduler(MultistepScheduler):
    """DPM-Solver++ (2M with the defaults); `sde-dpmsolver++` needs caller noise at every step."""

    class_name = "DPMSolverMultistepScheduler"
    defaults = dict(BETA_DEFAULTS, solver_order=2, prediction_type="epsilon", thresholding=False,
                    dynamic_thresholding_ratio=0.995, sample_max_value=1.0, algorithm_type="dpmsolver++",
                    solver_type="midpoint", lower_order_final=True, euler_at_final=False, use_karras_sigmas=False,
                    use_exponential_sigmas=False, use_beta_sigmas=False, use_lu_lambdas=False, use_flow_sigmas=False,
                    flow_shift=1.0, final_sigmas_type="zero", lambda_min_clipped=-float("inf"), variance_type=None,
                    timestep_spacing="linspace", steps_offset=0, rescale_betas_zero_snr=False,
                    use_dynamic_shifting=False, time_shift_type="exponential")
    choices = dict(solver_order=(1, 2, 3), prediction_type=("epsilon", "sample", "v_prediction"),
                   thresholding=(False,), algorithm_type=("dpmsolver++", "sde-dpmsolver++"),
                   solver_type=("midpoint", "heun"), use_beta_sigmas=(False,), use_lu_lambdas=(False,),
                   use_flow_sigmas=(False,), final_sigmas_type=("zero", "sigma_min"),
                   variance_type=(None, "learned", "learned_range"), timestep_spacing=SPACINGS,
                   use_dynamic_shifting=(False,))

    def _normalize(self) -> None:
        # diffusers' __init__ maps these foreign values (configs of DEIS / UniPC) onto its own
        if self.config["algorithm_type"] == "deis":
            self.config["algorithm_type"] = "dpmsolver++"
        if self.config["solver_type"] in ("logrho", "bh1", "bh2"):
            self.config["solver_type"] = "midpoint"

    def _validate(self) -> None:
        super()._validate()
        if self.config["use_karras_sigmas"] and self.config["use_exponential_sigmas"]:
            raise ConfigError(self.path, "use_karras_sigmas",
                              "use_karras_sigmas and use_exponential_sigmas exclude each other")

    def _timesteps_and_sigmas(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        n_train = cfg["num_train_timesteps"]
        lambdas = sg.log_snr(np.sqrt(self.alphas_cumprod), np.sqrt(ONE - self.alphas_cumprod))
        # lambda_min_clipped cuts the noisiest timesteps (cosine schedules); -inf keeps them all
        clipped = int(np.searchsorted(lambdas[::-1], np.float32(cfg["lambda_min_clipped"])))
        last = n_train - clipped
        if cfg["timestep_spacing"] == "linspace":
            ts = np.linspace(0, last - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
        elif cfg["timestep_spacing"] == "leading":
            ts = (np.arange(0, n + 1) * (last // (n + 1))).round()[::-1][:-1].copy().astype(np.int64)
            ts = ts + cfg["steps_offset"]
        else:
            ts = np.arange(last, 0, -n_train / n).round().copy().astype(np.int64) - 1
        train = sg.train_sigmas(self.alphas_cumprod)
        log_sigmas = np.log(train)
        bounds = (self._cfg_any("sigma_min"), self._cfg_any("sigma_max"))
        if cfg["use_karras_sigmas"]:
            sigmas = sg.karras_sigmas(train[::-1].copy(), n, *bounds)
            ts = sg.sigma_to_t(sigmas, log_sigmas)
            if cfg["beta_schedule"] != "squaredcos_cap_v2":
                ts = ts.round()
        elif cfg["use_exponential_sigmas"]:
            sigmas = sg.exponential_sigmas(train[::-1].copy(), n, *bounds)
            ts = sg.sigma_to_t(sigmas, log_sigmas)
        else:
            sigmas = np.interp(ts, np.arange(0, len(train)), train)
        last_sigma = train[0] if cfg["final_sigmas_type"] == "sigma_min" else 0.0
        return ts.astype(np.int64), np.concatenate([sigmas, [last_sigma]]).astype(np.float32)

    def _noise_at(self, step_index: int) -> bool:
        return self.config["algorithm_type"] == "sde-dpmsolver++"

    def convert_model_output(self, model_output: np.ndarray, sample: np.ndarray) -> np.ndarray:
        """The model output as a data (x0) prediction, which DPM-Solver++ extrapolates."""
        pred = self.config["prediction_type"]
        if pred == "sample":
            return model_output
        alpha_t, sigma_t = sg.alpha_sigma(self.sigmas[self._step_index])
        if pred == "epsilon":
            if self.config["variance_type"] in ("learned", "learned_range"):
                model_output = model_output[:, :3]
            return (sample - sigma_t * model_output) / alpha_t
        return alpha_t * sample - sigma_t * model_output  # v_prediction

    def step(self, model_output: np.ndarray, timestep: Any, sample: np.ndarray,
             noise: np.ndarray | None = None) -> np.ndarray:
        model_output, sample = self._prepare(model_output, sample)
        self._init_step_index(timestep)
        cfg, i, n = self.config, self._step_index, len(self.timesteps)
        sde = cfg["algorithm_type"] == "sde-dpmsolver++"
        noise = self._noise(noise, sample) if sde else None
        short = cfg["lower_order_final"] and n < 15  # few steps: finish with lower orders for stability
        lower_final = i == n - 1 and (cfg["euler_at_final"] or short or cfg["final_sigmas_type"] == "zero")
        lower_second = i == n - 2 and short
        self._push(self.convert_model_output(model_output, sample))
        order = cfg["solver_order"]
        if order == 1 or self.lower_order_nums < 1 or lower_final:
            prev = self._first_order(sample, noise)
        elif order == 2 or self.lower_order_nums < 2 or lower_second:
            prev = self._second_order(sample, noise)
        else:
            prev = self._third_order(sample, noise)
        self.lower_order_nums = min(self.lower_order_nums + 1, order)
        self._step_index = i + 1
        return prev.astype(np.float32)

    def _lambdas(self, *offsets: int) -> list[tuple[Any, Any, Any]]:
        """(alpha, sigma, lambda) at step_index + offset for each offset."""
        out = []
        for k in offsets:
            alpha, sigma = sg.alpha_sigma(self.sigmas[self._step_index + k])
            out.append((alpha, sigma, sg.log_snr(alpha, sigma)))
        return out

    def _first_order(self, sample: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        (alpha_t, sigma_t, lambda_t), (_, sigma_s, lambda_s) = self._lambdas(1, 0)
        m0 = self.model_outputs[-1]
        h = lambda_t - lambda_s
        if noise is None:
            return (sigma_t / sigma_s) * sample - (alpha_t * (np.exp(-h) - ONE)) * m0
        return ((sigma_t / sigma_s * np.exp(-h)) * sample + (alpha_t * (ONE - np.exp(np.float32(-2.0) * h))) * m0
                + sigma_t * np.sqrt(ONE - np.exp(-2 * h)) * noise)

    def _second_order(self, sample: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        (alpha_t, sigma_t, lambda_t), (_, sigma_s0, lambda_s0), (_, _, lambda_s1) = self._lambdas(1, 0, -1)
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        d0, d1 = m0, (ONE / r0) * (m0 - m1)
        midpoint = self.config["solver_type"] == "midpoint"
        if noise is None:
            x = (sigma_t / sigma_s0) * sample - (alpha_t * (np.exp(-h) - ONE)) * d0
            if midpoint:
                return x - np.float32(0.5) * (alpha_t * (np.exp(-h) - ONE)) * d1
            return x + (alpha_t * ((np.exp(-h) - ONE) / h + ONE)) * d1
        x = (sigma_t / sigma_s0 * np.exp(-h)) * sample + (alpha_t * (1 - np.exp(np.float32(-2.0) * h))) * d0
        if midpoint:
            x = x + np.float32(0.5) * (alpha_t * (1 - np.exp(np.float32(-2.0) * h))) * d1
        else:
            x = x + (alpha_t * ((ONE - np.exp(np.float32(-2.0) * h)) / (np.float32(-2.0) * h) + ONE)) * d1
        return x + sigma_t * np.sqrt(ONE - np.exp(-2 * h)) * noise

    def _third_order(self, sample: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        lam = self._lambdas(1, 0, -1, -2)
        (alpha_t, sigma_t, lambda_t), (_, sigma_s0, lambda_s0) = lam[0], lam[1]
        lambda_s1, lambda_s2 = lam[2][2], lam[3][2]
        m0, m1, m2 = self.model_outputs[-1], self.model_outputs[-2], self.model_outputs[-3]
        h, h_0, h_1 = lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
        r0, r1 = h_0 / h, h_1 / h
        d1_0, d1_1 = (ONE / r0) * (m0 - m1), (ONE / r1) * (m1 - m2)
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (ONE / (r0 + r1)) * (d1_0 - d1_1)
        if noise is None:
            return ((sigma_t / sigma_s0) * sample - (alpha_t * (np.exp(-h) - ONE)) * m0
                    + (alpha_t * ((np.exp(-h) - ONE) / h + ONE)) * d1
                    - (alpha_t * ((np.exp(-h) - ONE + h) / h**2 - np.float32(0.5))) * d2)
        e2 = np.exp(np.float32(-2.0) * h)
        return ((sigma_t / sigma_s0 * np.exp(-h)) * sample + (alpha_t * (ONE - e2)) * m0
                + (alpha_t * ((ONE - e2) / (np.float32(-2.0) * h) + ONE)) * d1
                + (alpha_t * ((ONE - e2 - np.float32(2.0) * h) / (np.float32(2.0) * h) ** 2 - np.float32(0.5))) * d2
                + sigma_t * np.sqrt(ONE - np.exp(-2 * h)) * noise)
