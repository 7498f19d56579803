"""Real-size architectures (opt-in: `pytest -m slow`): parameter counts equal diffusers', forwards run.

Random weights, no files: scripts/check_real_size.py holds the published configs. The counts are
those of the public checkpoints (SD 1.5 / SD 2.1 UNet, CLIP ViT-L text encoder, SD VAE), so a
missing or extra layer anywhere in a real-size module fails here even though the tiny fixtures pass.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

paddle = pytest.importorskip("paddle")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("check_real_size", ROOT / "scripts" / "check_real_size.py")
check_real_size = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_real_size)

# Parameter counts of the public diffusers checkpoints.
EXPECTED = {
    ("sd15", "unet"): 859_520_964,
    ("sd21", "unet"): 865_910_724,
    ("sd15", "text_encoder"): 123_060_480,
    ("sdxl", "unet"): 2_567_463_684,
    ("sdxl", "text_encoder_2"): 694_659_840,  # OpenCLIP bigG with its projection
}


@pytest.mark.parametrize("arch, name", sorted(EXPECTED))
def test_parameter_counts(tmp_path, arch, name):
    from sdc.graphs import build, load_config

    check_real_size.write_configs(arch, tmp_path)
    layer = build(name, load_config(tmp_path, name))
    assert sum(int(np.prod(p.shape)) for p in layer.parameters()) == EXPECTED[(arch, name)]
