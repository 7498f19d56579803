"""TensorRT engines of a bundle: identity (this module) and, where TensorRT exists, building and running them.

An engine is only valid for the graph, weights, precision recipe, shape profile and builder settings it was
built from, and for the TensorRT version, CUDA major version and GPU (compute capability and name) it was
built on. Its content key hashes all of those, so a plan is never loaded blindly: a key that differs from
this machine's is a rebuild (when allowed) or a fallback with the reason. Plans live at
`engines/<key>/<submodel>.<precision>.plan`.

Modules: this one (identity, the environment probe, the can-use check), `tensorrt` (the builder and the
refit, TensorRT imported lazily), `install` (adding engines to a bundle atomically). The runtime side is
sdc.runtime.backend (which backend runs) and sdc.runtime.tensorrt_model (running a plan). None of the
TensorRT calls has run on a GPU yet (no GPU or TensorRT on the machines this was written on).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from sdc.errors import InputError

KEY_LENGTH = 16  # hex digits of the content key in the path (the manifest keeps every fact besides)


@dataclass(frozen=True)
class Environment:
    """The facts of the machine an engine is built on (or loaded on)."""

    tensorrt: str  # version
    cuda_major: int
    gpu_name: str
    compute_capability: str  # e.g. "9.0"


@dataclass(frozen=True)
class BuilderSettings:
    optimization_level: int = 3
    workspace_mib: int = 4096
    weight_stripped: bool = True  # STRIP_PLAN + REFIT_IDENTICAL: the bundle's ONNX weights are refit on load


def engine_key(artifact: dict, files: dict, profile: dict, settings: BuilderSettings, env: Environment) -> str:
    """Content key of one engine: the artifact's graph and weight bytes (their sha256 from the manifest's file
    table), its precision and precision record, the profile's dim ranges, the builder settings and the machine."""
    facts = {
        "graph": artifact["sha256"],
        "weights": {p: files[p]["sha256"] for p in sorted(artifact.get("data_paths", []))},
        "precision": artifact["precision"],
        "recipe": artifact.get("precision_record") or {},
        "profile": {k: profile[k] for k in sorted(profile) if k != "name"},
        "settings": asdict(settings),
        "environment": asdict(env),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:KEY_LENGTH]


def probe() -> Environment:
    """This machine's TensorRT / CUDA / GPU, or InputError naming what is missing (tensorrt imported lazily)."""
    try:
        import tensorrt
    except ImportError:
        raise InputError("TensorRT is not installed here (pip install tensorrt, on a machine with an NVIDIA GPU and "
                         "its driver); engines are built on the GPU host they will run on") from None
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise InputError("cuda-python is not installed (pip install cuda-python): sdc reads the GPU's name and "
                         "compute capability through it") from None
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count < 1:
        raise InputError("no CUDA GPU is visible to this process (cudaGetDeviceCount); engines need one")
    err, props = cudart.cudaGetDeviceProperties(0)
    err2, version = cudart.cudaRuntimeGetVersion()
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return Environment(tensorrt.__version__, int(version) // 1000, name, f"{props.major}.{props.minor}")


def check_can_use(entry: dict, env: Environment, manifest: dict | None = None) -> str | None:
    """Why a manifest engine entry cannot be loaded on `env` (None when it can): never load a plan blindly.

    With the manifest, the key is also recomputed from the artifact's current hashes, the profile dims and
    the builder settings the entry states: a plan whose inputs changed since it was built is refused."""
    want = entry.get("environment") or {}
    for field, have in asdict(env).items():
        if want.get(field) != have:
            return f"built for {field} {want.get(field)!r}, this machine has {have!r}"
    if manifest is not None:
        sub = manifest["submodels"][entry["submodel"]]
        art = next(a for a in sub["artifacts"] if a["path"] == entry["artifact"])
        key = engine_key(art, manifest["files"], dict(entry["dims"], name=entry["profile"]),
                         BuilderSettings(**entry["settings"]), env)
        if key != entry["key"]:
            return f"built from other inputs (its key {entry['key']} is {key} for this bundle's {entry['artifact']})"
    return None
