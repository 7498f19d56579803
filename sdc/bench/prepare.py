"""What a `sdc bench` run sets up before it times anything: machine facts, inputs, bundles, worker processes.

Workers run `python -m sdc.bench.worker TASK.json` with their output in a log file; a bundle
in the work dir is reused when it was built from the same weights, options and build code.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from sdc.errors import InputError

# sdc variant -> (passes, extra targets, precisions) of the bundle it runs; the variant runs the first precision
BUNDLES = {"sdc": (False, (), ("fp32",)), "sdc-passes": (True, ("ort-cpu",), ("fp32",)),
           "sdc-int8": (True, ("ort-cpu",), ("int8",)), "sdc-int8-dynamic": (True, ("ort-cpu",), ("int8-dynamic",)),
           "sdc-w8": (True, ("ort-cpu",), ("w8",))}
FLUX_TEXT_TOKENS = 512  # FluxPipeline's default max_sequence_length
# CPU features INT8 and fp16 speed depend on (x86 /proc/cpuinfo flag names).
CPU_FEATURES = {"AVX2": ("avx2",), "AVX-512": ("avx512f",), "VNNI": ("avx512_vnni", "avx_vnni"),
                "AMX": ("amx_int8", "amx_bf16", "amx_tile"), "AVX512-FP16": ("avx512_fp16",)}
VERSIONS = ("torch", "diffusers", "transformers", "accelerate", "paddlepaddle", "paddle2onnx", "onnxruntime", "numpy",
            "sdc")


@dataclass
class MachineInfo:
    cpu: str
    cores: int  # CPUs this process may use
    memory_bytes: int
    python: str
    versions: dict[str, str]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    features: dict[str, bool] = field(default_factory=dict)  # CPU_FEATURES present on this CPU

    def features_text(self) -> str:
        return ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in self.features.items()) or "unknown"


def machine_info() -> MachineInfo:
    from importlib.metadata import PackageNotFoundError, version

    cpu = platform.processor() or platform.machine()
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = next((int(line.split()[1]) * 1024 for line in _read("/proc/meminfo").splitlines()
                if line.startswith("MemTotal:")), 0)
    versions = {}
    for pkg in VERSIONS:
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = "not installed"
    return MachineInfo(cpu, len(os.sched_getaffinity(0)), mem, platform.python_version(), versions, os.getloadavg(),
                       features=cpu_features())


def cpu_features() -> dict[str, bool]:
    """Which of CPU_FEATURES this CPU has, from the flags line of /proc/cpuinfo (empty where it is unreadable)."""
    flags: set[str] = set()
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return {name: any(f in flags for f in names) for name, names in CPU_FEATURES.items()} if flags else {}


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def component_dims(model_dir: Path, height: int, width: int, components: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Sizes per submodel: one CFG UNet step (batch 2), the encoder on both prompts, one image through the VAE."""
    from sdc.graphs.configs import load_model_index
    from sdc.profiles import Facts

    family = load_model_index(model_dir).family
    facts = Facts.of(model_dir, family)  # the same reading of VAE downscale, latent multiple and CLIP length
    down, seq, flux = facts.downscale, facts.clip_sequence, family == "flux"
    multiple = down * facts.multiple
    h, w = height, width
    if h % multiple or w % multiple or h <= 0 or w <= 0:
        raise InputError(f"--height {h} --width {w}: both must be positive multiples of {multiple} for this model")
    latent = {"latent_height": h // down, "latent_width": w // down}
    # Flux: one transformer step (batch 1: dev's guidance is an input, not a second batch half) over the
    # image tokens of 2x2 patches and T5's max_sequence_length text tokens
    image_tokens = (h // down // 2) * (w // down // 2)
    dims = {"text_encoder": {"batch": 1 if flux else 2, "sequence": seq},
            "unet": {"batch": 2, "sequence": seq, **latent},
            "transformer": {"batch": 1, "image_tokens": image_tokens, "text_tokens": FLUX_TEXT_TOKENS,
                            "tokens": image_tokens + FLUX_TEXT_TOKENS},
            "text_encoder_2": {"batch": 1, "sequence": FLUX_TEXT_TOKENS},
            "vae_decoder": {"batch": 1, **latent}, "vae_encoder": {"batch": 1, "height": h, "width": w}}
    return {c: dims[c] for c in components}


def write_inputs(model_dir: Path, dims: dict[str, dict[str, int]], folder: Path, seed: int) -> dict[str, Path]:
    """One .npz of inputs per submodel, drawn once and read by every variant."""
    from sdc.graphs.family import pipeline_config
    from sdc.graphs.specs import spec_for

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, d in dims.items():
        inputs = spec_for(name, pipeline_config(model_dir, name)).dummy_inputs(d, seed)
        if name == "unet":  # one guidance step: both halves of the batch share the timestep
            inputs["timestep"] = np.full_like(inputs["timestep"], inputs["timestep"][0])
        paths[name] = folder / f"{name}.npz"
        np.savez(paths[name], **inputs)
    return paths


def run_worker(task: dict, folder: Path, stem: str, threads: int) -> dict:
    """Run one sdc.bench.worker task in a fresh process; its output goes to a log file beside the result."""
    folder.mkdir(parents=True, exist_ok=True)
    task = dict(task, result=str(folder / f"{stem}.json"), threads=threads)
    task_path, log = folder / f"{stem}.task.json", folder / f"{stem}.log"
    task_path.write_text(json.dumps(task), encoding="utf-8")
    Path(task["result"]).unlink(missing_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.run([sys.executable, "-m", "sdc.bench.worker", str(task_path)],
                              stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        return json.loads(Path(task["result"]).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        return {"status": "failed", "reason": f"worker {how} without a result (out of memory?); log: {log}"}


def build_code_hash() -> str:
    """What a bundle's content depends on besides the weights: the build code and the exporter versions."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    root = Path(__file__).resolve().parent.parent  # the sdc package
    h = hashlib.sha256()
    for path in sorted(p for d in ("compile", "graphs", "passes") for p in (root / d).rglob("*.py")):
        if not path.name.startswith(("bench", "cli")):
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    for pkg in ("paddlepaddle", "paddle2onnx", "onnx", "onnxscript", "onnxruntime"):
        try:
            h.update(f"{pkg}=={version(pkg)}".encode())
        except PackageNotFoundError:
            pass
    return h.hexdigest()


def given_bundle(model_dir: Path, variant: str, bundle: Path) -> tuple[Path, str]:
    """A bundle the user built (`sdc bench --bundle VARIANT=PATH`), checked to fit the variant: built from these
    weights (the hash is recomputed over the model's files of the bundle's submodels) with the variant's precision
    and target. Saves rebuilding a real-size INT8 bundle that `sdc build` has just made."""
    from sdc.graphs import folder_of
    from sdc.graphs.weights import find_weight_files, weights_sha256
    from sdc.runtime.bundle import read_manifest

    manifest = read_manifest(bundle)
    files = {f for name in manifest["submodels"] for f in find_weight_files(model_dir / folder_of(name))}
    if weights_sha256(files) != manifest["source"]["weights_sha256"]:
        raise InputError(f"--bundle {variant}={bundle}: built from other weights than {model_dir}; rebuild it from "
                         f"{model_dir} or drop the --bundle")
    _, targets, precisions = BUNDLES[variant]
    want_target = targets[0] if targets else "portable"
    have = {(a.get("target"), a.get("precision", "fp32")) for sub in manifest["submodels"].values()
            for a in sub.get("artifacts", [])}
    if (want_target, precisions[0]) not in have:
        raise InputError(f"--bundle {variant}={bundle}: has no {want_target} {precisions[0]} artifacts, which "
                         f"{variant} runs; build it with --target {want_target} --precision {precisions[0]}")
    return bundle, f"{variant}: given {bundle} (built {manifest['created_at']})"


def ensure_bundle(model_dir: Path, variant: str, components: tuple[str, ...], work: Path, weights: str,
                  threads: int, rebuild: bool = False, log: Callable[[str], None] = print) -> tuple[Path | None, str]:
    """The bundle an sdc variant runs: reused from the work dir when weights, options and build code match,
    else built in a worker process. Returns (path or None when the build failed, a note for the report)."""
    from sdc.runtime.bundle import read_manifest

    passes, targets, precisions = BUNDLES[variant]
    # Calibration runs the whole pipeline: a reduced-precision bundle holds every submodel.
    submodels = sorted(components) if precisions == ("fp32",) else None
    bundle = work / "bundles" / f"{variant}.bundle"
    stamp = {"passes": passes, "targets": list(targets), "submodels": submodels, "weights_sha256": weights,
             "code": build_code_hash(), "precisions": list(precisions)}
    stamp_path = bundle.with_suffix(".json")
    if not rebuild and bundle.is_dir() and stamp_path.is_file():
        try:
            same = json.loads(stamp_path.read_text(encoding="utf-8")) == stamp
            manifest = read_manifest(bundle)
        except Exception:  # unreadable leftovers: rebuild them
            same = False
        if same and manifest["source"]["weights_sha256"] == weights:
            return bundle, f"{variant}: reused {bundle} (built {manifest['created_at']})"
    stamp_path.unlink(missing_ok=True)
    log(f"building {bundle} (passes={passes}, targets={list(targets)}, precisions={list(precisions)}); "
        f"takes minutes for a real UNet")
    t0 = time.perf_counter()
    task = {"kind": "build", "model_dir": str(model_dir), "bundle": str(bundle), "passes": passes,
            "targets": list(targets), "submodels": submodels, "precisions": list(precisions)}
    result = run_worker(task, work / "logs", f"build-{variant}", threads)
    if result["status"] != "ok":
        return None, f"{variant}: build failed: {result.get('reason')}; log: {work / 'logs' / f'build-{variant}.log'}"
    stamp_path.write_text(json.dumps(stamp), encoding="utf-8")
    return bundle, f"{variant}: built {bundle} in {time.perf_counter() - t0:.0f}s"
