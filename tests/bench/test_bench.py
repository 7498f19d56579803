"""`sdc bench` on the tiny fixture: every available variant runs, agrees with the baseline, and is reported."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest

from sdc.bench.run import BenchOptions, bench
from sdc.bench.report import HEADING, markdown_section, write_markdown
from sdc.bench.prepare import ensure_bundle, given_bundle
from sdc.errors import InputError
from tests.conftest import FIXTURES, run_sdc

TINY = FIXTURES / "sd1-tiny"
HAVE_TORCH = all(importlib.util.find_spec(m) for m in ("torch", "diffusers", "transformers"))
OPTIONS = BenchOptions(height=64, width=64, runs=1, warmup=0, components=("unet",), gemm_size=256, gemm_repeats=2)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("bench")


@pytest.fixture(scope="module")
def result(work, precision_bundles, bundles):
    """sdc builds its bundle here (test_bundles_are_reused reuses it); sdc-passes times the session's default
    build and sdc-int8 the precision tests' shared int8 bundle (`--bundle VARIANT=PATH`), which saves a UNet
    build and a calibrated one."""
    given = (("sdc-passes", str(bundles["sd1-tiny"])), ("sdc-int8", str(precision_bundles["sd1-tiny"])))
    return bench(TINY, dataclasses.replace(OPTIONS, given=given), work=work, command="pytest")


def test_every_variant_runs_and_agrees(result):
    (unet,) = result.components
    assert unet.name == "unet"
    assert unet.shapes == {"sample": [2, 4, 8, 8], "timestep": [2], "encoder_hidden_states": [2, 77, 32]}
    runs = {r.variant: r for r in unet.runs}
    assert list(runs) == list(OPTIONS.variants)
    if not HAVE_TORCH:
        assert runs["torch"].status == "skipped" and "torch" in runs["torch"].reason
    expected_baseline = "torch" if HAVE_TORCH else "paddle"
    assert unet.baseline == expected_baseline
    for r in unet.runs:
        if r.variant == "torch" and not HAVE_TORCH:
            continue
        assert r.status == "ok", (r.variant, r.reason)
        assert len(r.times) == 1 and r.median > 0 and r.load_seconds > 0
        assert r.peak_rss_bytes > 50 * 2**20  # a Python process with a framework loaded
        assert r.speedup > 0 and 0 < r.floor_fraction
        print(f"{r.variant}: {r.median * 1e3:.1f} ms, max abs diff vs {unet.baseline} {r.max_abs_diff:.2e}")
        if r.variant == "sdc-int8":  # measured, not judged: random inputs lie outside the calibrated ranges
            assert r.agrees is None and 0 < r.max_abs_diff < float("inf")
            continue
        assert r.agrees and r.max_abs_diff <= 1e-4
    assert runs[expected_baseline].max_abs_diff == 0.0
    assert result.ok


def test_sdc_variants_run_their_bundles(result):
    runs = {r.variant: r for r in result.components[0].runs}
    assert runs["sdc"].detail["artifact"] == "portable/fp32"
    assert runs["sdc"].detail["rewrites"] == "none"  # built without passes
    assert runs["sdc-passes"].detail["sha256"]
    assert runs["sdc-int8"].detail["artifact"] == "ort-cpu/int8"
    assert "CPU features" in markdown_section(result) and "VNNI" in markdown_section(result)


def test_flops_and_floor(result):
    (unet,) = result.components
    assert unet.flops > 0 and set(unet.flops_by_op) <= {"Conv", "MatMul", "Gemm"}
    assert unet.flops_analytic == pytest.approx(unet.flops, rel=1e-3)  # graph count vs weight shapes
    assert result.gemm.numpy_flops_per_s > 0 and result.gemm.ort_flops_per_s > 0
    assert unet.floor_seconds == pytest.approx(unet.flops / result.gemm.best)


def test_bundles_are_reused(work):
    from sdc.graphs.weights import find_weight_files, weights_sha256

    weights = weights_sha256(find_weight_files(TINY / "unet"))
    path, note = ensure_bundle(TINY, "sdc", ("unet",), work, weights, threads=1)
    assert path == work / "bundles" / "sdc.bundle" and "reused" in note


def test_given_bundle_is_checked_against_the_model_and_variant(bundles):
    """`--bundle VARIANT=PATH`: a bundle built from these weights with the variant's target and precision is
    used as is; one from other weights, or without the variant's artifacts, is refused."""
    built = bundles["sd1-tiny"]  # the default build: ort-cpu fp32, no int8
    path, note = given_bundle(TINY, "sdc-passes", built)
    assert path == built and "given" in note
    with pytest.raises(InputError, match="other weights"):
        given_bundle(FIXTURES / "sd2-tiny", "sdc-passes", built)
    with pytest.raises(InputError, match="no ort-cpu int8 artifacts"):
        given_bundle(TINY, "sdc-int8", built)
    r = run_sdc("bench", TINY, "--variants", "paddle,sdc-passes", "--bundle", f"sdc-int8={built}")
    assert r.returncode == 1 and "not an sdc variant of this run" in r.stderr


def test_markdown_section_replaces_only_its_own(result, tmp_path):
    doc = tmp_path / "PERFORMANCE.md"
    doc.write_text("# Performance\n\n## Real-size build\n\nkept\n\n## sdc bench\n\nold table\n\n## Later\n\nalso kept\n")
    write_markdown(doc, markdown_section(result))
    write_markdown(doc, markdown_section(result))
    text = doc.read_text()
    assert text.count(HEADING) == 1 and "old table" not in text
    assert "kept" in text and "also kept" in text and text.index("## Real-size build") < text.index(HEADING)
    assert "| unet | paddle |" in text and "pytest" in text


def test_torch_missing_is_skipped(tmp_path, monkeypatch):
    """The CI venv has no torch: that variant is reported as skipped with the reason, the rest still run."""
    shadow = tmp_path / "shadow" / "torch"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('torch hidden by the test')\n")
    monkeypatch.setenv("PYTHONPATH", str(shadow.parent))
    options = BenchOptions(height=64, width=64, runs=1, warmup=0, components=("text_encoder",),
                           variants=("torch", "paddle"))
    res = bench(TINY, options, work=tmp_path / "work")
    torch_run, paddle_run = res.components[0].runs
    assert torch_run.status == "skipped" and "torch hidden by the test" in torch_run.reason
    assert paddle_run.status == "ok" and res.components[0].baseline == "paddle"
    assert res.gemm is None and res.ok


def test_cli_rejects_bad_arguments(tmp_path):
    r = run_sdc("bench", TINY, "--variants", "torch,tensorflow")
    assert r.returncode == 1 and "tensorflow" in r.stderr and "choose from" in r.stderr
    r = run_sdc("bench", TINY, "--height", "60", "--width", "64", "--variants", "paddle")
    assert r.returncode == 1 and "multiples of" in r.stderr
    r = run_sdc("bench", TINY, "--out", tmp_path / "table.txt")
    assert r.returncode == 1 and ".md" in r.stderr
