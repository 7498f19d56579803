"""Engine identity (sdc.engines): content keys and the check that refuses a plan built for another machine."""

from __future__ import annotations

import dataclasses
from sdc.engines import BuilderSettings, Environment, check_can_use, engine_key
from sdc.runtime.bundle import engine_path

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

