"""`sdc verify --numerics`: re-run each artifact on the inputs recorded at build time, compare to Paddle's outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from sdc.errors import ValidationError
from sdc.runtime.bundle import bundle_data, safe_join, validation_path
from sdc.runtime.models import TARGET_PROVIDER, OnnxModel, emulated_precision, resolve_providers, target_providers


def recorded_cases(path: Path) -> list[tuple[dict, dict]]:
    """[(inputs, outputs)] from a validation.safetensors written by the build."""
    from safetensors.numpy import load_file

    cases: dict[int, tuple[dict, dict]] = {}
    with bundle_data(path, "recorded validation cases"):
        for key, arr in load_file(str(path)).items():
            i, kind, name = key.split("/", 2)
            inputs, outputs = cases.setdefault(int(i), ({}, {}))
            (inputs if kind == "input" else outputs)[name] = arr
    return [cases[i] for i in sorted(cases)]


def output_errors(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """{output: (max |got - expected|, max |expected|)}; NaN counts as an infinite error. The build's
    validation and `sdc verify --numerics` both judge with this and `within`."""
    errors = {}
    for name, ref in expected.items():
        out = got[name]
        if out.shape != ref.shape:
            raise ValidationError(f"output {name} has shape {list(out.shape)}, the reference {list(ref.shape)}")
        err = float(np.max(np.abs(out.astype(np.float64) - ref))) if ref.size else 0.0
        scale = float(np.max(np.abs(ref))) if ref.size else 0.0
        errors[name] = (err if np.isfinite(err) else float("inf"), scale)
    return errors


def within(err: float, scale: float, atol: float, rtol: float) -> bool:
    return err <= atol + rtol * scale


def _runner(path: Path, sub: dict, art: dict, providers: list[str]):
    """A callable running one artifact the way its build validated it, and a few words on how."""
    precision = art.get("precision", "fp32")
    low = emulated_precision(precision, providers)
    if low:
        return OnnxModel(path, sub, providers, emulate=low), f"{low} emulated per op"
    fused = "integer kernels" in (art.get("validation") or {}).get("where", "integer kernels")
    return OnnxModel(path, sub, providers, fuse=fused or precision != "int8"), providers[0]


def verify_numerics(bundle: Path, manifest: dict, provider: str = "cpu") -> Iterator[tuple[str, bool | None]]:
    """Yield (message, passed) per artifact, with the same tolerance rule the build used.

    passed is None for an artifact this machine cannot run (a CUDA-only graph without CUDA).
    """
    bundle = Path(bundle)
    providers = resolve_providers(provider)
    for name, sub in manifest["submodels"].items():
        cases = recorded_cases(safe_join(bundle, validation_path(name)))
        for art in sub["artifacts"]:
            label = f"{name} {art['target']}/{art['precision']}"
            if art.get("weights"):  # its recorded cases are of the depth-tied graph the build validated
                yield (f"{label}: not run, its weights were streamed after validation (validated "
                       f"{art['weights'].get('validated', 'depth-tied')})"), None
                continue
            needed = target_providers(art["target"])
            if needed is None:
                yield f"{label}: not run, this onnxruntime lacks the provider it needs", None
                continue
            v = art.get("validation") or {}
            atol, rtol = v.get("atol", 1e-4), v.get("rtol", 1e-4)
            # The providers asked for, unless the artifact's ops exist only on a GPU provider.
            cpu_graph = TARGET_PROVIDER[art["target"]] == "CPUExecutionProvider"
            path = safe_join(bundle, art["path"])
            try:
                model, how = _runner(path, sub, art, providers if cpu_graph else needed)
            except ImportError as e:
                yield f"{label}: not run, {e}", None
                continue
            worst, ok = 0.0, True
            judged = v.get("judged_on", "every case") == "every case"
            for inputs, expected in cases:
                for err, scale in output_errors(model(**inputs), expected).values():
                    worst = max(worst, err)
                    ok &= within(err, scale, atol, rtol)
            if not judged:  # the build recorded these cases without judging them: they must still give its error
                ok = worst <= 1.5 * v.get("max_abs", 0.0) + atol
                how += f"; unjudged cases at build, must stay near the recorded {v.get('max_abs', 0.0):.2e}"
            yield f"{label}: max abs err {worst:.2e} over {len(cases)} cases ({how})", ok
