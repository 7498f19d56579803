"""The precision stage end to end on the committed fixtures: artifacts, manifest records, runtime choice,
generation, `sdc verify --numerics`, and every bad input the issue lists."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from sdc.compile.calibrate import DEFAULT_PROMPTS
from tests.compile.test_bad_input import assert_nothing_written, assert_one_line_error
from tests.conftest import FIXTURES, run_sdc

PROMPT = "a red car"


@pytest.fixture(scope="module")
def built(precision_bundles):
    """The shared precision bundles (tests/conftest.py), as build results: .out and .manifest."""
    from types import SimpleNamespace

    from sdc.runtime.bundle import read_manifest

    return {k: SimpleNamespace(out=p, manifest=read_manifest(p)) for k, p in precision_bundles.items()}


def artifacts(result, sub="unet"):
    return {(a["target"], a["precision"]): a for a in result.manifest["submodels"][sub]["artifacts"]}


def test_artifacts_per_precision_and_target(built):
    sd1 = artifacts(built["sd1-tiny"])
    assert set(sd1) == {("portable", "fp32"), ("ort-cpu", "fp32"), ("tensorrt", "fp32"), ("ort-cpu", "int8"),
                        ("tensorrt", "int8"), ("tensorrt", "fp16")}
    assert sd1[("ort-cpu", "int8")]["path"] == "unet/model.ort-cpu.int8.onnx"
    sd2 = artifacts(built["sd2-tiny"])
    assert set(sd2) == {("portable", "fp32"), ("ort-cpu", "fp32"), ("ort-cpu", "int8"), ("ort-cpu", "w8"),
                        ("ort-cpu", "int8-dynamic")}
    assert built["sd1-tiny"].manifest["defaults"]["precision"] == "int8"
    for result in built.values():
        for sub in result.manifest["submodels"].values():
            for a in sub["artifacts"]:
                assert a["validation"]["passed"], (a["path"], a["validation"])


def test_int8_record(built):
    a = artifacts(built["sd1-tiny"])[("ort-cpu", "int8")]
    r = a["precision_record"]
    cal = r["calibration"]
    assert cal["prompts"] == {"source": "sdc default prompts", "count": 72,
                              "sha256": hashlib.sha256(DEFAULT_PROMPTS.read_bytes()).hexdigest()}
    assert cal["samples"]["unet"] >= 8 and cal["unet_samples"] == cal["samples"]["unet"] and cal["method"] == "MinMax"
    assert len(cal["timesteps"]) >= 8 and cal["holdout"]["unet"] > 0  # every step of a real sampling run
    assert cal["samples"]["text_encoder"] >= 72 // 8  # every prompt of the file, in batches
    assert r["quantized_ops"]["Conv"] > 0 and r["quantized_ops"]["MatMul"] > 0
    assert r["scheme"]["activations"] == "uint8" and "7-bit" in r["scheme"]["weights"]
    sens = r["sensitivity"]
    assert sens["excluded"] and all(e["error"] > 0 and e["op"] in ("Conv", "MatMul") for e in sens["excluded"])
    assert r["quantized_ops"]["Conv"] + r["quantized_ops"]["MatMul"] + len(sens["excluded"]) == r["candidates"]
    # The excluded layers are the most sensitive ones measured.
    assert min(e["error"] for e in sens["excluded"]) >= sens["quantized"]["max_error"]
    v = a["validation"]
    assert "integer kernels" in v["where"] and v["holdout"]["cases"] > 0 and v["judged_on"].startswith("held-out")
    trt = artifacts(built["sd1-tiny"])[("tensorrt", "int8")]
    assert trt["precision_record"]["scheme"]["activation_symmetric"] and "Q/DQ run as ops" in trt["validation"]["where"]


def test_fp16_record(built):
    a = artifacts(built["sd1-tiny"])[("tensorrt", "fp16")]
    r = a["precision_record"]
    reasons = {i["reason"].split(":")[0] for i in r["islands"]}
    assert "practice" in reasons
    ops = r["island_ops"]
    assert ops["GroupNormalization"] > 0 and ops["Softmax"] > 0 and ops["Sin"] == 1 and ops["Cos"] == 1
    assert "emulated per op" in a["validation"]["where"]
    assert a["validation"]["max_rel"] < 1e-2  # fp16 with fp32 norms: far below int8's error


def test_runtime_chooses_by_precision_and_provider(built):
    import sdc.runtime

    path = built["sd1-tiny"].out
    pipe = sdc.runtime.load(path, provider="cpu")  # default precision int8 exists for ort-cpu
    assert pipe.precision == "int8"
    assert {a["path"] for a in pipe.artifacts.values()} >= {"unet/model.ort-cpu.int8.onnx"}
    pipe32 = sdc.runtime.load(path, provider="cpu", precision="fp32")
    assert pipe32.artifacts["unet"]["path"] == "unet/model.ort-cpu.fp32.onnx"
    trt16 = sdc.runtime.load(path, provider="cpu", precision="fp16", target="tensorrt")
    assert trt16.artifacts["unet"]["path"] == "unet/model.tensorrt.fp16.onnx"
    from sdc.errors import InputError

    with pytest.raises(InputError, match="no fp16 artifact of .* for ort-cpu"):
        sdc.runtime.load(path, provider="cpu", precision="fp16")
    with pytest.raises(InputError, match="has no bf16 artifacts"):
        sdc.runtime.load(path, provider="cpu", precision="bf16")


@pytest.mark.parametrize("family", ["sd1-tiny", "sd2-tiny"])
def test_int8_generation_end_to_end(built, family):
    import sdc.runtime
    from sdc.bench.image_metrics import psnr

    path = built[family].out
    kw = dict(num_inference_steps=8, guidance_scale=7.5, seed=0, output_type="np")
    q = sdc.runtime.load(path, provider="cpu")(PROMPT, **kw)
    f = sdc.runtime.load(path, provider="cpu", precision="fp32")(PROMPT, **kw)
    assert q.shape == f.shape and np.isfinite(q).all()
    # Random-weight fixtures: measured 27-30 dB (sdc compare); a broken scale or a swapped artifact is < 15 dB.
    assert psnr(q, f) > 20, psnr(q, f)


def test_int8_dynamic_artifacts(built):
    """Every MatMul with a constant weight becomes an integer MatMul fed by a per-call activation quantizer;
    Convs stay float; validated in the integer kernels against Paddle and on held-out pipeline inputs."""
    import onnx

    result = built["sd2-tiny"]
    for name in ("text_encoder", "unet", "vae_decoder"):
        a = artifacts(result, name)[("ort-cpu", "int8-dynamic")]
        assert a["path"] == f"{name}/model.ort-cpu.int8-dynamic.onnx"
        v = a["validation"]
        assert v["passed"] and "integer kernels" in v["where"] and v["holdout"]["passed"], v
        fp32 = onnx.load(str(result.out / artifacts(result, name)[("ort-cpu", "fp32")]["path"]),
                         load_external_data=False)
        low = onnx.load(str(result.out / a["path"]), load_external_data=False)
        weights = {t.name for t in fp32.graph.initializer}
        const_matmuls = sum(n.op_type == "MatMul" and n.input[1] in weights for n in fp32.graph.node)
        ops = [n.op_type for n in low.graph.node]
        assert const_matmuls > 0 and ops.count("MatMulInteger") == const_matmuls
        assert a["precision_record"]["quantized_ops"] == {"MatMul": const_matmuls}
        assert ops.count("DynamicQuantizeLinear") >= 1
        assert ops.count("Conv") == sum(n.op_type == "Conv" for n in fp32.graph.node)
        low_weights = {t.name for t in low.graph.initializer}
        assert not any(n.op_type == "MatMul" and n.input[1] in low_weights for n in low.graph.node)


def test_int8_dynamic_generation(built):
    import sdc.runtime
    from sdc.bench.image_metrics import psnr

    path = built["sd2-tiny"].out
    kw = dict(num_inference_steps=8, guidance_scale=7.5, seed=0, output_type="np")
    pipe = sdc.runtime.load(path, provider="cpu", precision="int8-dynamic")
    assert pipe.artifacts["unet"]["path"] == "unet/model.ort-cpu.int8-dynamic.onnx"
    q = pipe(PROMPT, **kw)
    f = sdc.runtime.load(path, provider="cpu", precision="fp32")(PROMPT, **kw)
    assert q.shape == f.shape and np.isfinite(q).all()
    assert psnr(q, f) > 20, psnr(q, f)  # as for static int8 above


def test_verify_numerics_and_inspect(built):
    path = built["sd1-tiny"].out
    proc = run_sdc("verify", path, "--numerics")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for label in ("unet ort-cpu/int8", "unet tensorrt/fp16", "unet tensorrt/int8"):
        assert label in proc.stderr
    assert "fp16 emulated per op" in proc.stderr
    proc = run_sdc("inspect", path)
    assert proc.returncode == 0 and "precisions: int8, fp32, fp16" in proc.stdout


def test_generate_says_which_artifact_runs(built, tmp_path):
    out = tmp_path / "x.png"
    proc = run_sdc("generate", built["sd2-tiny"].out, PROMPT, "--steps", "2", "-o", out, "--precision", "w8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "unet           ort-cpu/w8  unet/model.ort-cpu.w8.onnx" in proc.stderr
    from PIL import Image

    assert json.loads(Image.open(out).text["sdc"])["precision"] == "w8"


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("args, needles", [
    (("--precision", "fp8"), ("--precision fp8", "unknown precision")),
    (("--precision", "fp32,fp32"), ("named twice",)),
    (("--precision", "fp16"), ("--precision fp16", "ort-cpu", "--target ort-cuda")),
    (("--precision", "int8", "--no-passes"), ("--precision int8", "portable graph is fp32 only")),
    (("--precision", "int8", "--calibration-samples", "2"), ("--calibration-samples 2", "too few")),
    (("--precision", "int8-dynamic", "--target", "tensorrt"),
     ("--precision int8-dynamic", "ONNX Runtime's CPU integer kernels", "--target ort-cpu")),
])
def test_bad_precision_options(tmp_path, args, needles):
    out = tmp_path / "x.bundle"
    assert_one_line_error(run_sdc("build", FIXTURES / "sd1-tiny", "-o", out, *args), *needles)
    assert_nothing_written(out)


@pytest.mark.parametrize("content, needles", [
    (None, ("file not found",)),
    (b"", ("no prompts",)),
    (b"# only a comment\n\n", ("no prompts",)),
    (b"a caf\xe9 in Paris\n", ("not UTF-8",)),
])
def test_bad_calibration_prompts(tmp_path, content, needles):
    prompts = tmp_path / "prompts.txt"
    if content is not None:
        prompts.write_bytes(content)
    out = tmp_path / "x.bundle"
    proc = run_sdc("build", FIXTURES / "sd1-tiny", "-o", out, "--precision", "fp32,int8", "--calibration-prompts", prompts)
    assert_one_line_error(proc, "--calibration-prompts", str(prompts), *needles)
    assert_nothing_written(out)


def test_bundle_asked_for_a_precision_it_lacks(built, tmp_path):
    out = tmp_path / "x.png"
    proc = run_sdc("generate", built["sd2-tiny"].out, PROMPT, "--precision", "fp16", "-o", out)
    assert_one_line_error(proc, "no fp16 artifacts", "--precision")
    assert not out.exists()
    proc = run_sdc("compare", built["sd2-tiny"].out, "--precision", "bf16")
    assert_one_line_error(proc, "no bf16 artifacts")
