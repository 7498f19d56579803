"""Shared test helpers: fixture paths, and bundles built once per test session."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REFS = FIXTURES / "refs"
FAMILIES = ("sd1-tiny", "sd2-tiny")
SDXL_FAMILIES = ("sdxl-tiny", "sdxl-refiner-tiny")  # base and refiner (tests/fixtures/make_sdxl_fixtures.py)


def load_cases(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """An npz written by make_fixtures.save_cases: {case: {tensor: array}}."""
    cases: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path) as data:
        for key in data.files:
            case, name = key.split("/", 1)
            cases.setdefault(case, {})[name] = data[key]
    return cases


PIPELINE_REFS = REFS / "pipelines"


def pipeline_cases() -> dict[str, dict]:
    """End-to-end diffusers generations (make_pipeline_refs.py): case key -> settings."""
    import json

    return json.loads((PIPELINE_REFS / "index.json").read_text(encoding="utf-8"))


def load_refs_case(folder: Path, name: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(settings, arrays) of one reference generation written by a make_*_pipeline_refs.py script."""
    import json

    with np.load(folder / f"{name}.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return json.loads(str(arrays.pop("settings"))), arrays


def load_pipeline_case(key: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(settings, arrays) of one SD reference generation."""
    return load_refs_case(PIPELINE_REFS, key)


def pipeline_kwargs(s: dict, arrays: dict[str, np.ndarray], image_as_pil: bool = False) -> dict:
    """The sdc pipeline call that reproduces a reference generation."""
    kw = {k: s[k] for k in ("prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "seed", "scheduler",
                            "num_images_per_prompt")}
    if s["img2img"]:
        img = arrays["init_image"]
        if image_as_pil:
            from PIL import Image

            img = [Image.fromarray(im) for im in img]
        else:
            img = img.astype(np.float32) / 255.0
        kw.update(image=img, strength=s["strength"])
    else:
        kw.update(height=s["height"], width=s["width"], latents=arrays.get("latents"))
    return kw


def pytest_configure(config) -> None:
    _onnxruntime_threads_sleep_when_idle()


def _onnxruntime_threads_sleep_when_idle() -> None:
    """Sessions made in the test processes keep their threads but do not spin them between ops.

    pytest-xdist runs one worker per core, and each ONNX Runtime session has as many intra-op threads, which
    by default spin between ops: on tiny graphs that burns the cores the other workers need (measured: a
    sixth of the workers' own CPU time). The thread count, and so every number, is unchanged.
    """
    import onnxruntime as ort

    if getattr(ort.SessionOptions, "sdc_tests_no_spinning", False):
        return

    class SessionOptions(ort.SessionOptions):
        sdc_tests_no_spinning = True

        def __init__(self) -> None:
            super().__init__()
            self.add_session_config_entry("session.intra_op.allow_spinning", "0")

    ort.SessionOptions = SessionOptions


def run_sdc(*args: str, cwd: Path | None = None, isolated: bool = False) -> subprocess.CompletedProcess:
    """The real CLI, from argv to exit code: `sdc.cli.main` with this argv, its stdout and stderr captured.

    In this process by default: a child process would import Paddle, ONNX, onnx_ir and ONNX Runtime again,
    2-3 s of CPU per call, about a quarter of the suite's time. `isolated=True` runs `python -m sdc` in a
    child process, for what only a process boundary shows: lines C++ libraries write to the file
    descriptors, Python warnings (pytest records them in this process), imports, signals, several
    processes at once, global state a command sets up (--debug's log handler).
    """
    argv = [str(a) for a in args]
    if isolated:
        return subprocess.run([sys.executable, "-m", "sdc", *argv], capture_output=True, text=True, cwd=cwd)
    import io
    import os
    import traceback

    from sdc.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv, sys.stdout, sys.stderr, os.getcwd()
    code = 0
    try:
        sys.argv, sys.stdout, sys.stderr = ["sdc", *argv], out, err
        if cwd is not None:
            os.chdir(cwd)
        main()
    except SystemExit as e:  # what the interpreter does with it at exit
        if isinstance(e.code, str):
            print(e.code, file=err)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # an uncaught exception: the interpreter prints the traceback and exits 1
        traceback.print_exc(file=err)
        code = 1
    finally:
        sys.argv, sys.stdout, sys.stderr = saved[:3]
        os.chdir(saved[3])
    return subprocess.CompletedProcess(["sdc", *argv], code, out.getvalue(), err.getvalue())


def _shared_root(request, tmp_path_factory) -> Path:
    """A folder shared by the pytest-xdist workers of one run (or this process's own temp root)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if hasattr(request.config, "workerinput") else base) / "shared-bundles"
    root.mkdir(exist_ok=True)
    return root


def _build_shared(root: Path, wanted: dict[str, tuple[Path, object]]) -> dict[str, Path]:
    """Build each `name: (model, BuildOptions or None)` into root/name unless a worker already did; returns the paths.

    One flock per bundle (not the build's own .OUT.lock) serialises the workers. A worker first builds the
    bundles no other worker is building (non-blocking locks) and only then waits for the rest: two workers
    that need the same set build its halves side by side instead of one waiting for the whole set.
    """
    import fcntl

    from sdc.compile.build import build
    from sdc.compile.context import BuildOptions

    pending = dict(wanted)
    for flags in (fcntl.LOCK_EX | fcntl.LOCK_NB, fcntl.LOCK_EX):
        for name, (model, options) in list(pending.items()):
            with open(root / f".{name}.fixture-lock", "w") as lock:
                try:
                    fcntl.flock(lock, flags)
                except BlockingIOError:
                    continue  # another worker is building it: come back to it after the others
                if not (root / name / "manifest.json").is_file():
                    build(model, root / name, options or BuildOptions())
            del pending[name]
    return {name: root / name for name in wanted}


@pytest.fixture(scope="session")
def precision_bundles(request, tmp_path_factory) -> dict[str, Path]:
    """sd1-tiny: int8 first (the default), fp32, fp16; ort-cpu and tensorrt. sd2-tiny: int8, fp32, w8, int8-dynamic
    on ort-cpu.
    Built once per run (shared like `bundles`): the precision tests and the bench's sdc-int8 variant use them."""
    from sdc.compile.context import BuildOptions

    paths = _build_shared(_shared_root(request, tmp_path_factory), {
        "sd1-precision.bundle": (FIXTURES / "sd1-tiny", BuildOptions(precisions=("int8", "fp32", "fp16"),
                                                                     targets=("ort-cpu", "tensorrt"),
                                                                     calibration_samples=8)),
        "sd2-precision.bundle": (FIXTURES / "sd2-tiny", BuildOptions(
            precisions=("int8", "fp32", "w8", "int8-dynamic"), calibration_samples=8)),
    })
    return {"sd1-tiny": paths["sd1-precision.bundle"], "sd2-tiny": paths["sd2-precision.bundle"]}


@pytest.fixture(scope="session")
def bundles(request, tmp_path_factory) -> dict[str, Path]:
    """sd1-tiny and sd2-tiny built once per test run, with the Python API (the CLI is covered separately).

    Under pytest-xdist every worker would build them; instead the workers share one folder beside their
    own temporary roots, and the first to take its lock builds (tests must not modify these bundles:
    copy one first).
    """
    paths = _build_shared(_shared_root(request, tmp_path_factory),
                          {f"{family}.bundle": (FIXTURES / family, None) for family in FAMILIES})
    return {family: paths[f"{family}.bundle"] for family in FAMILIES}


@pytest.fixture(scope="session")
def sdxl_bundles(request, tmp_path_factory) -> dict[str, Path]:
    """The SDXL base (fp32 first, then int8) and refiner (fp32) fixtures built once per run, shared like `bundles`."""
    from sdc.compile.context import BuildOptions

    options = {"sdxl-tiny": BuildOptions(precisions=("fp32", "int8"), calibration_samples=8)}
    paths = _build_shared(_shared_root(request, tmp_path_factory),
                          {f"{name}.bundle": (FIXTURES / name, options.get(name)) for name in SDXL_FAMILIES})
    return {name: paths[f"{name}.bundle"] for name in SDXL_FAMILIES}


FLUX_FAMILIES = ("flux-tiny", "flux-schnell-tiny")  # dev-like and schnell-like (tests/fixtures/make_flux_fixtures.py)


@pytest.fixture(scope="session")
def flux_bundles(request, tmp_path_factory) -> dict[str, Path]:
    """Both Flux fixtures built once per run with the default options, shared like `bundles`."""
    paths = _build_shared(_shared_root(request, tmp_path_factory),
                          {f"{name}.bundle": (FIXTURES / name, None) for name in FLUX_FAMILIES})
    return {name: paths[f"{name}.bundle"] for name in FLUX_FAMILIES}


@pytest.fixture
def fixture_copy(tmp_path):
    """A writable copy of a fixture folder, for tests that break it."""

    def copy(family: str) -> Path:
        dst = tmp_path / family
        shutil.copytree(FIXTURES / family, dst)
        return dst

    return copy
