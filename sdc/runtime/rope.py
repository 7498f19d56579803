"""Flux's rotary position tables in numpy: the transformer graph takes them as inputs (see sdc.graphs.flux).

diffusers' FluxPosEmbed computes them per call in float64 from the (0, row, column) ids; computing them
here keeps float64 and the trigonometry of large positions out of the exported graph, and the runtime
(which never imports Paddle) and the build's validation inputs share this one function.
"""

from __future__ import annotations

import numpy as np


def rope_tables(ids: np.ndarray, axes_dim: tuple[int, ...], theta: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) [tokens, sum(axes_dim)] float32 from ids [tokens, axes], as diffusers' FluxPosEmbed (float64)."""
    cos_out, sin_out = [], []
    pos = ids.astype(np.float32).astype(np.float64)  # diffusers: ids.float(), then float64 frequencies
    for i, dim in enumerate(axes_dim):
        freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64)[: dim // 2] / dim))
        angles = np.outer(pos[:, i], freqs)
        cos_out.append(np.repeat(np.cos(angles), 2, axis=1).astype(np.float32))
        sin_out.append(np.repeat(np.sin(angles), 2, axis=1).astype(np.float32))
    return np.concatenate(cos_out, axis=-1), np.concatenate(sin_out, axis=-1)


def image_ids(rows: int, cols: int) -> np.ndarray:
    """(0, row, column) per packed token, row-major: diffusers' _prepare_latent_image_ids."""
    ids = np.zeros((rows, cols, 3), np.float32)
    ids[..., 1] = np.arange(rows, dtype=np.float32)[:, None]
    ids[..., 2] = np.arange(cols, dtype=np.float32)[None, :]
    return ids.reshape(rows * cols, 3)
