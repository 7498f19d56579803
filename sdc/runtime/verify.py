"""`sdc verify --numerics`: re-run each artifact on the inputs recorded at build time, compare to Paddle's outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from sdc.runtime.bundle import safe_join, validation_path
from sdc.runtime.models import OnnxModel, resolve_providers


def recorded_cases(path: Path) -> list[tuple[dict, dict]]:
    """[(inputs, outputs)] from a validation.safetensors written by the build."""
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    cases: dict[int, tuple[dict, dict]] = {}
    for key, arr in tensors.items():
        i, kind, name = key.split("/", 2)
        inputs, outputs = cases.setdefault(int(i), ({}, {}))
        (inputs if kind == "input" else outputs)[name] = arr
    return [cases[i] for i in sorted(cases)]


# Artifacts whose graphs use contrib ops that exist only on one provider.
NEEDS_PROVIDER = {"ort-cuda": "CUDAExecutionProvider"}


def verify_numerics(bundle: Path, manifest: dict, provider: str = "cpu") -> Iterator[tuple[str, bool | None]]:
    """Yield (message, passed) per artifact, with the same tolerance rule the build used.

    passed is None for an artifact this machine cannot run (a CUDA-only graph without CUDA).
    """
    import onnxruntime as ort

    bundle = Path(bundle)
    providers = resolve_providers(provider)
    available = ort.get_available_providers()
    for name, sub in manifest["submodels"].items():
        cases = recorded_cases(safe_join(bundle, validation_path(name)))
        for art in sub["artifacts"]:
            need = NEEDS_PROVIDER.get(art["target"])
            if need and need not in available:
                yield f"{name} {art['target']}/{art['precision']}: not run, needs {need}", None
                continue
            if need:
                providers = [need, "CPUExecutionProvider"]
            v = art.get("validation") or {}
            atol, rtol = v.get("atol", 1e-4), v.get("rtol", 1e-4)
            model = OnnxModel(safe_join(bundle, art["path"]), sub, providers)
            worst, ok = 0.0, True
            for inputs, expected in cases:
                got = model(**inputs)
                for out_name, ref in expected.items():
                    err = float(np.max(np.abs(got[out_name].astype(np.float64) - ref))) if ref.size else 0.0
                    worst = max(worst, err)
                    ok &= bool(err <= atol + rtol * float(np.max(np.abs(ref)) if ref.size else 0.0))
            yield f"{name} {art['target']}/{art['precision']}: max abs err {worst:.2e} over {len(cases)} cases", ok
