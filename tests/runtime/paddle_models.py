"""Test helper: Paddle submodels from `sdc.graphs.load` behind the runtime's `models[name](**inputs) -> dict` interface.

Lets pipeline tests run against a diffusers fixture folder before (or without) building a bundle.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

# DESIGN.md's contract table: positional forward inputs and the outputs they return, in order.
CONTRACT: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "text_encoder": (("input_ids",), ("last_hidden_state", "pooler_output", "hidden_states_penultimate")),
    "unet": (("sample", "timestep", "encoder_hidden_states"), ("out_sample",)),
    "vae_encoder": (("sample",), ("latent_parameters",)),
    "vae_decoder": (("latent_sample",), ("sample",)),
}


class PaddleModel:
    """One Paddle layer called with named numpy inputs, returning named numpy outputs."""

    def __init__(self, layer, inputs: tuple[str, ...], outputs: tuple[str, ...]):
        self.layer, self.inputs, self.outputs = layer, inputs, outputs

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        import paddle

        missing = set(self.inputs) - set(inputs)
        if missing:
            raise TypeError(f"missing inputs {sorted(missing)}")
        with paddle.no_grad():
            out = self.layer(*[paddle.to_tensor(np.ascontiguousarray(inputs[k])) for k in self.inputs])
        out = out if isinstance(out, (tuple, list)) else (out,)
        return {name: o.numpy() for name, o in zip(self.outputs, out)}


def load_models(model_dir: str | Path, names: tuple[str, ...] = tuple(CONTRACT)) -> dict[str, Callable]:
    """`models` dict for StableDiffusionPipeline from a diffusers folder, on Paddle's CPU backend."""
    import paddle

    import sdc.graphs

    paddle.set_device("cpu")
    return {name: PaddleModel(sdc.graphs.load(model_dir, name), *CONTRACT[name]) for name in names}
