"""scripts/train_tiny.py --smoke: runs in seconds, writes a folder sdc accepts, and twice gives identical weights.

Needs the `train` extra (torch, diffusers, transformers: `pip install -e '.[train]'`); skipped without it.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="module")
def _train_extra() -> None:
    """Skipped without the train extra. Checked when this module's test runs, not at collection: every
    pytest-xdist worker collects every module, and importing torch and diffusers costs each of them seconds."""
    for mod in ("torch", "diffusers", "transformers"):
        pytest.importorskip(mod, reason="training needs the train extra: pip install -e '.[train]'")


ROOT = Path(__file__).resolve().parents[2]


def _train(out: Path) -> None:
    spec = importlib.util.spec_from_file_location("train_tiny", ROOT / "scripts" / "train_tiny.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["train_tiny"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    mod.main(["--smoke", "-o", str(out), "--seed", "3"])


def _weights(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.safetensors"))}


def test_smoke_training_is_deterministic_and_sdc_accepts_it(tmp_path):
    from sdc.graphs import load_config
    from sdc.graphs.configs import load_model_index

    a, b = tmp_path / "a", tmp_path / "b"
    _train(a)
    _train(b)
    wa, wb = _weights(a), _weights(b)
    assert set(wa) == {"text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                       "vae/diffusion_pytorch_model.safetensors"}
    assert wa == wb, [k for k in wa if wa[k] != wb[k]]
    index = load_model_index(a)
    assert index.pipeline_class == "StableDiffusionPipeline"
    for name in ("text_encoder", "unet", "vae_encoder", "vae_decoder"):
        load_config(a, name)  # raises on any option sdc does not support
    assert (a / "tokenizer" / "vocab.json").read_bytes() == (ROOT / "tests/fixtures/sd1-tiny/tokenizer/vocab.json").read_bytes()
    record = json.loads((a / "training.json").read_text())
    assert record["seed"] == 3 and record["recipe"]["unet_steps"] < 10
