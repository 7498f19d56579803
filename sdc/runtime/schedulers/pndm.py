"""PNDM (diffusers' PNDMScheduler) in numpy: PLMS steps, with or without the Runge-Kutta warm-up."""

from __future__ import annotations

from typing import Any

import numpy as np

from sdc.runtime.schedulers.base import BETA_DEFAULTS, DEFAULT_PATH, SPACINGS, Scheduler

PNDM_ORDER = 4  # linear multistep order of PLMS


class PNDMScheduler(Scheduler):
    """Pseudo numerical methods: 4-stage Runge-Kutta warm-up (unless skip_prk_steps), then linear multistep."""

    class_name = "PNDMScheduler"
    defaults = dict(BETA_DEFAULTS, skip_prk_steps=False, set_alpha_to_one=False, prediction_type="epsilon",
                    timestep_spacing="leading", steps_offset=0)
    choices = dict(prediction_type=("epsilon", "v_prediction"), timestep_spacing=SPACINGS)
    uses_begin_index = False  # diffusers' PNDM has no set_begin_index

    def __init__(self, config: dict[str, Any] | None = None, *, path: str = DEFAULT_PATH, **overrides: Any):
        super().__init__(config, path=path, **overrides)
        self.final_alpha_cumprod = np.float32(1.0) if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]
        self.prk_timesteps = np.zeros(0, dtype=np.int64)
        self._reset()

    def _reset(self) -> None:
        self.counter = 0
        self.ets: list[np.ndarray] = []
        self.cur_model_output: Any = 0
        self.cur_sample: np.ndarray | None = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self.num_inference_steps = self._check_steps(num_inference_steps)
        cfg = self.config
        n_train = cfg["num_train_timesteps"]
        # ascending here, unlike the other schedulers: PNDM reverses after adding the warm-up points
        if cfg["timestep_spacing"] == "linspace":
            ts = np.linspace(0, n_train - 1, n).round().astype(np.int64)
        elif cfg["timestep_spacing"] == "leading":
            ts = (np.arange(0, n) * (n_train // n)).round() + cfg["steps_offset"]
        else:
            ts = np.round(np.arange(n_train, 0, -n_train / n))[::-1].astype(np.int64) - 1
        self._timesteps = ts
        if cfg["skip_prk_steps"]:
            # PLMS warm-up runs the second-to-last point twice (a predictor and a corrector evaluation)
            self.prk_timesteps = np.zeros(0, dtype=np.int64)
            plms = np.concatenate([ts[:-1], ts[-2:-1], ts[-1:]])[::-1].copy()
        else:
            prk = np.array(ts[-PNDM_ORDER:]).repeat(2) + np.tile(np.array([0, n_train // n // 2]), PNDM_ORDER)
            self.prk_timesteps = (prk[:-1].repeat(2)[1:-1])[::-1].copy()
            plms = ts[:-3][::-1].copy()
        self.plms_timesteps = plms
        self.timesteps = np.concatenate([self.prk_timesteps, plms]).astype(np.int64)
        self._reset()

    def step(self, model_output: np.ndarray, timestep: Any, sample: np.ndarray,
             noise: np.ndarray | None = None) -> np.ndarray:
        model_output, sample = self._prepare(model_output, sample)
        if self.counter < len(self.prk_timesteps) and not self.config["skip_prk_steps"]:
            prev = self._step_prk(model_output, int(timestep), sample)
        else:
            prev = self._step_plms(model_output, int(timestep), sample)
        self.counter += 1
        return prev.astype(np.float32)

    def _step_prk(self, model_output: np.ndarray, t: int, sample: np.ndarray) -> np.ndarray:
        half = self.config["num_train_timesteps"] // self.num_inference_steps // 2
        prev_t = t - (0 if self.counter % 2 else half)
        t = int(self.prk_timesteps[self.counter // 4 * 4])
        stage = self.counter % 4
        if stage == 0:
            self.cur_model_output = self.cur_model_output + 1 / 6 * model_output
            self.ets.append(model_output)
            self.cur_sample = sample
        elif stage in (1, 2):
            self.cur_model_output = self.cur_model_output + 1 / 3 * model_output
        else:
            model_output = self.cur_model_output + 1 / 6 * model_output
            self.cur_model_output = 0
        cur_sample = self.cur_sample if self.cur_sample is not None else sample
        return self._prev_sample(cur_sample, t, prev_t, model_output)

    def _step_plms(self, model_output: np.ndarray, t: int, sample: np.ndarray) -> np.ndarray:
        stride = self.config["num_train_timesteps"] // self.num_inference_steps
        prev_t = t - stride
        if self.counter != 1:
            self.ets = self.ets[-3:]
            self.ets.append(model_output)
        else:  # the repeated warm-up point: re-evaluate the first step from its start
            prev_t, t = t, t + stride
        ets = self.ets
        if len(ets) == 1 and self.counter == 0:
            self.cur_sample = sample
        elif len(ets) == 1 and self.counter == 1:
            model_output = (model_output + ets[-1]) / 2
            sample, self.cur_sample = self.cur_sample, None
        elif len(ets) == 2:
            model_output = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            model_output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            model_output = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        return self._prev_sample(sample, t, prev_t, model_output)

    def _prev_sample(self, sample: np.ndarray, t: int, prev_t: int, model_output: np.ndarray) -> np.ndarray:
        """x_{t-1} from x_t and the (combined) noise estimate: formula (9) of the PNDM paper."""
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        b_t, b_prev = np.float32(1.0) - a_t, np.float32(1.0) - a_prev
        if self.config["prediction_type"] == "v_prediction":
            model_output = a_t**0.5 * model_output + b_t**0.5 * sample
        sample_coeff = (a_prev / a_t) ** 0.5
        denom = a_t * b_prev**0.5 + (a_t * b_t * a_prev) ** 0.5
        return sample_coeff * sample - (a_prev - a_t) * model_output / denom
