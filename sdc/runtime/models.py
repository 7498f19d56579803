"""ONNX Runtime sessions behind the `models[name](**inputs) -> dict` interface, with provider choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sdc.errors import BundleError, InputError

# ONNX Runtime's providers. TensorRT is not among them: sdc runs its own TensorRT engines
# (sdc.runtime.tensorrt_model), chosen by sdc.runtime.backend.
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}


# The provider each artifact target's graph needs (its contrib ops exist only there); the TensorRT
# target's ONNX graph is standard ONNX, so ONNX Runtime's CPU provider runs it too.
TARGET_PROVIDER = {"portable": "CPUExecutionProvider", "ort-cpu": "CPUExecutionProvider",
                   "ort-cuda": "CUDAExecutionProvider", "tensorrt": "CPUExecutionProvider"}


def target_providers(target: str) -> list[str] | None:
    """Providers that run a `target` artifact here, or None when this onnxruntime lacks the one it needs."""
    import onnxruntime as ort

    want = TARGET_PROVIDER[target]
    if want not in ort.get_available_providers():
        return None
    return [want] if want == "CPUExecutionProvider" else [want, "CPUExecutionProvider"]


def resolve_providers(provider: str) -> list[str]:
    """`auto` picks CUDA when this onnxruntime build has it; asking for a missing one is an error."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider == "auto":
        return PROVIDERS["cuda"] if "CUDAExecutionProvider" in available else PROVIDERS["cpu"]
    if provider == "tensorrt":
        raise InputError("provider 'tensorrt' runs a bundle's TensorRT engines (sdc.runtime.load / sdc generate); "
                         "ONNX Runtime sessions run on cpu or cuda")
    if provider not in PROVIDERS:
        raise InputError(f"provider {provider!r} is unknown; choose auto, cpu or cuda")
    if PROVIDERS[provider][0] not in available:
        raise InputError(
            f"provider {provider!r} needs {PROVIDERS[provider][0]}, which this onnxruntime lacks "
            f"(has {', '.join(available)}); install onnxruntime-gpu or use --provider cpu"
        )
    return PROVIDERS[provider]


def emulated_precision(precision: str, providers: list[str]) -> str | None:
    """The low float type an artifact of `precision` runs emulated per op in (sdc.runtime.emulate) on these
    providers: fp16/bf16 on ONNX Runtime's CPU provider; None where it runs as it is."""
    from sdc.runtime.emulate import LOW_TYPES

    return precision if precision in LOW_TYPES.values() and providers[0] == "CPUExecutionProvider" else None


class OnnxModel:
    """One submodel: call with named numpy inputs, get a dict of named numpy outputs."""

    def __init__(self, path: Path, spec: dict, providers: list[str], threads: int = 0, fuse: bool = True,
                 emulate: str | None = None):
        """emulate="fp16"/"bf16": run the low-precision graph on the CPU through sdc.runtime.emulate (every op's
        result rounded to the low type, as the build validated it), not through ONNX Runtime's own CPU path,
        which widens to fp32 around the ops it lacks (hiding intermediate overflow) and has no bf16 kernels."""
        self.path = Path(path)
        self.inputs = {t["name"]: np.dtype(t["dtype"]) for t in spec["inputs"]}
        self.output_names = [t["name"] for t in spec["outputs"]]
        self.emulated = emulate
        if emulate:
            try:
                import onnx  # noqa: F401  (the emulation rewrites the graph)
            except ImportError:
                raise ImportError(f"{emulate} on a CPU needs the per-op emulation, which needs onnx "
                                  f"(pip install 'sdc[build]') or a GPU provider") from None
            from sdc.runtime.emulate import emulated_session

            self.session = emulated_session(self.path, threads=threads)
            return
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only: unused-initializer notices are noise to users
        if not fuse:  # every node as written (Q/DQ stay ops): how a CPU checks a graph meant for TensorRT
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            why = str(e).splitlines()[0][:200]
            if "NOT_IMPLEMENTED" in why and providers[0] == "CPUExecutionProvider":
                raise InputError(f"{path}: ONNX Runtime's CPU provider has no kernel for this graph ({why}); run it "
                                 f"with a GPU provider, or emulated per op (sdc.runtime.load(..., emulate=True), "
                                 f"`sdc eval`)") from None
            raise BundleError(f"{path}: onnxruntime cannot load it ({why}); rebuild the bundle")

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        if set(inputs) != set(self.inputs):
            raise InputError(f"{self.path}: expected inputs {sorted(self.inputs)}, got {sorted(inputs)}")
        feed = {k: np.ascontiguousarray(v, dtype=self.inputs[k]) for k, v in inputs.items()}
        return dict(zip(self.output_names, self.session.run(self.output_names, feed)))
