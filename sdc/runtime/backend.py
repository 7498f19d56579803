"""Which backend runs a bundle here: TensorRT engines, ONNX Runtime on CUDA, or ONNX Runtime on the CPU.

`auto` prefers TensorRT -> CUDA -> CPU and says what it chose and why it passed over the others;
`tensorrt` is the same order starting from TensorRT (a plan built for another GPU or TensorRT version is
never loaded: the runtime falls back with the reason, or builds the engines here when allowed);
`cuda` and `cpu` are ONNX Runtime's providers, nothing else.

The choice is a pure function of facts probed once (this machine's TensorRT environment or why there is
none, ONNX Runtime's providers, the manifest's engine entries), so every branch is tested on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sdc.errors import InputError

BACKENDS = ("auto", "tensorrt", "cuda", "cpu")
_ORDER = {"auto": ("tensorrt", "cuda", "cpu"), "tensorrt": ("tensorrt", "cuda", "cpu"), "cuda": ("cuda",),
          "cpu": ("cpu",)}


@dataclass(frozen=True)
class Choice:
    backend: str  # "tensorrt", "cuda" or "cpu"
    reason: str  # one line for the user: what runs, and why the ones before it do not
    engines: dict = field(default_factory=dict)  # tensorrt: submodel -> engine entry
    precision: str | None = None  # tensorrt: the engines' precision
    build: bool = False  # tensorrt: build the engines here first (--build-engines)


def usable_engines(manifest: dict, env, precision: str | None) -> tuple[dict, str | None]:
    """An engine for every submodel that this machine can load, all of one precision (the caller's, else
    the bundle's default first), or ({}, why not)."""
    from sdc.engines import check_can_use
    from sdc.runtime.loader import bundle_precisions

    subs = manifest["submodels"]
    why = None
    for p in ([precision] if precision else bundle_precisions(manifest)):
        chosen = {}
        for name, sub in subs.items():
            checked = [(e, check_can_use(e, env, manifest)) for e in sub.get("engines", []) if e["precision"] == p]
            fits = [e for e, reason in checked if reason is None]
            if fits:
                chosen[name] = fits[-1]  # the newest entry
                continue
            why = why or (f"the {p} engine of {name} was {checked[-1][1]}" if checked
                          else f"the bundle has no {p} engine of {name}")
            break
        if len(chosen) == len(subs):
            return chosen, None
    return {}, why or "the bundle has no engines"


def choose_backend(requested: str, manifest: dict, precision: str | None, tensorrt, ort_providers: list[str],
                   build_engines: bool = False) -> Choice:
    """`tensorrt`: this machine's sdc.engines.Environment, or a string saying why TensorRT cannot run here."""
    if requested not in _ORDER:
        raise InputError(f"provider {requested!r} is unknown; choose {', '.join(BACKENDS)}")
    passed: list[str] = []

    def said(what: str) -> str:
        return what + (f" ({'; '.join(passed)})" if passed else "")

    for backend in _ORDER[requested]:
        if backend == "tensorrt":
            if isinstance(tensorrt, str):
                if requested == "tensorrt":
                    raise InputError(f"--provider tensorrt: {tensorrt}")
                passed.append(f"not TensorRT: {tensorrt.split(' (')[0]}")
                continue
            engines, why = usable_engines(manifest, tensorrt, precision)
            if engines:
                p = next(iter(engines.values()))["precision"]
                return Choice("tensorrt", said(f"TensorRT {tensorrt.tensorrt} engines ({p}) on {tensorrt.gpu_name}"),
                              engines, p)
            if build_engines:
                return Choice("tensorrt", said(f"TensorRT on {tensorrt.gpu_name}, building its engines first: {why}"),
                              build=True, precision=precision)
            passed.append(f"not TensorRT: {why}; --build-engines builds them on this machine")
        elif backend == "cuda":
            if "CUDAExecutionProvider" in ort_providers:
                return Choice("cuda", said("ONNX Runtime on CUDA"))
            if requested == "cuda":
                raise InputError("--provider cuda needs CUDAExecutionProvider, which this onnxruntime lacks (has "
                                 f"{', '.join(ort_providers)}); install onnxruntime-gpu or use --provider cpu")
            passed.append("not CUDA: this onnxruntime has no CUDAExecutionProvider")
        else:
            return Choice("cpu", said("ONNX Runtime on the CPU"))
    raise AssertionError("unreachable: every order ends in a backend that returns")


def tensorrt_here():
    """This machine's TensorRT environment, or why there is none (never raises)."""
    from sdc.engines import probe
    from sdc.errors import SdcError

    try:
        return probe()
    except SdcError as e:
        return str(e)
    except Exception as e:  # a broken driver or library: TensorRT is not usable here, say why
        return f"TensorRT could not start ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})"
