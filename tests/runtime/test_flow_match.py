"""The flow-matching Euler scheduler (Flux) against diffusers' trajectories (tests/fixtures/make_flow_refs.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdc.errors import InputError
from sdc.runtime.schedulers import from_config
from tests.conftest import REFS

DOC = json.loads((REFS / "schedulers" / "flow_match.json").read_text())


def fake_velocity(x: np.ndarray, t: float) -> np.ndarray:
    return (np.sin(x * 1.3 + t / 250.0) - 0.5 * x).astype(np.float32)


@pytest.fixture(scope="module")
def refs():
    with np.load(REFS / "schedulers" / "flow_match.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("name", sorted(DOC))
def test_matches_diffusers(name: str, refs) -> None:
    """Dynamic shifting by image size (exponential and linear), fixed shift, custom and default sigmas."""
    c = DOC[name]
    sched = from_config(c["config"])
    assert sched.class_name == "FlowMatchEulerDiscreteScheduler"
    sigmas = np.linspace(1.0, 1 / c["steps"], c["steps"]) if c["custom_sigmas"] else None
    sched.set_timesteps(None if c["custom_sigmas"] else c["steps"], sigmas=sigmas, mu=c["mu"])
    np.testing.assert_allclose(sched.timesteps, refs[f"{name}/timesteps"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(sched.sigmas, refs[f"{name}/sigmas"], rtol=0, atol=1e-7)
    x = refs["latent"]
    for i, t in enumerate(sched.timesteps):
        x = sched.step(fake_velocity(x, float(t)), t, x)
        np.testing.assert_allclose(x, refs[f"{name}/steps"][i], rtol=0, atol=1e-5)
    sched.set_timesteps(None if c["custom_sigmas"] else c["steps"], sigmas=sigmas, mu=c["mu"])
    noised = sched.add_noise(refs["batch"], refs["batch_noise"], sched.timesteps[c["scale_noise_indices"]])
    np.testing.assert_allclose(noised, refs[f"{name}/scale_noise"], rtol=0, atol=1e-6)


def test_dynamic_shifting_needs_mu_and_sd_pipelines_refuse_it() -> None:
    sched = from_config(DOC["dev_512_10"]["config"])
    with pytest.raises(InputError, match="pass mu"):
        sched.set_timesteps(10)
    from sdc.runtime.pipeline import StableDiffusionPipeline

    pipe = StableDiffusionPipeline({"text_encoder": None, "unet": None, "vae_decoder": None}, lambda t: None,
                                   {"_class_name": "PNDMScheduler"})
    with pytest.raises(InputError, match="flow-matching"):
        pipe.make_scheduler("FlowMatchEulerDiscreteScheduler")
