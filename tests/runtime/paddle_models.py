"""Test helper: Paddle submodels from `sdc.graphs.load` behind the runtime's `models[name](**inputs) -> dict` interface.

Lets pipeline tests run against a diffusers fixture folder before (or without) building a bundle.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

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


def load_models(model_dir: str | Path, names: tuple[str, ...] | None = None) -> dict[str, Callable]:
    """`models` dict for a runtime pipeline from a diffusers folder, on Paddle's CPU backend.

    names: the submodels to load; by default every one the folder has. Inputs and outputs come from
    each submodel's spec (SDXL: the UNet's text_embeds/time_ids, text_encoder_2's text_embeds).
    """
    import paddle

    import sdc.graphs
    from sdc.graphs.configs import load_model_index
    from sdc.graphs.family import resolve_configs
    from sdc.graphs.specs import spec_for

    paddle.set_device("cpu")
    index = load_model_index(Path(model_dir))
    if names is None:
        names = tuple(n for n in sdc.graphs.SUBMODELS if index.has(sdc.graphs.folder_of(n)))
    models = {}
    for name, cfg in resolve_configs(Path(model_dir), index, list(names)).items():
        spec = spec_for(name, cfg)
        models[name] = PaddleModel(sdc.graphs.load(model_dir, name), tuple(spec.input_names), tuple(spec.output_names))
    return models


_PIPELINES: dict[str, object] = {}


def fixture_pipeline(model_dir: str | Path):
    """The runtime's pipeline (SD, SDXL or Flux, as sdc.runtime.loader makes it) over the Paddle submodels of a
    diffusers folder, with the folder's tokenizers and scheduler config; built once per process."""
    from sdc.graphs.configs import load_model_index
    from sdc.runtime.loader import load_tokenizers, make_pipeline
    from sdc.runtime.pipeline import PipelineConfig

    key = str(model_dir)
    if key not in _PIPELINES:
        folder = Path(model_dir)
        family = load_model_index(folder).family
        models = load_models(folder)
        scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
        _PIPELINES[key] = make_pipeline(family, models, load_tokenizers(folder, family, models), scheduler_config,
                                        PipelineConfig.from_diffusers(folder))
    return _PIPELINES[key]
