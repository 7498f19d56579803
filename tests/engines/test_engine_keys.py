"""Engine identity (sdc.engines) and `sdc engines build` where TensorRT is missing. Nothing here needs a GPU; the
TensorRT builder itself is not written yet (said by the command)."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest

from sdc.engines import BuilderSettings, Environment, check_can_use, engine_key, engine_path
from tests.conftest import FIXTURES, run_sdc

ART = {"sha256": "a" * 64, "data_paths": ["unet/model.onnx.data"], "precision": "fp16",
       "precision_record": {"islands": ["n1"]}}
FILES = {"unet/model.onnx.data": {"sha256": "b" * 64}}
PROFILE = {"name": "sd-512", "batch": [1, 1, 4], "dims": {"unet": {"batch": [1, 2, 8]}}}
ENV = Environment("10.13.0", 13, "NVIDIA H100 80GB HBM3", "9.0")


def test_key_is_stable_and_moves_with_every_fact() -> None:
    key = engine_key(ART, FILES, PROFILE, BuilderSettings(), ENV)
    assert key == engine_key(dict(ART), dict(FILES), dict(PROFILE, name="renamed"), BuilderSettings(), ENV)
    assert len(key) == 16 and engine_path(key, "unet", "fp16") == f"engines/{key}/unet.fp16.plan"
    changed = [
        engine_key(dict(ART, sha256="c" * 64), FILES, PROFILE, BuilderSettings(), ENV),
        engine_key(ART, {"unet/model.onnx.data": {"sha256": "d" * 64}}, PROFILE, BuilderSettings(), ENV),
        engine_key(dict(ART, precision="int8"), FILES, PROFILE, BuilderSettings(), ENV),
        engine_key(dict(ART, precision_record={"islands": []}), FILES, PROFILE, BuilderSettings(), ENV),
        engine_key(ART, FILES, dict(PROFILE, dims={"unet": {"batch": [1, 2, 4]}}), BuilderSettings(), ENV),
        engine_key(ART, FILES, PROFILE, BuilderSettings(optimization_level=5), ENV),
        engine_key(ART, FILES, PROFILE, BuilderSettings(), dataclasses.replace(ENV, tensorrt="11.0.0")),
        engine_key(ART, FILES, PROFILE, BuilderSettings(), dataclasses.replace(ENV, compute_capability="8.9")),
    ]
    assert len({key, *changed}) == len(changed) + 1


def test_a_plan_for_another_gpu_or_tensorrt_is_not_loaded() -> None:
    entry = {"environment": dataclasses.asdict(ENV)}
    assert check_can_use(entry, ENV) is None
    why = check_can_use(entry, dataclasses.replace(ENV, compute_capability="8.6", gpu_name="NVIDIA A10"))
    assert why is not None and "built for" in why


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_engines_build_without_tensorrt_says_what_is_missing_and_changes_nothing(tmp_path) -> None:
    from tests.compile.test_bad_input import assert_one_line_error

    out = tmp_path / "p.bundle"
    assert run_sdc("build", FIXTURES / "sd1-tiny", "-o", out, "--only", "vae_decoder", "--profile", "64x64").returncode == 0
    before = {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*")}
    assert_one_line_error(run_sdc("engines", "build", out), "TensorRT is not installed")
    assert {p.relative_to(out): p.stat().st_mtime_ns for p in out.rglob("*")} == before
    plain = tmp_path / "plain.bundle"
    assert run_sdc("build", FIXTURES / "sd1-tiny", "-o", plain, "--only", "vae_decoder").returncode == 0
    assert_one_line_error(run_sdc("engines", "build", plain), "records no shape profile", "--profile")
