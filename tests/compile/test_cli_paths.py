"""Successful and gated CLI paths the failure tests do not reach: the validation gate and its opt-out,
`--only/--target/--no-passes/--debug` builds, `--force` on a folder that is not a bundle, `inspect --json`,
`verify --numerics` catching a relisted wrong graph, the runtime's fallback to the portable graph, manifest
errors, the format-migration path, one weight file shared by the portable and tuned graphs, and the quiet
default output (third-party lines only with --verbose)."""

from __future__ import annotations

import json
import shutil
import re
from pathlib import Path

import pytest

from sdc.errors import BundleError, ChecksumError
from sdc.runtime import bundle as bundle_format
from sdc.runtime.bundle import read_manifest, verify_files
from sdc.runtime.loader import load
from tests.conftest import FIXTURES, run_sdc

MODEL = FIXTURES / "sd1-tiny"
THIRD_PARTY = re.compile(r"^[IWEF]\d{4} \d|Warning|ccache|constant folding|\.py:\d+:")  # glog, Python warnings


@pytest.fixture
def wrong_epsilon(monkeypatch):
    """A wrong epsilon slipped into every LayerNormalization of the exported graph after the passes (the fault
    the validation gate exists for), injected into the real CLI's build."""
    import sdc.passes as passes

    real = passes.optimize

    def optimize(model, target, debug=False, after=None, base_dir=None):
        model, report = real(model, target, debug, after, base_dir)
        for node in model.graph.node:
            if node.op_type == "LayerNormalization":
                for a in node.attribute:
                    if a.name == "epsilon":
                        a.f = 0.5
        return model, report

    monkeypatch.setattr(passes, "optimize", optimize)


def test_validation_gate_fails_the_build_and_writes_nothing(tmp_path, wrong_epsilon):
    out = tmp_path / "x.bundle"
    r = run_sdc("build", MODEL, "-o", out, "--only", "text_encoder")
    assert r.returncode == 1, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "text_encoder" in last, last
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


def test_validation_opt_out_keeps_the_artifact_with_a_warning(tmp_path, wrong_epsilon):
    out = tmp_path / "x.bundle"
    r = run_sdc("build", MODEL, "-o", out, "--only", "text_encoder", "--no-fail-on-validation")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "VALIDATION FAILED, kept because of --no-fail-on-validation" in r.stderr
    assert "| FAILED in" in r.stderr  # the last line says it is not a clean build
    manifest = read_manifest(out)
    assert not all(a["validation"]["passed"] for a in manifest["submodels"]["text_encoder"]["artifacts"])
    # What the build kept is what `verify --numerics` then refuses.
    v = run_sdc("verify", out, "--numerics")
    assert v.returncode == 1 and "✗ text_encoder" in v.stderr, v.stderr


def test_only_no_passes_build(tmp_path):
    out = tmp_path / "v.bundle"
    r = run_sdc("build", MODEL, "-o", out, "--only", "vae_decoder", "--no-passes")
    assert r.returncode == 0, r.stderr[-2000:]
    m = read_manifest(out)
    assert list(m["submodels"]) == ["vae_decoder"]
    assert [(a["target"], a["passes"]) for a in m["submodels"]["vae_decoder"]["artifacts"]] == [("portable", {})]
    verify_files(out, m)


def test_only_target_debug_build_and_inspect_json(tmp_path):
    out = tmp_path / "t.bundle"
    r = run_sdc("build", MODEL, "-o", out, "--only", "vae_decoder", "--target", "ort-cpu,tensorrt", "--debug",
                isolated=True)  # --debug adds its log handler for the process
    assert r.returncode == 0, r.stderr[-2000:]
    # By default only sdc's own lines (and, with --debug, its pass log): no Paddle glog line, no Python warning.
    assert [ln for ln in r.stderr.splitlines() if THIRD_PARTY.search(ln)] == [], r.stderr
    assert r.stdout == "" and any(ln.startswith("built ") for ln in r.stderr.splitlines()[-4:])
    # --debug logs what each pass did (and, for a rule that rewrote nothing, its nearest misses), once.
    assert r.stderr.count("sdc.passes: optimize tensorrt") == 1, r.stderr[-3000:]
    assert r.stderr.count("sdc.passes: optimize ort-cpu") == 1, r.stderr[-3000:]  # a comma list of targets
    j = run_sdc("inspect", out, "--json")
    assert j.returncode == 0
    m = json.loads(j.stdout)
    assert list(m["submodels"]) == ["vae_decoder"]
    assert {a["target"] for a in m["submodels"]["vae_decoder"]["artifacts"]} == {"portable", "ort-cpu", "tensorrt"}
    assert m == read_manifest(out)


def test_verbose_build_shows_the_third_party_lines(tmp_path):
    """What the quiet default hides (test_only_target_debug_build_and_inspect_json) is there with --verbose:
    in a child process, where Paddle's C++ logs and Python's warnings reach the output as a user sees it."""
    loud = run_sdc("build", MODEL, "-o", tmp_path / "q.bundle", "--only", "vae_decoder", "--no-passes", "--verbose",
                   isolated=True)
    assert loud.returncode == 0 and any(THIRD_PARTY.search(ln) for ln in loud.stderr.splitlines()), loud.stderr


def test_force_refuses_a_folder_that_is_not_a_bundle(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    r = run_sdc("build", MODEL, "-o", out, "--only", "vae_decoder", "--force")
    assert r.returncode == 1 and "is not an sdc bundle" in r.stderr.strip().splitlines()[-1], r.stderr
    assert (out / "notes.txt").read_text() == "keep me"


def _bundle_copy(bundles, tmp_path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(bundles["sd1-tiny"], dst)
    return dst


def _write(bundle: Path, manifest: dict) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_runtime_falls_back_to_the_portable_graph(bundles, tmp_path):
    """A bundle without the CPU-tuned UNet (built for another target, or pruned): the portable graph runs."""
    b = _bundle_copy(bundles, tmp_path)
    m = read_manifest(b)
    arts = m["submodels"]["unet"]["artifacts"]
    tuned = [a for a in arts if a["target"] == "ort-cpu"]
    assert tuned, "the fixture bundle should have an ort-cpu UNet"
    m["submodels"]["unet"]["artifacts"] = [a for a in arts if a["target"] != "ort-cpu"]
    for a in tuned:
        (b / a["path"]).unlink()
        m["files"].pop(a["path"])
    _write(b, m)
    pipe = load(b, provider="cpu")
    assert pipe.artifacts["unet"]["target"] == "portable"
    assert pipe.artifacts["text_encoder"]["target"] == "ort-cpu"
    image = pipe("a red car", num_inference_steps=2, seed=0, output_type="np")
    want = load(bundles["sd1-tiny"], provider="cpu", target="portable")("a red car", num_inference_steps=2, seed=0,
                                                                         output_type="np")
    assert abs(image - want).max() < 1e-5


def test_manifest_errors(bundles, tmp_path):
    b = _bundle_copy(bundles, tmp_path)
    good = (b / "manifest.json").read_text()
    (b / "manifest.json").write_text(good[: len(good) // 2])
    with pytest.raises(BundleError, match="not valid JSON"):
        read_manifest(b)
    (b / "manifest.json").write_text(good)
    m = read_manifest(b)
    listed = "vae_decoder/validation.safetensors"
    (b / listed).unlink()
    with pytest.raises(ChecksumError, match="listed in the manifest but missing"):
        verify_files(b, m)
    (b / listed).write_bytes(b"short")
    with pytest.raises(ChecksumError, match="differs from the manifest"):
        verify_files(b, m, full=False)
    r = run_sdc("verify", b)
    assert r.returncode == 1 and "vae_decoder/validation.safetensors" in r.stderr.strip().splitlines()[-1]


def test_format_migration_path(bundles, tmp_path, monkeypatch):
    """A version-N reader migrates version N-1 manifests step by step (tested with a pretend version 2
    that renamed `defaults.steps`); a manifest newer than the reader is refused."""
    b = _bundle_copy(bundles, tmp_path)

    def v1_to_v2(m):
        m = dict(m, defaults=dict(m["defaults"]))
        m["defaults"]["num_inference_steps"] = m["defaults"]["steps"]
        return m

    monkeypatch.setattr(bundle_format, "FORMAT_VERSION", 2)
    monkeypatch.setitem(bundle_format._MIGRATIONS, 1, v1_to_v2)
    m = read_manifest(b)
    assert m["format_version"] == 2 and m["defaults"]["num_inference_steps"] == m["defaults"]["steps"]
    on_disk = json.loads((b / "manifest.json").read_text())
    on_disk["format_version"] = 3
    _write(b, on_disk)
    with pytest.raises(BundleError, match="newer than this sdc understands"):
        read_manifest(b)


@pytest.mark.parametrize("family", ["sd1-tiny", "sd2-tiny"])
def test_portable_and_tuned_graphs_share_one_weight_file(bundles, family):
    """The tuned graph's weights are the portable graph's: one data file per submodel, never a copy."""
    m = read_manifest(bundles[family])
    shared = 0
    for name, sub in m["submodels"].items():
        arts = {a["target"]: a for a in sub["artifacts"] if a["precision"] == "fp32"}
        data_files = [f for f in m["files"] if f.startswith(f"{name}/") and f.endswith(".data")]
        assert len(data_files) <= 1, (name, data_files)
        if "ort-cpu" in arts and arts["portable"]["data_paths"]:
            assert arts["portable"]["data_paths"][0] in arts["ort-cpu"]["data_paths"], name
            sizes = {f: m["files"][f]["bytes"] for f in m["files"] if f.startswith(f"{name}/")}
            tuned_graph = sizes[arts["ort-cpu"]["path"]]
            assert tuned_graph < sizes[arts["portable"]["data_paths"][0]], (name, sizes)  # a graph, no weight copy
            shared += 1
    assert shared >= 2  # text encoder and UNet at least
