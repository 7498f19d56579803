"""`sdc eval` and `sdc.eval.evaluate` on the shipped model (models/tiny-shapes), built once for this module."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sdc.eval import evaluate as ev
from sdc.eval.promptsets import read_prompts
from tests.compile.test_bad_input import assert_one_line_error
from tests.conftest import run_sdc

MODEL = Path(__file__).resolve().parents[2] / "models" / "tiny-shapes"
# Measured on the ci set (8 held-out prompts) x 2 seeds with the shipped model: 16 of 16 right (2026-12-06; the
# first model and its stop-18 retrain alike).
# The threshold sits below the measurement so that a different CPU's rounding does not flip it, and far
# above what a broken pipeline scores (random weights: 0%).
MIN_CI_OVERALL = 0.8


def test_shipped_model_is_small_and_says_how_it_was_made():
    size = sum(f.stat().st_size for f in MODEL.rglob("*") if f.is_file())
    assert size < 15e6, size
    record = json.loads((MODEL / "training.json").read_text())
    assert record["recipe"]["unet_steps"] > 100 and "seed" in record and record["seconds"]["total"] > 0
    assert (MODEL / "README.md").is_file()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from sdc.compile.build import build

    return build(MODEL, tmp_path_factory.mktemp("tiny-shapes") / "tiny.bundle").out


def test_shipped_model_adheres_to_heldout_prompts(bundle):
    prompts = read_prompts("ci")
    result = ev.evaluate(bundle, prompts, seeds=2)
    assert len(result.results) == len(result.images) == 2 * len(prompts)
    acc = result.per_attribute()
    assert {"background", "colour", "shape", "count", "size"} <= set(acc)
    assert result.overall >= MIN_CI_OVERALL, (result.overall, acc, [r.misses() for r in result.results])
    assert result.seconds_per_image > 0
    js = result.to_json()
    assert js["overall"] == result.overall and len(js["results"]) == len(result.results)
    json.dumps(js)  # serialisable as is


def test_same_seed_same_image_and_fused_graph_matches_portable(bundle):
    prompts = ["a small blue square on a black background"]
    a = ev.evaluate(bundle, prompts, seeds=[3])
    b = ev.evaluate(bundle, prompts, seeds=[3])
    portable = ev.evaluate(bundle, prompts, seeds=[3], target="portable")
    assert np.array_equal(a.images[0], b.images[0])
    diff = np.abs(a.images[0].astype(int) - portable.images[0].astype(int))
    assert diff.mean() < 1.0, diff.mean()  # fused attention/GELU change rounding only
    assert a.results[0].passed == portable.results[0].passed


def test_cli_eval_writes_sheet_and_json(bundle, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("# two prompts\na red circle on a blue background\n\na large yellow square on a white background\n",
                       encoding="utf-8")
    sheet, out = tmp_path / "sheet.png", tmp_path / "r.json"
    p = run_sdc("eval", bundle, "--prompts", prompts, "--seeds", "2", "--sheet", sheet, "--json", out)
    assert p.returncode == 0, p.stderr[-3000:]
    for word in ("background", "colour", "shape", "count", "overall", "time per image"):
        assert word in p.stdout
    last = p.stdout.strip().splitlines()[-1]
    assert last.startswith("scored 4 images (2 prompts x 2 seeds") and str(sheet) in last, last
    data = json.loads(out.read_text())
    assert data["images"] == 4 and data["steps"] == ev.DEFAULT_STEPS and data["guidance"] == ev.DEFAULT_GUIDANCE
    from PIL import Image

    with Image.open(sheet) as im:
        assert im.size[0] > 2 * 128 and im.size[1] > 128


def test_cli_min_overall_fails_below_threshold(bundle, tmp_path):
    p = run_sdc("eval", bundle, "--prompts", "ci", "--seeds", "1", "--no-sheet", "--min-overall", "1.0",
                "--steps", "1")  # one step cannot draw a scene: far below 100%
    assert p.returncode == 1, p.stdout[-2000:]
    assert "FAILED" in p.stderr


@pytest.mark.parametrize("content, needle", [
    (None, "prompt file not found"),
    (b"", "no prompts"),
    (b"a red circle on a blue background \xe9\n", "not UTF-8"),
    (b"a red circle on a blue background\na photo of a cat\n", "prompt 2"),
])
def test_cli_bad_prompt_files(tmp_path, content, needle):
    path = tmp_path / "prompts.txt"
    if content is not None:
        path.write_bytes(content)
    # The prompts are checked before the bundle is opened, so no bundle is needed here.
    assert_one_line_error(run_sdc("eval", tmp_path / "none.bundle", "--prompts", path), str(path) if content is None
                          else "prompts.txt", needle)


def test_cli_bad_seeds(tmp_path):
    assert_one_line_error(run_sdc("eval", tmp_path / "none.bundle", "--seeds", "0"), "--seeds")


def test_compare_reports_adherence_for_shape_world_prompts(bundle, tmp_path):
    """`sdc compare` scores both variants' images when the prompts are in the shape world: the portable graph and
    the fused one must agree in meaning, as they do in numbers."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle on a blue background\na green square on a white background\n", encoding="utf-8")
    out = tmp_path / "c.json"
    p = run_sdc("compare", bundle, "--precision", "fp32", "--target", "portable", "--against", "fp32",
                "--against-target", "ort-cpu", "--prompts", prompts, "--steps", str(ev.DEFAULT_STEPS),
                "--guidance", str(ev.DEFAULT_GUIDANCE), "--out", out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "adherence" in p.stderr
    variants = json.loads(out.read_text())["variants"]
    assert [v["adherence"] for v in variants] == [1.0, 1.0], variants


def test_gpu_precisions_are_scored_emulated_per_op(precision_bundles):
    """fp16 (a TensorRT-target artifact) scored on the CPU runs emulated per op, and the result says so."""
    prompts = ["a small blue square on a black background"]
    res = ev.evaluate(precision_bundles["sd1-tiny"], prompts, seeds=[0], steps=2, precision="fp16", target="tensorrt")
    assert set(res.artifacts.values()) == {"tensorrt/fp16 (emulated per op)"}, res.artifacts
    assert len(res.images) == 1 and res.images[0].dtype == np.uint8
    fp32 = ev.evaluate(precision_bundles["sd1-tiny"], prompts, seeds=[0], steps=2)
    assert all("emulated" not in a for a in fp32.artifacts.values())
