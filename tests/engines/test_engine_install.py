"""Adding engines to a bundle (sdc.engines.install): manifest entries, checksums, replacement, atomicity.

TensorRT is not on these machines, so the plan writer here is a stand-in that writes its own marked bytes
("NOT A TENSORRT PLAN ...") and records what it was asked to build: these tests check sdc's bookkeeping
around the builder (which artifact, which shapes, which key, what the manifest lists, what a failure or a
kill leaves), never TensorRT. The real builder is tested in test_tensorrt_gpu.py where TensorRT and a GPU exist.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdc.engines import BuilderSettings, Environment
from sdc.engines.install import add_engines, plan_engines
from sdc.errors import BundleError, InputError
from sdc.profiles import bundle_profile
from sdc.runtime.bundle import read_manifest, verify_files
from tests.compile.test_bad_input import assert_one_line_error
from tests.conftest import FIXTURES, run_sdc

ENV = Environment("11.4.0", 13, "NVIDIA H100 80GB HBM3", "9.0")
OTHER = Environment("11.4.0", 13, "NVIDIA L4", "8.9")


class StandInWriter:
    """Writes marked bytes instead of a plan, and the timing cache and log lines TensorRT would."""

    def __init__(self, fail_on: str | None = None, sleep: float = 0.0):
        self.calls: list[tuple[Path, dict]] = []
        self.fail_on, self.sleep = fail_on, sleep

    def __call__(self, onnx_path, shapes, settings, timing_cache, log):
        if self.fail_on and self.fail_on in str(onnx_path):
            raise RuntimeError(f"stand-in failure on {onnx_path}")
        time.sleep(self.sleep)
        self.calls.append((Path(onnx_path), shapes))
        timing_cache.write_bytes(timing_cache.read_bytes() + b"t" if timing_cache.exists() else b"t")
        log.lines.append(f"stand-in build of {Path(onnx_path).name}")
        digest = hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()
        return f"NOT A TENSORRT PLAN {digest} {json.dumps(shapes, sort_keys=True)} {settings}".encode()


@pytest.fixture(scope="module")
def profiled(tmp_path_factory) -> Path:
    """sd1-tiny with a 64x64 profile for 1..2 images and tensorrt-target artifacts, built with the CLI as a user
    would (`sdc build --target tensorrt` also says where engines get built when TensorRT is missing)."""
    out = tmp_path_factory.mktemp("engines") / "profiled.bundle"
    proc = run_sdc("build", FIXTURES / "sd1-tiny", "-o", out, "--profile", "64x64", "--batch", "1:1:2",
                   "--target", "tensorrt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "engines: not built here (TensorRT is not installed here" in proc.stderr
    assert f"run `sdc engines build {out}` on the GPU host" in proc.stderr
    return out


@pytest.fixture
def bundle(profiled, tmp_path) -> Path:
    dst = tmp_path / "b.bundle"
    shutil.copytree(profiled, dst)
    return dst


def snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_engines_are_listed_checksummed_and_verify_clean(bundle) -> None:
    manifest = read_manifest(bundle)
    profile = bundle_profile(manifest, None)
    writer = StandInWriter()
    entries = add_engines(bundle, profile, BuilderSettings(), ENV, writer, progress=lambda _: None)
    assert sorted(e["submodel"] for e in entries) == sorted(manifest["submodels"])
    assert any(e["artifact"].endswith(".tensorrt.fp32.onnx") for e in entries)  # the unet's tuned graph
    after = read_manifest(bundle)  # type-checks every new entry
    assert verify_files(bundle, after, full=True) == []  # every plan, log and the timing cache listed
    for e in entries:
        sub = after["submodels"][e["submodel"]]
        assert sub["engines"] == [e]
        tuned = [a["path"] for a in sub["artifacts"] if (a["target"], a["precision"]) == ("tensorrt", "fp32")]
        assert e["artifact"] == (tuned[0] if tuned else f"{e['submodel']}/model.onnx")  # portable when none is tuned
        assert e["dims"] == profile["dims"][e["submodel"]] and e["environment"]["gpu_name"] == ENV.gpu_name
        assert e["path"] == f"engines/{e['key']}/{e['submodel']}.fp32.plan"
        assert (bundle / e["path"]).read_bytes().startswith(b"NOT A TENSORRT PLAN")
        assert after["files"][e["path"]]["sha256"] == e["sha256"]
    # the shapes TensorRT is given follow the profile: CFG doubles the UNet's batch at opt and max
    unet_shapes = next(s for p, s in writer.calls if p.parent.name == "unet")
    lat = 64 // after["pipeline"]["vae_downscale"]
    assert unet_shapes["sample"] == ((1, 4, lat, lat), (2, 4, lat, lat), (4, 4, lat, lat))
    assert [f for f in after["files"] if f.startswith("engines/timing-")] == ["engines/timing-sm9.0-NVIDIA-H100-80GB-HBM3-trt11.4.0.cache"]


def test_rerun_is_up_to_date_other_gpus_stay_and_same_gpu_is_replaced(bundle) -> None:
    profile = bundle_profile(read_manifest(bundle), None)
    first = add_engines(bundle, profile, BuilderSettings(), ENV, StandInWriter(), progress=lambda _: None)
    again = StandInWriter()
    assert add_engines(bundle, profile, BuilderSettings(), ENV, again, progress=lambda _: None) == [] and not again.calls
    add_engines(bundle, profile, BuilderSettings(), OTHER, StandInWriter(), progress=lambda _: None)
    m = read_manifest(bundle)
    assert all(len(s["engines"]) == 2 for s in m["submodels"].values())  # one plan per GPU kind
    replaced = add_engines(bundle, profile, BuilderSettings(optimization_level=5), ENV, StandInWriter(),
                           progress=lambda _: None)
    m = read_manifest(bundle)
    assert all(len(s["engines"]) == 2 for s in m["submodels"].values())
    keys = {e["key"] for s in m["submodels"].values() for e in s["engines"]}
    assert {e["key"] for e in replaced} <= keys and not {e["key"] for e in first} & keys
    assert not any((bundle / "engines" / e["key"]).exists() for e in first)  # the replaced plans are gone
    assert verify_files(bundle, m, full=True) == []


def test_failed_build_leaves_the_bundle_as_it_was(bundle) -> None:
    before = snapshot(bundle)
    with pytest.raises(RuntimeError, match="stand-in failure"):
        add_engines(bundle, bundle_profile(read_manifest(bundle), None), BuilderSettings(), ENV,
                    StandInWriter(fail_on="vae_decoder"), progress=lambda _: None)
    assert snapshot(bundle) == before
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(f".{bundle.name}.tmp")]


def test_killed_run_leaves_the_bundle_as_it_was_and_the_next_run_cleans_up(bundle) -> None:
    before = snapshot(bundle)
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[2])\n"
        "from tests.engines.test_engine_install import ENV, StandInWriter\n"
        "from sdc.engines import BuilderSettings; from sdc.engines.install import add_engines\n"
        "from sdc.profiles import bundle_profile; from sdc.runtime.bundle import read_manifest\n"
        "b = Path(sys.argv[1]); print('started', flush=True)\n"
        "add_engines(b, bundle_profile(read_manifest(b), None), BuilderSettings(), ENV, StandInWriter(sleep=30),"
        " progress=lambda _: None)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    child = subprocess.Popen([sys.executable, "-c", code, str(bundle), str(repo)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "started"
    stage = bundle.with_name(f".{bundle.name}.tmp-{child.pid}-engines")
    for _ in range(600):
        if stage.exists():
            break
        time.sleep(0.05)
    assert stage.exists()
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert snapshot(bundle) == before  # nothing of the killed run inside the bundle
    # a run killed between its renames: an engine folder the manifest does not list
    (bundle / "engines" / "0123456789abcdef").mkdir(parents=True)
    (bundle / "engines" / "0123456789abcdef" / "unet.fp32.plan").write_bytes(b"orphan")
    add_engines(bundle, bundle_profile(read_manifest(bundle), None), BuilderSettings(), ENV, StandInWriter(),
                progress=lambda _: None)
    assert not stage.exists() and not (bundle / "engines" / "0123456789abcdef").exists()
    assert verify_files(bundle, read_manifest(bundle), full=True) == []


def test_plans_refuse_unknown_submodels_and_profiles_without_them(bundle) -> None:
    manifest = read_manifest(bundle)
    profile = bundle_profile(manifest, None)
    with pytest.raises(InputError, match="--only transformer: not in the bundle"):
        plan_engines(manifest, profile, None, BuilderSettings(), ENV, ["transformer"])
    with pytest.raises(InputError, match="gives no dims for unet"):
        plan_engines(manifest, dict(profile, dims={}), None, BuilderSettings(), ENV, ["unet"])
    with pytest.raises(InputError, match="no fp16 artifact of unet"):
        plan_engines(manifest, profile, "fp16", BuilderSettings(), ENV, ["unet"])
    keys = {p.key for p in plan_engines(manifest, profile, None, BuilderSettings(), ENV)}
    assert len(keys) == len(manifest["submodels"])  # one key per submodel


@pytest.mark.parametrize("field, value, needle", [
    ("key", "XYZ", "16-digit hex key"),
    ("sha256", "0" * 64, "differs from the file table"),
    ("artifact", "../outside.onnx", "is not one of"),
    ("precision", "fp7", "unknown precision"),
    ("dims", {"batch": [4, 2, 1]}, "in order"),
    ("environment", {"tensorrt": "11.4.0"}, "environment.cuda_major: missing"),
    ("settings", {"optimization_level": "3", "workspace_mib": 1, "weight_stripped": True},
     "settings.optimization_level: expected a number"),
    ("submodel", "vae_decoder", "is listed under unet"),
    ("path", "../outside.plan", "escapes the bundle"),
])
def test_malformed_engine_entries_are_refused(bundle, field, value, needle) -> None:
    add_engines(bundle, bundle_profile(read_manifest(bundle), None), BuilderSettings(), ENV, StandInWriter(),
                only=["unet"], progress=lambda _: None)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["submodels"]["unet"]["engines"][0][field] = value
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=needle):
        read_manifest(bundle)


def test_a_cpu_machine_runs_a_bundle_with_engines_on_onnx_runtime_and_says_why(bundle, tmp_path) -> None:
    import sdc.runtime

    add_engines(bundle, bundle_profile(read_manifest(bundle), None), BuilderSettings(), ENV, StandInWriter(),
                progress=lambda _: None)
    pipe = sdc.runtime.load(bundle)
    assert pipe.backend.backend == "cpu"
    assert "not TensorRT: TensorRT is not installed here" in pipe.backend.reason
    proc = run_sdc("inspect", bundle)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usable here: TensorRT is not installed here" in proc.stdout and "NVIDIA H100 80GB HBM3 sm 9.0" in proc.stdout
    assert_one_line_error(run_sdc("generate", bundle, "a red car", "--provider", "tensorrt", "-o", tmp_path / "x.png"),
                          "--provider tensorrt: TensorRT is not installed")
    gen = run_sdc("generate", bundle, "a red car", "--steps", "2", "-o", tmp_path / "y.png")
    assert gen.returncode == 0, gen.stderr[-2000:]
    assert "backend: ONNX Runtime on the CPU (not TensorRT: TensorRT is not installed here" in gen.stderr


def test_engines_build_without_tensorrt_says_what_is_missing_and_changes_nothing(profiled, bundles) -> None:
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here: the refusal is for machines without it")
    before = snapshot(profiled)
    assert_one_line_error(run_sdc("engines", "build", profiled), "TensorRT is not installed")
    assert snapshot(profiled) == before
    assert_one_line_error(run_sdc("engines", "build", bundles["sd1-tiny"]), "records no shape profile", "--profile")
    assert_one_line_error(run_sdc("engines", "build", profiled, "--profile", "60x60"), "off the model's grid")

