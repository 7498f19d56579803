"""numpy schedulers vs diffusers: timesteps, every step's scaled input and sample, img2img and add_noise.

References come from tests/fixtures/make_scheduler_refs.py (diffusers 0.42, torch CPU). Each case is
re-run here with the same fake denoiser, each step from diffusers' sample (teacher forcing): every
scaled input and every step's result must be within TOL of diffusers'.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sdc.errors import ConfigError, InputError, UnsupportedConfigError
from sdc.runtime.schedulers import ALIASES, SCHEDULERS, Scheduler, available, from_config

REFS = Path(__file__).resolve().parents[1] / "fixtures" / "refs" / "schedulers"
TOL = 1e-5
SCALE_FREE = 16.0  # |samples| up to this are held to TOL absolute (see max_err)
DOC = json.loads((REFS / "cases.json").read_text())
CASES = {c["id"]: c for c in DOC["cases"]}
SD15 = DOC["bases"]["sd15"]


@lru_cache(maxsize=1)
def data() -> dict[str, np.ndarray]:
    with np.load(REFS / "data.npz") as z:
        return {k: z[k] for k in z.files}


def arrays(case: dict) -> dict[str, np.ndarray]:
    """Unpack a case's float32 block by its layout (see make_scheduler_refs.pack)."""
    block = data()[case["id"]]
    return {k: block[r0:r0 + n].reshape(shape) for k, (r0, n, shape) in case["layout"].items()}


def fake_model(sample: np.ndarray, t: float, pattern: np.ndarray, alphas_cumprod: np.ndarray,
               prediction_type: str) -> np.ndarray:
    """Same as make_scheduler_refs.fake_model: the UNet stand-in the references were made with.

    A near-oracle: the prediction that makes `sample` (the UNet input, variance-preserving) a noised
    `0.5 * pattern` at the scheduler's own noise level of timestep t, plus a small wobble. Trajectories
    then converge as real ones do and samples keep SD-like magnitudes (|x| below ~15).
    """
    t = float(t)
    a = float(np.interp(t, np.arange(len(alphas_cumprod)), alphas_cumprod.astype(np.float64)))
    c0, c1 = np.float32(a**0.5), np.float32((1.0 - a) ** 0.5)
    x0 = np.float32(0.5) * pattern + np.float32(0.02 * math.sin(t / 90.0))
    if prediction_type == "sample":
        return x0.astype(np.float32)
    eps = ((sample - c0 * x0) / max(c1, np.float32(1e-3))).astype(np.float32)
    if prediction_type == "v_prediction":
        return (c0 * eps - c1 * x0).astype(np.float32)
    return eps


def build(case: dict) -> Scheduler:
    extra: dict[str, Any] = {"eta": case["eta"]} if case["eta"] else {}
    return from_config(DOC["bases"][case["base"]], case["name"], **case["overrides"], **extra)


def timesteps_of(ref: dict) -> np.ndarray:
    return np.array(ref["values"], dtype=ref["dtype"])


def max_err(got: np.ndarray, ref: np.ndarray, inputs: np.ndarray | None = None) -> float:
    """Max abs error, scaled down when |ref| or |inputs| exceed 16 (then it is relative to that size).

    SD's samples stay below 16 (sigma_max = 14.6) and get the plain 1e-5. Zero-terminal-SNR Euler
    (sigma_max = 4096) and PNDM's warm-up restarted mid-schedule by img2img reach 1e3-1e4, where
    one float32 ulp already exceeds 1e-5 and diffusers' own sigmas (torch's CPU sqrt is not correctly
    rounded) differ from numpy's by an ulp.
    """
    assert got.shape == ref.shape and got.dtype == np.float32, (got.shape, got.dtype, ref.shape)
    assert np.isfinite(got).all()
    finite = np.isfinite(ref)
    if not finite.all():  # UniPC bh1 / predict_x0=False: diffusers' last step is NaN, sdc's the finite limit
        if not finite.any():
            return 0.0
        got, ref = got[finite], ref[finite]
    size = max(float(np.abs(ref).max()), float(np.abs(inputs).max()) if inputs is not None else 0.0)
    scale = max(1.0, size / SCALE_FREE)
    return float(np.abs(got.astype(np.float64) - ref).max()) / scale


def run_steps(sched: Scheduler, x: np.ndarray, timesteps: np.ndarray, ref: dict[str, np.ndarray], prefix: str,
              rng: np.random.Generator) -> tuple[list[float], int]:
    """The pipeline's loop, teacher-forced: every step starts from diffusers' sample and model output.

    Returns the max abs error of each scaled input and step result, and the number of noise draws.
    Teacher forcing keeps the check per step: free-running, rounding differences of an ulp would be
    amplified by the (fake) dynamics and say nothing about the step that caused them.
    """
    pattern, pred = data()["shared__pattern"], sched.config["prediction_type"]
    prev_ref, scaled_ref = ref.get(prefix + "prev", np.zeros((0,))), ref.get(prefix + "scaled")
    assert len(prev_ref) == len(timesteps), "step count"
    errs, draws = [], 0
    for k, t in enumerate(timesteps):
        inp = sched.scale_model_input(x, t)
        if scaled_ref is None:  # identity for all but the sigma-space (Euler) schedulers
            assert np.array_equal(inp, x)
        else:
            errs.append(max_err(inp, scaled_ref[k], x))
            inp = scaled_ref[k]
        noise = None
        if sched.needs_noise:
            noise = rng.standard_normal(sched.step_noise_shape(x), dtype=np.float32)
            draws += 1
        out = sched.step(fake_model(inp, float(t), pattern, sched.alphas_cumprod, pred), t, x, noise=noise)
        errs.append(max_err(out, prev_ref[k], x))
        x = prev_ref[k]
    return errs, draws


def check_timesteps(got: np.ndarray, ref: dict) -> None:
    """Equal, with the diffusers dtype. Float timesteps interpolated from sigmas (Karras, exponential)
    may differ in the last bit: torch's CPU sqrt is not correctly rounded, numpy's is."""
    want = timesteps_of(ref)
    assert got.dtype == want.dtype
    if want.dtype.kind == "f":
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)
    else:
        np.testing.assert_array_equal(got, want)


def case_errors(cid: str) -> dict[str, float]:
    """Max abs error per part of one case (txt2img steps, img2img, add_noise); asserts the exact facts."""
    case, ref, shared = CASES[cid], arrays(CASES[cid]), data()
    seed, errors = DOC["seed"], {}

    sched = build(case)
    assert sched.class_name == case["diffusers_class"]
    sched.set_timesteps(case["steps"])
    check_timesteps(sched.timesteps, case["timesteps"])
    ref_sigma = np.float32(case["init_noise_sigma"])
    np.testing.assert_allclose(sched.init_noise_sigma, ref_sigma, rtol=1e-6)
    x = (shared["shared__latent"] * ref_sigma).astype(np.float32)  # diffusers' start, to the bit
    errs, draws = run_steps(sched, x, sched.timesteps, ref, "", np.random.default_rng(seed))
    assert draws == case["draws"]
    errors["steps"] = float(np.max(errs))  # np.max: a NaN must not hide behind max()

    for strength, i2i in case["img2img"].items():
        rng = np.random.default_rng(seed)
        sched = build(case)
        sched.set_timesteps(case["steps"])
        timesteps, n = sched.get_timesteps(case["steps"], float(strength))
        assert n == i2i["n"]
        check_timesteps(timesteps, i2i["timesteps"])
        noise = rng.standard_normal(shared["shared__image"].shape, dtype=np.float32)
        x = sched.add_noise(shared["shared__image"], noise, np.repeat(timesteps[:1], len(noise)))
        p = f"i2i{strength}_"
        errs, draws = run_steps(sched, ref[p + "noised"], timesteps, ref, p, rng)
        assert draws == i2i["draws"]  # step draws (after the add_noise one)
        errors[f"img2img {strength}"] = float(np.max([max_err(x, ref[p + "noised"]), *errs]))

    sched = build(case)
    sched.set_timesteps(case["steps"])
    noised = sched.add_noise(shared["shared__batch"], shared["shared__batch_noise"],
                             sched.timesteps[case["add_noise_idx"]])
    errors["add_noise"] = max_err(noised, ref["add_noise"])
    return errors


@pytest.mark.parametrize("cid", list(CASES))
def test_matches_diffusers(cid: str) -> None:
    errors = case_errors(cid)
    assert float(np.max(list(errors.values()))) <= TOL, errors


def test_every_scheduler_and_alias_is_covered() -> None:
    covered = {c["name"] for c in CASES.values()} | {c["diffusers_class"] for c in CASES.values()}
    covered.add("FlowMatchEulerDiscreteScheduler")  # tests/runtime/test_flow_match.py (no DDPM schedule to share)
    assert set(ALIASES) <= covered and set(SCHEDULERS) <= covered
    assert set(available()) == set(ALIASES) | set(SCHEDULERS)


@pytest.mark.parametrize("name", [n for n in available() if n != "FlowMatchEulerDiscreteScheduler"])
def test_any_config_builds_any_scheduler(name: str) -> None:
    # the bundle keeps its own class's config; switching scheduler keeps the beta schedule
    for base in DOC["bases"].values():
        sched = from_config(base, name)
        sched.set_timesteps(4)
        assert len(sched.timesteps) >= 4
        if base.get("beta_schedule") == "scaled_linear" and not base.get("rescale_betas_zero_snr"):
            assert sched.betas[0] == np.float32(0.00085**0.5) ** 2


def test_name_defaults_to_config_class() -> None:
    assert from_config(SD15).class_name == "PNDMScheduler"
    assert from_config(SD15, "EulerDiscreteScheduler").class_name == "EulerDiscreteScheduler"
    assert from_config(SD15, "Euler_A").class_name == "EulerAncestralDiscreteScheduler"
    assert from_config(SD15, "dpmpp_2m_karras").config["use_karras_sigmas"] is True
    karras_cfg = {**SD15, "_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": True}
    assert from_config(karras_cfg, "dpmpp_2m").config["use_karras_sigmas"] is False


@pytest.mark.parametrize("name, field, value", [
    ("ddim", "thresholding", True),
    ("dpmpp_2m", "thresholding", True),
    ("DPMSolverMultistepScheduler", "algorithm_type", "dpmsolver"),
    ("unipc", "solver_p", "something"),
    ("euler", "use_beta_sigmas", True),
    ("ddim", "timestep_spacing", "evenly"),
    ("ddim", "prediction_type", "flow"),
    ("pndm", "prediction_type", "sample"),
    ("euler", "beta_schedule", "cubic"),
])
def test_unsupported_values_are_refused_naming_the_field(name: str, field: str, value: Any) -> None:
    with pytest.raises(UnsupportedConfigError) as err:
        from_config({**SD15, field: value}, name)
    assert err.value.field == field and field in str(err.value)


def test_bad_configs_and_inputs() -> None:
    with pytest.raises(ConfigError, match="_class_name"):
        from_config({**SD15, "_class_name": "KarrasVeScheduler"})
    with pytest.raises(ConfigError, match="_class_name"):
        from_config({})
    with pytest.raises(InputError, match="unknown scheduler"):
        from_config(SD15, "heun")
    with pytest.raises(ConfigError, match="not_an_option"):
        from_config(SD15, "euler", not_an_option=1)
    with pytest.raises(ConfigError, match="use_karras_sigmas"):
        from_config(SD15, "euler", use_karras_sigmas=True, use_exponential_sigmas=True)
    with pytest.raises(ConfigError, match="trained_betas"):
        from_config({**SD15, "trained_betas": [0.1, 0.2]}, "ddim")
    with pytest.raises(ConfigError, match="num_train_timesteps"):
        from_config({**SD15, "num_train_timesteps": "1000"}, "ddim")
    with pytest.raises(InputError):
        from_config(SD15, "ddim").set_timesteps(0)
    with pytest.raises(InputError):
        from_config(SD15, "lcm").set_timesteps(51)
    with pytest.raises(InputError):
        from_config(SD15, "ddim").get_timesteps(10, 1.5)


def test_noise_protocol() -> None:
    x = data()["shared__latent"]
    sched = from_config(SD15, "euler_a")
    sched.set_timesteps(3)
    assert sched.needs_noise and sched.step_noise_shape(x) == x.shape
    with pytest.raises(InputError, match="needs noise"):
        sched.step(x, sched.timesteps[0], x)

    lcm = from_config(SD15, "lcm")
    lcm.set_timesteps(2)
    assert lcm.needs_noise
    lcm.step(x, lcm.timesteps[0], x, noise=np.zeros_like(x))
    assert not lcm.needs_noise and lcm.step_noise_shape(x) is None  # the last LCM step is deterministic

    ddim = from_config(SD15, "ddim")
    assert not ddim.needs_noise
    ddim.eta = 0.3
    assert ddim.needs_noise


def test_unipc_last_step_is_finite_where_diffusers_gives_nan() -> None:
    # bh1 (and predict_x0=False) reach 0 * inf at sigma = 0 in diffusers; sdc returns the limit, x0
    x = data()["shared__latent"]
    for overrides in (dict(solver_type="bh1"), dict(predict_x0=False)):
        sched = from_config(SD15, "unipc", **overrides)
        sched.set_timesteps(3)
        for t in sched.timesteps:
            eps = fake_model(x, float(t), data()["shared__pattern"], sched.alphas_cumprod, "epsilon")
            alpha, sigma = sched.alphas_cumprod[int(t)] ** 0.5, (1 - sched.alphas_cumprod[int(t)]) ** 0.5
            x0 = (x - sigma * eps) / alpha
            x = sched.step(eps, t, x)
        assert np.isfinite(x).all()
        if sched.config["predict_x0"]:  # else the limit uses the corrected sample, not visible here
            np.testing.assert_allclose(x, x0, atol=1e-5)


def test_fp16_model_output() -> None:
    # fp16 model outputs are accepted and the samples stay float32
    sched = from_config(SD15, "dpmpp_2m")
    sched.set_timesteps(2)
    x = data()["shared__latent"]
    out = sched.step(x.astype(np.float16), sched.timesteps[0], x)
    assert out.dtype == np.float32 and out.shape == x.shape
