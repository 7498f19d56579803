"""UniPC (diffusers' UniPCMultistepScheduler) in numpy: unified predictor-corrector, bh1/bh2, any order."""

from __future__ import annotations

from typing import Any

import numpy as np

from sdc.errors import ConfigError
from sdc.runtime.schedulers import sigmas as sg
from sdc.runtime.schedulers.base import BETA_DEFAULTS, SPACINGS
from sdc.runtime.schedulers.multistep import MultistepScheduler

ONE = np.float32(1.0)


class UniPCMultistepScheduler(MultistepScheduler):
    """UniP predictor of order `solver_order` plus a UniC corrector applied at the start of the next step."""

    class_name = "UniPCMultistepScheduler"
    defaults = dict(BETA_DEFAULTS, solver_order=2, prediction_type="epsilon", thresholding=False,
                    dynamic_thresholding_ratio=0.995, sample_max_value=1.0, predict_x0=True, solver_type="bh2",
                    lower_order_final=True, disable_corrector=[], solver_p=None, use_karras_sigmas=False,
                    use_exponential_sigmas=False, use_beta_sigmas=False, use_flow_sigmas=False, flow_shift=1.0,
                    timestep_spacing="linspace", steps_offset=0, final_sigmas_type="zero",
                    rescale_betas_zero_snr=False, use_dynamic_shifting=False, time_shift_type="exponential",
                    sigma_min=None, sigma_max=None, shift_terminal=None)
    choices = dict(prediction_type=("epsilon", "sample", "v_prediction"), thresholding=(False,),
                   solver_type=("bh1", "bh2"), solver_p=(None,), use_beta_sigmas=(False,), use_flow_sigmas=(False,),
                   timestep_spacing=SPACINGS, final_sigmas_type=("zero", "sigma_min"), use_dynamic_shifting=(False,),
                   shift_terminal=(None,), predict_x0=(True, False))

    def _normalize(self) -> None:
        # diffusers' __init__ maps DPM-Solver solver types (a DPM config reused for UniPC) onto bh2
        if self.config["solver_type"] in ("midpoint", "heun", "logrho"):
            self.config["solver_type"] = "bh2"

    def _validate(self) -> None:
        super()._validate()
        order = self.config["solver_order"]
        if not isinstance(order, int) or isinstance(order, bool) or order < 1:
            raise ConfigError(self.path, "solver_order", f"expected an integer >= 1, got {order!r}")
        if self.config["use_karras_sigmas"] and self.config["use_exponential_sigmas"]:
            raise ConfigError(self.path, "use_karras_sigmas",
                              "use_karras_sigmas and use_exponential_sigmas exclude each other")

    def _timesteps_and_sigmas(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        n_train = cfg["num_train_timesteps"]
        if cfg["timestep_spacing"] == "linspace":
            ts = np.linspace(0, n_train - 1, n + 1).round()[::-1][:-1].copy().astype(np.int64)
        elif cfg["timestep_spacing"] == "leading":
            ts = (np.arange(0, n + 1) * (n_train // (n + 1))).round()[::-1][:-1].copy().astype(np.int64)
            ts = ts + cfg["steps_offset"]
        else:
            ts = np.arange(n_train, 0, -n_train / n).round().copy().astype(np.int64) - 1
        train = sg.train_sigmas(self.alphas_cumprod)
        log_sigmas = np.log(train)
        bounds = (cfg["sigma_min"], cfg["sigma_max"])
        if cfg["use_karras_sigmas"] or cfg["use_exponential_sigmas"]:
            convert = sg.karras_sigmas if cfg["use_karras_sigmas"] else sg.exponential_sigmas
            sigmas = convert(train[::-1].copy(), n, *bounds)
            ts = sg.sigma_to_t(sigmas, log_sigmas)
            if cfg["use_karras_sigmas"]:
                ts = ts.round()
            last = sigmas[-1]  # unlike DPM-Solver, UniPC's "sigma_min" here is the last Karras level
        else:
            sigmas = np.interp(ts, np.arange(0, len(train)), train)
            last = train[0]
        last = last if cfg["final_sigmas_type"] == "sigma_min" else 0.0
        return ts.astype(np.int64), np.concatenate([sigmas, [last]]).astype(np.float32)

    def _reset_history(self) -> None:
        super()._reset_history()
        self.last_sample: np.ndarray | None = None
        self.this_order = 0

    def convert_model_output(self, model_output: np.ndarray, sample: np.ndarray) -> np.ndarray:
        """Data (x0) prediction when predict_x0, else noise prediction."""
        alpha_t, sigma_t = sg.alpha_sigma(self.sigmas[self._step_index])
        pred = self.config["prediction_type"]
        if self.config["predict_x0"]:
            if pred == "epsilon":
                return (sample - sigma_t * model_output) / alpha_t
            if pred == "sample":
                return model_output
            return alpha_t * sample - sigma_t * model_output
        if pred == "epsilon":
            return model_output
        if pred == "sample":
            return (sample - alpha_t * model_output) / sigma_t
        return alpha_t * model_output + sigma_t * sample

    def step(self, model_output: np.ndarray, timestep: Any, sample: np.ndarray,
             noise: np.ndarray | None = None) -> np.ndarray:
        model_output, sample = self._prepare(model_output, sample)
        self._init_step_index(timestep)
        cfg, i = self.config, self._step_index
        use_corrector = i > 0 and (i - 1) not in cfg["disable_corrector"] and self.last_sample is not None
        converted = self.convert_model_output(model_output, sample)
        if use_corrector:
            sample = self._update(sample, converted, corrector=True).astype(np.float32)
        self._push(converted)
        order = cfg["solver_order"]
        if cfg["lower_order_final"]:
            order = min(order, len(self.timesteps) - i)
        self.this_order = min(order, self.lower_order_nums + 1)  # warm-up: not enough history yet
        self.last_sample = sample
        prev = self._update(sample, None, corrector=False)
        self.lower_order_nums = min(self.lower_order_nums + 1, cfg["solver_order"])
        self._step_index = i + 1
        return prev.astype(np.float32)

    def _update(self, x: np.ndarray, model_t: np.ndarray | None, corrector: bool) -> np.ndarray:
        """UniP (predictor: x_s0 -> x_t) or UniC (corrector of the last prediction), diffusers' bh updates.

        The corrector runs before the new output joins the history, one index later than the predictor:
        it recomputes the step from `last_sample` (s0 = i - 1) to the current point (t = i).
        """
        order = self.this_order
        i = self._step_index - 1 if corrector else self._step_index
        if corrector:
            x = self.last_sample
        m0 = self.model_outputs[-1]
        alpha_t, sigma_t = sg.alpha_sigma(self.sigmas[i + 1])
        alpha_s0, sigma_s0 = sg.alpha_sigma(self.sigmas[i])
        lambda_s0 = sg.log_snr(alpha_s0, sigma_s0)
        h = sg.log_snr(alpha_t, sigma_t) - lambda_s0
        rks, d1s = [], []
        for k in range(1, order):
            mi = self.model_outputs[-(k + 1)]
            rk = (sg.log_snr(*sg.alpha_sigma(self.sigmas[i - k])) - lambda_s0) / h
            rks.append(rk)
            d1s.append((mi - m0) / rk)
        rks.append(ONE)
        rks_a = np.array(rks, dtype=np.float32)
        predict_x0 = self.config["predict_x0"]
        # at sigma_t = 0 (h = inf) these coefficients go inf/NaN, silently in torch; only the ones
        # diffusers actually uses there are finite (see the final-step branch below)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            hh = -h if predict_x0 else h
            h_phi_1 = np.expm1(hh)  # h * phi_1(h) = e^h - 1
            h_phi_k = h_phi_1 / hh - ONE
            b_h = hh if self.config["solver_type"] == "bh1" else np.expm1(hh)
            factorial_i, rows, b = 1, [], []
            for k in range(1, order + 1):
                rows.append(rks_a ** (k - 1))
                b.append(h_phi_k * factorial_i / b_h)
                factorial_i *= k + 1
                h_phi_k = h_phi_k / hh - 1 / factorial_i
        r_mat, b_vec = np.stack(rows).astype(np.float32), np.array(b, dtype=np.float32)
        if not corrector and not d1s and sigma_t == 0 and not predict_x0:
            # last step to sigma = 0: diffusers computes 0 * inf here (NaN); the limit is the data
            # prediction alpha_t / alpha_s0 * (x - sigma_s0 * eps)
            return alpha_t / alpha_s0 * x - (alpha_t * sigma_s0 / alpha_s0) * m0
        if predict_x0:
            x_t_, scale = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0, alpha_t * b_h
        else:
            x_t_, scale = alpha_t / alpha_s0 * x - sigma_t * h_phi_1 * m0, sigma_t * b_h
        if corrector:
            rhos = np.array([0.5], np.float32) if order == 1 else np.linalg.solve(r_mat, b_vec).astype(np.float32)
            res = sum((r * d for r, d in zip(rhos[:-1], d1s)), np.float32(0.0))
            return x_t_ - scale * (res + rhos[-1] * (model_t - m0))
        if not d1s:
            return x_t_  # diffusers subtracts scale * 0: NaN for bh1 at sigma = 0 (scale = -inf), else x_t_
        rhos = (np.array([0.5], np.float32) if order == 2
                else np.linalg.solve(r_mat[:-1, :-1], b_vec[:-1]).astype(np.float32))
        return x_t_ - scale * sum((r * d for r, d in zip(rhos, d1s)), np.float32(0.0))
