"""TensorRT for real: build weight-stripped engines into a bundle, refit them on load, run them against ONNX
Runtime. Skipped, with the reason, where TensorRT, cuda-python or a GPU is missing (every CI machine so far):
these tests never imitate TensorRT. See README "What has run where"."""

from __future__ import annotations

import numpy as np
import pytest

from sdc.runtime.backend import tensorrt_here
from tests.conftest import FIXTURES, run_sdc

ENV = tensorrt_here()
pytestmark = pytest.mark.skipif(isinstance(ENV, str), reason=f"needs TensorRT on a GPU: {ENV}")


@pytest.fixture(scope="module")
def engine_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("trt") / "trt.bundle"
    proc = run_sdc("build", FIXTURES / "sd1-tiny", "-o", out, "--profile", "64x64", "--batch", "1:1:2",
                   "--target", "tensorrt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_build_lists_one_refittable_engine_per_submodel(engine_bundle) -> None:
    from sdc.runtime.bundle import read_manifest, verify_files

    manifest = read_manifest(engine_bundle)
    for name, sub in manifest["submodels"].items():
        assert len(sub["engines"]) == 1, name
        assert sub["engines"][0]["settings"]["weight_stripped"] is True
    assert verify_files(engine_bundle, manifest) == []


def test_engines_match_onnx_runtime_and_cuda_graph_replays_equal(engine_bundle) -> None:
    import sdc.runtime

    trt_pipe = sdc.runtime.load(engine_bundle, provider="tensorrt")
    ort_pipe = sdc.runtime.load(engine_bundle, provider="cpu", target="portable")
    assert trt_pipe.backend.backend == "tensorrt", trt_pipe.backend.reason
    rng = np.random.default_rng(0)
    dims = trt_pipe.backend.engines["unet"]["dims"]
    for corner in range(3):  # min, opt and max of every dim (CFG doubles the UNet's batch at opt and max)
        sizes = {d: r[corner] for d, r in dims.items()}
        feed = {t["name"]: rng.standard_normal([sizes[d] if isinstance(d, str) else d for d in t["shape"]])
                .astype(t["dtype"]) for t in trt_pipe.manifest["submodels"]["unet"]["inputs"]}
        got = trt_pipe.models["unet"](**feed)
        again = trt_pipe.models["unet"](**feed)  # same shapes: replayed from the captured CUDA graph
        want = ort_pipe.models["unet"](**feed)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], atol=5e-3, rtol=5e-3)  # TF32 GEMMs on the GPU
            np.testing.assert_array_equal(got[k], again[k])


def test_generation_runs_on_engines(engine_bundle, tmp_path) -> None:
    proc = run_sdc("generate", engine_bundle, "a red car", "--steps", "3", "--provider", "tensorrt",
                   "-o", tmp_path / "x.png")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "backend: TensorRT" in proc.stderr and (tmp_path / "x.png").is_file()
