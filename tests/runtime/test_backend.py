"""The runtime's choice of backend (sdc.runtime.backend) and the TensorRT model's shape check, on facts given
as data: which TensorRT environment this machine has (or why none), ONNX Runtime's providers, the engines."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sdc.engines import BuilderSettings, Environment, engine_key
from sdc.errors import InputError
from sdc.runtime.backend import choose_backend, usable_engines
from sdc.runtime.tensorrt_model import check_shapes

H100 = Environment("11.4.0", 13, "NVIDIA H100 80GB HBM3", "9.0")
L4 = Environment("11.4.0", 13, "NVIDIA L4", "8.9")
CPU_ONLY = ["CPUExecutionProvider"]
WITH_CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
NO_TRT = "TensorRT is not installed here (pip install tensorrt, on a machine with an NVIDIA GPU and its driver)"


def engine(sub: str, env: Environment, precision: str = "fp16", **changes) -> dict:
    """An entry as sdc.engines.install writes it; its key is computed by `manifest` from the artifact's hashes."""
    return dict({"submodel": sub, "precision": precision, "artifact": f"{sub}/{precision}.onnx", "profile": "p",
                 "dims": {"batch": [1, 2, 4]}, "settings": dataclasses.asdict(BuilderSettings()),
                 "environment": dataclasses.asdict(env)}, **changes)


def manifest(*engines: dict, default: str = "fp16") -> dict:
    files = {f"{n}/{p}.onnx": {"sha256": f"{i}{j}" * 32, "bytes": 1}
             for i, n in enumerate(("text_encoder", "unet")) for j, p in enumerate(("fp32", "fp16"))}
    subs = {name: {"artifacts": [{"target": "portable", "precision": p, "path": f"{name}/{p}.onnx",
                                  "sha256": files[f"{name}/{p}.onnx"]["sha256"]} for p in ("fp32", "fp16")],
                   "engines": []} for name in ("text_encoder", "unet")}
    for e in engines:
        art = next(a for a in subs[e["submodel"]]["artifacts"] if a["path"] == e["artifact"])
        key = engine_key(art, files, dict(e["dims"], name=e["profile"]), BuilderSettings(**e["settings"]),
                         Environment(**e["environment"]))
        subs[e["submodel"]]["engines"].append(dict(e, key=e.get("key", key)))
    return {"submodels": subs, "defaults": {"precision": default}, "files": files}


def test_auto_takes_tensorrt_when_every_submodel_has_an_engine_for_this_gpu() -> None:
    m = manifest(engine("text_encoder", H100), engine("unet", H100), engine("unet", L4))
    c = choose_backend("auto", m, None, H100, WITH_CUDA)
    assert c.backend == "tensorrt" and c.precision == "fp16" and set(c.engines) == {"text_encoder", "unet"}
    assert c.engines["unet"]["environment"]["gpu_name"] == H100.gpu_name
    assert c.reason == "TensorRT 11.4.0 engines (fp16) on NVIDIA H100 80GB HBM3"


def test_auto_falls_back_in_order_and_says_why() -> None:
    m = manifest(engine("text_encoder", L4), engine("unet", L4))
    c = choose_backend("auto", m, None, H100, WITH_CUDA)
    assert c.backend == "cuda"
    assert "not TensorRT: the fp16 engine of text_encoder was built for gpu_name 'NVIDIA L4', this machine has 'NVIDIA H100 80GB HBM3'" in c.reason
    assert "--build-engines" in c.reason
    c = choose_backend("auto", m, None, NO_TRT, CPU_ONLY)
    assert c.backend == "cpu"
    assert c.reason == ("ONNX Runtime on the CPU (not TensorRT: TensorRT is not installed here; "
                        "not CUDA: this onnxruntime has no CUDAExecutionProvider)")


def test_an_engine_whose_inputs_changed_is_not_loaded() -> None:
    m = manifest(engine("text_encoder", H100), engine("unet", H100, key="0123456789abcdef"))
    engines, why = usable_engines(m, H100, None)
    assert engines == {} and why.startswith("the fp16 engine of unet was built from other inputs (its key "
                                            "0123456789abcdef is ")
    settings = dict(dataclasses.asdict(BuilderSettings()), optimization_level=5)  # stated, but not what was built
    m = manifest(engine("text_encoder", H100), engine("unet", H100))
    m["submodels"]["unet"]["engines"][0]["settings"] = settings
    assert "built from other inputs" in usable_engines(m, H100, None)[1]


def test_missing_engine_of_one_submodel_is_named() -> None:
    engines, why = usable_engines(manifest(engine("text_encoder", H100)), H100, None)
    assert engines == {} and why == "the bundle has no fp16 engine of unet"


def test_engines_of_one_precision_only() -> None:
    m = manifest(engine("text_encoder", H100, "fp32"), engine("unet", H100, "fp16"), engine("unet", H100, "fp32"))
    assert choose_backend("auto", m, None, H100, CPU_ONLY).precision == "fp32"  # the only complete set
    c = choose_backend("auto", m, "fp16", H100, CPU_ONLY)
    assert c.backend == "cpu" and "no fp16 engine of text_encoder" in c.reason


def test_build_engines_is_chosen_only_when_allowed_and_tensorrt_is_here() -> None:
    m = manifest()
    c = choose_backend("tensorrt", m, "fp16", H100, CPU_ONLY, build_engines=True)
    assert c.backend == "tensorrt" and c.build and c.precision == "fp16"
    assert "building its engines first" in c.reason
    assert choose_backend("auto", m, None, NO_TRT, CPU_ONLY, build_engines=True).backend == "cpu"


def test_explicit_choices_are_refused_with_the_reason() -> None:
    with pytest.raises(InputError, match="--provider tensorrt: TensorRT is not installed here"):
        choose_backend("tensorrt", manifest(), None, NO_TRT, WITH_CUDA)
    with pytest.raises(InputError, match="--provider cuda needs CUDAExecutionProvider"):
        choose_backend("cuda", manifest(), None, H100, CPU_ONLY)
    with pytest.raises(InputError, match="provider 'npu' is unknown"):
        choose_backend("npu", manifest(), None, H100, CPU_ONLY)
    c = choose_backend("tensorrt", manifest(engine("unet", L4)), None, H100, CPU_ONLY)  # falls back, says why
    assert c.backend == "cpu" and c.reason.startswith("ONNX Runtime on the CPU (not TensorRT:")
    assert choose_backend("cpu", manifest(engine("text_encoder", H100), engine("unet", H100)), None, H100,
                          WITH_CUDA).backend == "cpu"


SPEC = {"inputs": [{"name": "sample", "shape": ["batch", 4, "latent_height", "latent_width"]},
                   {"name": "encoder_hidden_states", "shape": ["batch", 77, 32]}]}
DIMS = {"batch": [1, 2, 4], "latent_height": [8, 8, 16], "latent_width": [8, 8, 16]}


def feed(batch=2, h=8, w=8, batch2=None, seq=77) -> dict:
    return {"sample": np.zeros((batch, 4, h, w), np.float32),
            "encoder_hidden_states": np.zeros((batch2 or batch, seq, 32), np.float32)}


def test_shapes_inside_the_profile_pass_and_others_are_named() -> None:
    check_shapes("unet.plan", SPEC, DIMS, feed())
    check_shapes("unet.plan", SPEC, DIMS, feed(batch=4, h=16, w=12))
    for kwargs, needle in [(dict(batch=8), "batch = 8 is outside the engine's profile (1..4)"),
                           (dict(h=4), "latent_height = 4 is outside"),
                           (dict(batch2=1), "dim batch is 2 in one input and 1"),
                           (dict(seq=78), "has size 78 where the engine takes 77")]:
        with pytest.raises(InputError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            check_shapes("unet.plan", SPEC, DIMS, feed(**kwargs))
    with pytest.raises(InputError, match="expected inputs"):
        check_shapes("unet.plan", SPEC, DIMS, {"sample": feed()["sample"]})
