"""Sigma-space helpers shared by the Euler, DPM-Solver and UniPC schedulers (diffusers' formulas)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

KARRAS_RHO = 7.0  # the value of the Karras et al. paper, fixed in diffusers


def train_sigmas(alphas_cumprod: np.ndarray) -> np.ndarray:
    """sqrt((1 - alpha_bar) / alpha_bar) per training timestep, float32 as torch computes it."""
    return ((np.float32(1.0) - alphas_cumprod) / alphas_cumprod) ** 0.5


def sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep of each sigma by interpolating log-sigma (diffusers' _sigma_to_t).

    Vectorised over `sigmas`; each column repeats diffusers' per-sigma arithmetic exactly.
    """
    sigmas = np.asarray(sigmas)
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    dists = log_sigma[np.newaxis, :] - log_sigmas[:, np.newaxis]
    low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    return ((1 - w) * low_idx + w * high_idx).reshape(sigmas.shape)


def _bounds(in_sigmas: np.ndarray, sigma_min: float | None, sigma_max: float | None) -> tuple[float, float]:
    lo = sigma_min if sigma_min is not None else float(in_sigmas[-1])
    hi = sigma_max if sigma_max is not None else float(in_sigmas[0])
    return lo, hi


def karras_sigmas(in_sigmas: np.ndarray, n: int, sigma_min: float | None = None,
                  sigma_max: float | None = None) -> np.ndarray:
    """Karras et al. (2022) noise levels between the ends of the descending `in_sigmas`, float64."""
    lo, hi = _bounds(in_sigmas, sigma_min, sigma_max)
    ramp = np.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = lo ** (1 / KARRAS_RHO), hi ** (1 / KARRAS_RHO)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** KARRAS_RHO


def exponential_sigmas(in_sigmas: np.ndarray, n: int, sigma_min: float | None = None,
                       sigma_max: float | None = None) -> np.ndarray:
    """Noise levels evenly spaced in log-sigma between the ends of `in_sigmas`, float64."""
    lo, hi = _bounds(in_sigmas, sigma_min, sigma_max)
    return np.exp(np.linspace(math.log(hi), math.log(lo), n))


def alpha_sigma(sigma: Any) -> tuple[Any, Any]:
    """(alpha_t, sigma_t) of the variance-preserving process at noise level `sigma` (float32 in, float32 out)."""
    alpha_t = np.float32(1.0) / ((sigma**2 + np.float32(1.0)) ** 0.5)
    return alpha_t, sigma * alpha_t


def log_snr(alpha_t: Any, sigma_t: Any) -> Any:
    """lambda = log(alpha) - log(sigma); +inf at sigma = 0 (the final step), as torch gives silently."""
    with np.errstate(divide="ignore"):
        return np.log(alpha_t) - np.log(sigma_t)
