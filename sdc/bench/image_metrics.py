"""Image and latent agreement between two generations: PSNR, SSIM and relative latent error (numpy only).

SSIM follows Wang et al. 2004 as scikit-image computes it with `gaussian_weights=True`: an 11-tap
Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, data range 1, on each RGB channel, averaged.
Written here to keep `sdc compare` free of scikit-image and SciPy.
"""

from __future__ import annotations

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of two float images in [0, data_range]; inf when equal."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range ** 2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _filter(img: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable 'valid' filtering of a 2-D array."""
    k = len(w)
    rows = np.lib.stride_tricks.sliding_window_view(img, k, axis=0) @ w
    return np.lib.stride_tricks.sliding_window_view(rows, k, axis=1) @ w


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Mean structural similarity of two HxW or HxWxC float images (channels averaged).

    Images smaller than the 11-pixel window use a window as large as the image's smaller side (odd).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim == 3:
        return float(np.mean([ssim(a[..., c], b[..., c], data_range) for c in range(a.shape[2])]))
    size = min(11, min(a.shape) - (1 - min(a.shape) % 2))
    w = _gaussian_window(size, 1.5 * size / 11)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = _filter(a, w), _filter(b, w)
    # Unbiased (co)variances, as scikit-image: scale by N / (N - 1) of the window's effective size.
    n = size * size
    cov = n / (n - 1)
    var_a = cov * (_filter(a * a, w) - mu_a ** 2)
    var_b = cov * (_filter(b * b, w) - mu_b ** 2)
    cov_ab = cov * (_filter(a * b, w) - mu_a * mu_b)
    s = ((2 * mu_a * mu_b + c1) * (2 * cov_ab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def latent_rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| over the whole latent tensor."""
    b64 = b.astype(np.float64)
    return float(np.linalg.norm(a.astype(np.float64) - b64) / max(np.linalg.norm(b64), 1e-30))
