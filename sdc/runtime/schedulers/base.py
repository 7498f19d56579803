"""Shared machinery of the numpy schedulers: config resolution, beta schedules, step bookkeeping, add_noise.

Every scheduler mirrors one diffusers class and matches it to float32 rounding: arrays diffusers keeps
as float32 torch tensors are float32 numpy arrays here, values it computes in float64 numpy are
float64 here, and scalar coefficients stay numpy float32 scalars so that NumPy 2's promotion rules
give float32 results as torch does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from sdc.errors import ConfigError, InputError, UnsupportedConfigError

DEFAULT_PATH = "scheduler/scheduler_config.json"
SPACINGS = ("leading", "trailing", "linspace")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
ZERO_SNR_ALPHA = np.float32(2.0**-24)  # diffusers' stand-in for a zero terminal alpha_bar (keeps sigma finite)
# Options every class shares, with diffusers' defaults.
BETA_DEFAULTS: dict[str, Any] = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                                     beta_schedule="linear", trained_betas=None)


def f32(x: Any) -> np.ndarray:
    """An input array as float32 (model outputs may come back as float16 from an fp16 UNet)."""
    return np.asarray(x, dtype=np.float32)


def linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace(start, end, steps, dtype=float32), bit for bit.

    torch's CPU kernel fills the first half as start + step * i and the second half as
    end - step * (steps - 1 - i), fused multiply-adds in float32; float64 arithmetic on the
    float32 operands then one rounding reproduces it exactly.
    """
    a, b = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([a], dtype=np.float32)
    step = np.float64((b - a) / np.float32(steps - 1))
    i = np.arange(steps)
    out = np.where(i < steps // 2, np.float64(a) + step * i, np.float64(b) - step * (steps - 1 - i))
    return out.astype(np.float32)


def betas_for_alpha_bar(n: int, max_beta: float = 0.999) -> np.ndarray:
    """The "squaredcos_cap_v2" (cosine) schedule, computed in Python floats like diffusers."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)],
                    dtype=np.float32)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Betas rescaled to zero terminal SNR (arXiv 2305.08891, algorithm 1), in float32 like diffusers."""
    alphas_bar_sqrt = np.sqrt(cumprod_f32(np.float32(1.0) - betas))
    first, last = alphas_bar_sqrt[0].copy(), alphas_bar_sqrt[-1].copy()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (np.float32(1.0) - alphas).astype(np.float32)


def cumprod_f32(x: np.ndarray) -> np.ndarray:
    """torch.cumprod on float32: torch accumulates in double, so a float32 running product drifts from it."""
    return np.cumprod(x.astype(np.float64)).astype(np.float32)


def make_betas(cfg: Mapping[str, Any], path: str) -> np.ndarray:
    """float32 betas from a resolved config, as every diffusers scheduler's __init__ builds them."""
    n = cfg["num_train_timesteps"]
    if cfg.get("trained_betas") is not None:
        betas = np.asarray(cfg["trained_betas"], dtype=np.float32)
        if betas.ndim != 1 or len(betas) != n:
            raise ConfigError(path, "trained_betas",
                              f"expected {n} values (num_train_timesteps), got shape {betas.shape}")
    elif cfg["beta_schedule"] == "linear":
        betas = linspace_f32(cfg["beta_start"], cfg["beta_end"], n)
    elif cfg["beta_schedule"] == "scaled_linear":
        betas = linspace_f32(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, n) ** 2
    else:  # squaredcos_cap_v2; other names were refused by Scheduler._validate
        betas = betas_for_alpha_bar(n)
    if cfg.get("rescale_betas_zero_snr"):
        betas = rescale_zero_terminal_snr(betas)
    return betas


def base_timesteps(spacing: str, n_train: int, n: int, steps_offset: int) -> np.ndarray:
    """Descending timesteps of the DDIM/Euler family before the class's own rounding and dtype.

    linspace: float64, unrounded (Euler keeps the fractions, DDIM rounds); leading: int64;
    trailing: float64 whole numbers.
    """
    if spacing == "linspace":
        return np.linspace(0, n_train - 1, n)[::-1].copy()
    if spacing == "leading":
        return (np.arange(0, n) * (n_train // n))[::-1].copy() + steps_offset
    return np.round(np.arange(n_train, 0, -n_train / n)) - 1


class Scheduler:
    """Base of the numpy schedulers; subclasses mirror one diffusers class each.

    Driven exactly like diffusers' StableDiffusionPipeline drives its scheduler: `set_timesteps`,
    then per timestep `scale_model_input` and `step`. Randomness is never drawn here: when
    `needs_noise` is true the caller passes `noise` (shape `step_noise_shape(sample)`) to `step`.
    """

    class_name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}  # the diffusers __init__ signature: these keys, these defaults
    choices: ClassVar[dict[str, tuple]] = {}  # option -> values sdc implements (others are refused)
    order: ClassVar[int] = 1
    uses_begin_index: ClassVar[bool] = True  # diffusers class has set_begin_index (img2img uses it)
    missing_index_is_last: ClassVar[bool] = False  # unknown timestep: last index (multistep) or error
    uses_betas: ClassVar[bool] = True  # a DDPM noise schedule (flow matching has none)

    def __init__(self, config: Mapping[str, Any] | None = None, *, path: str = DEFAULT_PATH, **overrides: Any):
        self.path = path
        raw = dict(config or {})
        # diffusers drops keys it filled from defaults when a config moves to another class
        used_defaults = set(raw.pop("_use_default_values", None) or ())
        raw = {k: v for k, v in raw.items() if k not in used_defaults and not k.startswith("_")}
        for key in overrides:
            if key not in self.defaults:
                raise ConfigError(path, key, f"not an option of {self.class_name}")
        # like diffusers' from_config: keys of this class come from the config, the rest are defaults
        cfg = dict(self.defaults)
        cfg.update({k: v for k, v in raw.items() if k in self.defaults})
        cfg.update(overrides)
        self.config: dict[str, Any] = cfg
        # keys of other classes stay readable, as diffusers registers them in the config too
        self.extra_config: dict[str, Any] = {k: v for k, v in raw.items() if k not in self.defaults}
        self._normalize()
        self._validate()
        if self.uses_betas:
            self.betas = make_betas(cfg, path)
            self.alphas_cumprod = cumprod_f32(np.float32(1.0) - self.betas)
        self.num_inference_steps: int | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self.timesteps: np.ndarray = np.zeros(0, dtype=np.int64)

    # ------------------------------------------------------------------ config

    def _normalize(self) -> None:
        """Hook: rewrite option values the diffusers class rewrites in its __init__."""

    def _validate(self) -> None:
        """Refuse values sdc does not implement (and values diffusers would reject), naming the field."""
        cfg = self.config
        n = cfg.get("num_train_timesteps")
        if not isinstance(n, int) or isinstance(n, bool) or n < 2:
            raise ConfigError(self.path, "num_train_timesteps", f"expected an integer >= 2, got {n!r}")
        checks = {"beta_schedule": BETA_SCHEDULES, **self.choices}
        for field, allowed in checks.items():
            if field == "beta_schedule" and cfg.get("trained_betas") is not None:
                continue  # trained betas bypass the named schedule
            if field in cfg and cfg[field] not in allowed:
                raise UnsupportedConfigError(self.path, field, cfg[field], ", ".join(map(repr, allowed)))
        for field in ("beta_start", "beta_end"):
            if field in cfg and not isinstance(cfg[field], (int, float)):
                raise ConfigError(self.path, field, f"expected a number, got {cfg[field]!r}")

    def _check_steps(self, num_inference_steps: int) -> int:
        n = int(num_inference_steps)
        if n < 1:
            raise InputError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if n > self.config["num_train_timesteps"]:
            raise InputError(f"num_inference_steps {n} exceeds num_train_timesteps "
                             f"{self.config['num_train_timesteps']} of {self.path}")
        return n

    # ------------------------------------------------------------------ the uniform API

    init_noise_sigma: float = 1.0

    def set_timesteps(self, num_inference_steps: int) -> None:
        raise NotImplementedError

    def scale_model_input(self, sample: np.ndarray, timestep: Any = None) -> np.ndarray:
        """The UNet input for `sample` at `timestep` (identity unless the scheduler works in sigma space)."""
        return sample

    def step(self, model_output: np.ndarray, timestep: Any, sample: np.ndarray,
             noise: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def add_noise(self, original: np.ndarray, noise: np.ndarray, timesteps: Any) -> np.ndarray:
        """Forward diffusion to `timesteps` (one per batch item, or one for all): DDPM form by default."""
        original, noise = f32(original), f32(noise)
        idx = np.atleast_1d(np.asarray(timesteps)).astype(np.int64).ravel()
        ac = self.alphas_cumprod[idx].reshape((-1,) + (1,) * (original.ndim - 1))
        return ac**0.5 * original + (np.float32(1.0) - ac) ** 0.5 * noise

    def get_timesteps(self, num_inference_steps: int, strength: float) -> tuple[np.ndarray, int]:
        """Image-to-image schedule, as StableDiffusionImg2ImgPipeline.get_timesteps: the last
        `strength` part of the timesteps (call after set_timesteps) and how many steps remain."""
        if not 0.0 <= strength <= 1.0:
            raise InputError(f"strength must be in [0, 1], got {strength}")
        init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
        t_start = max(num_inference_steps - init_timestep, 0)
        if self.uses_begin_index:
            self.set_begin_index(t_start * self.order)
        return self.timesteps[t_start * self.order:], num_inference_steps - t_start

    @property
    def needs_noise(self) -> bool:
        """Whether the next `step` call consumes random noise (the caller then draws it)."""
        return self._noise_at(self._next_index())

    def step_noise_shape(self, sample: np.ndarray) -> tuple[int, ...] | None:
        """Shape of the standard-normal draw the next step needs, or None when it needs none."""
        return tuple(np.shape(sample)) if self.needs_noise else None

    def _noise_at(self, step_index: int) -> bool:
        return False

    # ------------------------------------------------------------------ step index bookkeeping

    @property
    def step_index(self) -> int | None:
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        self._begin_index = int(begin_index)

    def _next_index(self) -> int:
        """Index of the next step: the running one, else where the first step will start."""
        if self._step_index is not None:
            return self._step_index
        return self._begin_index if self._begin_index is not None else 0

    def index_for_timestep(self, timestep: Any, schedule: np.ndarray | None = None) -> int:
        """Position of `timestep` in the schedule; the second match for repeated timesteps, as diffusers."""
        schedule = self.timesteps if schedule is None else schedule
        hits = np.flatnonzero(schedule == np.asarray(timestep))
        if len(hits) == 0:
            if self.missing_index_is_last:
                return len(self.timesteps) - 1
            raise InputError(f"timestep {timestep} is not in {self.class_name}'s schedule; pass one of .timesteps")
        return int(hits[1] if len(hits) > 1 else hits[0])

    def _init_step_index(self, timestep: Any) -> None:
        if self._step_index is None:
            self._step_index = self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index

    def _sigma_step_indices(self, timesteps: Any) -> list[int]:
        """Step indices add_noise uses for sigma-based schedulers (begin index once img2img set it)."""
        ts = np.atleast_1d(np.asarray(timesteps)).ravel()
        if self._begin_index is None:
            return [self.index_for_timestep(t) for t in ts]
        index = self._step_index if self._step_index is not None else self._begin_index
        return [index] * len(ts)

    def _prepare(self, model_output: np.ndarray, sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Start of every step: set_timesteps must have run; arrays as float32."""
        if self.num_inference_steps is None:
            raise RuntimeError(f"{self.class_name}: call set_timesteps before step")
        return f32(model_output), f32(sample)

    def _noise(self, noise: np.ndarray | None, sample: np.ndarray) -> np.ndarray:
        """The caller's noise for this step, checked."""
        if noise is None:
            raise InputError(f"{self.class_name}.step needs noise of shape {tuple(sample.shape)} at this step "
                             "(see needs_noise / step_noise_shape)")
        noise = f32(noise)
        if noise.shape != sample.shape:
            raise InputError(f"{self.class_name}.step: noise shape {noise.shape} != sample shape {sample.shape}")
        return noise

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"
