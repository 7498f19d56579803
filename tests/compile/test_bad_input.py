"""Bad input through the real CLI: one line naming the file or field and the fix, exit 1, nothing half-written."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import run_sdc


def assert_one_line_error(proc, *needles: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = err.splitlines()[-1]
    assert last.startswith("error: "), err[-2000:]
    for n in needles:
        assert n in last, (n, last)


def assert_nothing_written(out) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")]


def test_missing_model_index(fixture_copy, tmp_path):
    model = fixture_copy("sd1-tiny")
    (model / "model_index.json").unlink()
    out = tmp_path / "o" / "x.bundle"
    assert_one_line_error(run_sdc("build", model, "-o", out), "model_index.json", "file not found")
    assert not out.exists()


def test_unsupported_pipeline_class(fixture_copy, tmp_path):
    model = fixture_copy("sd1-tiny")
    index = json.loads((model / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusion3Pipeline"
    (model / "model_index.json").write_text(json.dumps(index))
    out = tmp_path / "x.bundle"
    assert_one_line_error(run_sdc("build", model, "-o", out), "_class_name", "StableDiffusion3Pipeline")
    assert_nothing_written(out)


def test_unsupported_unet_option(fixture_copy, tmp_path):
    model = fixture_copy("sd1-tiny")
    cfg = json.loads((model / "unet" / "config.json").read_text())
    cfg["class_embed_type"] = "timestep"
    (model / "unet" / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "x.bundle"
    assert_one_line_error(run_sdc("build", model, "-o", out), "unet/config.json", "class_embed_type", "'timestep'")
    assert_nothing_written(out)


def test_missing_weight_file(fixture_copy, tmp_path):
    model = fixture_copy("sd1-tiny")
    (model / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    out = tmp_path / "x.bundle"
    assert_one_line_error(run_sdc("build", model, "-o", out), "vae", "no *.safetensors")
    assert_nothing_written(out)


def test_missing_shard(fixture_copy, tmp_path):
    model = fixture_copy("sd1-tiny")
    shard = sorted((model / "unet").glob("*-00002-of-*.safetensors"))[0]
    shard.unlink()
    out = tmp_path / "x.bundle"
    assert_one_line_error(run_sdc("build", model, "-o", out), shard.name, "missing")
    assert_nothing_written(out)


def test_truncated_weight_file(fixture_copy, tmp_path):
    model = fixture_copy("sd1-tiny")
    f = model / "vae" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    out = tmp_path / "x.bundle"
    assert_one_line_error(run_sdc("build", model, "-o", out), str(f.name), "truncated")
    assert_nothing_written(out)


def test_config_weight_shape_mismatch(fixture_copy, tmp_path):
    model = fixture_copy("sd1-tiny")
    cfg = json.loads((model / "text_encoder" / "config.json").read_text())
    cfg["intermediate_size"] = 40
    (model / "text_encoder" / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "x.bundle"
    assert_one_line_error(run_sdc("build", model, "-o", out), "text_encoder", "shape mismatches", "fc1")
    assert_nothing_written(out)


def test_pickle_weights_refused(fixture_copy, tmp_path):
    model = fixture_copy("sd1-tiny")
    f = model / "vae" / "diffusion_pytorch_model.safetensors"
    f.rename(f.with_suffix(".bin"))
    out = tmp_path / "x.bundle"
    assert_one_line_error(run_sdc("build", model, "-o", out), "pickle", "--allow-pickle")
    assert_nothing_written(out)


def test_output_exists_without_force(tmp_path):
    out = tmp_path / "x.bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_one_line_error(run_sdc("build", "tests/fixtures/sd1-tiny", "-o", out), str(out), "--force")
    assert (out / "keep.txt").read_text() == "mine"


@pytest.fixture
def bundle_copy(bundles, tmp_path):
    dst = tmp_path / "b.bundle"
    shutil.copytree(bundles["sd1-tiny"], dst)
    return dst


def test_modified_bundle_file(bundle_copy):
    f = bundle_copy / "vae_decoder" / "model.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the sha256 can tell
    f.write_bytes(bytes(data))
    assert_one_line_error(run_sdc("verify", bundle_copy), "vae_decoder/model.onnx", "sha256")
    assert_one_line_error(run_sdc("generate", bundle_copy, "x", "-o", bundle_copy.parent / "x.png"), "sha256")


def test_newer_format_version(bundle_copy):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["format_version"] = 99
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    assert_one_line_error(run_sdc("inspect", bundle_copy), "format_version 99", "upgrade sdc")


def test_path_escaping_bundle(bundle_copy):
    m = json.loads((bundle_copy / "manifest.json").read_text())
    m["files"]["../outside.txt"] = {"sha256": "0" * 64, "bytes": 1}
    (bundle_copy / "manifest.json").write_text(json.dumps(m))
    assert_one_line_error(run_sdc("verify", bundle_copy), "escapes the bundle")


@pytest.mark.parametrize(
    "args, needle",
    [(["--height", "60"], "multiple of 8"), (["--width", "100"], "multiple of 8"), (["--steps", "0"], "steps")],
)
def test_bad_generation_arguments(bundles, tmp_path, args, needle):
    out = tmp_path / "x.png"
    assert_one_line_error(run_sdc("generate", bundles["sd1-tiny"], "a cat", "-o", out, *args), needle)
    assert not out.exists()


@pytest.mark.parametrize("args, needles", [
    (["--target", "ort-gpu"], ["--target ort-gpu", "unknown target", "ort-cpu"]),
    (["--no-passes", "--target", "ort-cpu"], ["--target ort-cpu", "--no-passes"]),
])
def test_bad_target(tmp_path, args, needles):
    out = tmp_path / "x.bundle"
    from tests.conftest import FIXTURES

    assert_one_line_error(run_sdc("build", FIXTURES / "sd1-tiny", "-o", out, *args), *needles)
    assert_nothing_written(out)


def test_cuda_target_without_cuda(tmp_path):
    """Every artifact is validated before it ships: a CUDA-only graph cannot be built where CUDA is absent."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA, so an ort-cuda build is valid here")
    from tests.conftest import FIXTURES

    out = tmp_path / "x.bundle"
    proc = run_sdc("build", FIXTURES / "sd1-tiny", "-o", out, "--target", "ort-cuda")
    assert_one_line_error(proc, "--target ort-cuda", "CUDAExecutionProvider")
    assert_nothing_written(out)
