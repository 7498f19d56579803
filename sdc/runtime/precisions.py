"""Which numeric precisions exist, which artifact targets can run each, and which one a provider prefers.

One table serves the build (refusing a precision no requested target can run) and the runtime
(choosing an artifact when the user names no precision). Imports nothing heavy.

Why each pair is or is not allowed:
- fp16 / bf16 need GPU kernels: ONNX Runtime's x86 CPU provider has fp16 kernels for few ops and
  silently wraps the rest in casts back to fp32 (slower than fp32, and numerically not fp16);
  TensorRT (strongly typed since 10: the ONNX types are the engine's precision) and ONNX Runtime's
  CUDA provider run them. bf16 Conv needs TensorRT; ONNX Runtime's CUDA provider lacks most bf16 ops.
- int8 (static, Q/DQ): ONNX Runtime's CPU provider fuses the Q/DQ pairs into integer kernels
  (QLinearConv, QLinearMatMul); TensorRT fuses the same pattern. ONNX Runtime's CUDA provider has
  no integer conv kernels, so the graph would run as float with extra (de)quantize work.
- int8-dynamic (int8 weights, activations quantized per call): DynamicQuantizeLinear + MatMulInteger,
  which ONNX Runtime's CPU provider fuses into its integer GEMM; TensorRT wants explicit Q/DQ, not
  these ops, and ONNX Runtime's CUDA provider was never measured with them. Needs no calibration, so
  it is the int8 that builds for models too large for the static sweep (a real-size SDXL UNet).
- w8 (weights-only int8, activations float): the weights are stored as int8 with a per-channel
  scale and dequantized in the graph, which every provider runs; the compute stays float.
"""

from __future__ import annotations

from sdc.errors import InputError

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int8-dynamic", "w8")
ALL_TARGETS = ("portable", "ort-cpu", "ort-cuda", "tensorrt")

RUNS_ON: dict[str, tuple[str, ...]] = {
    "fp32": ALL_TARGETS,
    "fp16": ("ort-cuda", "tensorrt"),
    "bf16": ("tensorrt",),
    "int8": ("ort-cpu", "tensorrt"),
    "int8-dynamic": ("ort-cpu",),
    "w8": ("ort-cpu", "tensorrt"),
}

WHY_NOT: dict[str, str] = {
    "fp16": "ONNX Runtime has no x86 fp16 kernels for most ops",
    "bf16": "only TensorRT runs bf16 convolutions",
    "int8": "its integer kernels exist on ONNX Runtime's CPU provider and TensorRT only",
    "int8-dynamic": "it is built for ONNX Runtime's CPU integer kernels only",
    "w8": "the ort-cuda graph's fused ops take float weights",
}
# Reduced precisions are built from a target-tuned graph; the portable graph stays the fp32 reference
# every bundle carries (and every provider can fall back to).
PORTABLE_NOTE = "the portable graph is fp32 only; reduced precisions are built for the tuned targets"

# When neither the caller nor the bundle's default names a precision that exists for the provider's
# artifacts, the runtime takes the first of these that exists: the fastest validated artifact.
PREFERENCE: dict[str, tuple[str, ...]] = {
    "CPUExecutionProvider": ("int8", "int8-dynamic", "w8", "fp32"),
    "CUDAExecutionProvider": ("fp16", "bf16", "fp32", "w8"),
    "TensorrtExecutionProvider": ("fp16", "int8", "bf16", "fp32", "w8"),
}


def parse_precisions(text: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """`fp32,int8` -> ("fp32", "int8"): known names, no duplicates, order kept (the first is the default)."""
    items = text.replace(" ", "").split(",") if isinstance(text, str) else [p.strip() for p in text]
    items = [p for p in items if p]
    if not items:
        raise InputError(f"--precision {text!r}: give at least one of {', '.join(PRECISIONS)}")
    for p in items:
        if p not in PRECISIONS:
            raise InputError(f"--precision {p}: unknown precision; choose from {', '.join(PRECISIONS)}")
    if len(set(items)) != len(items):
        raise InputError(f"--precision {text!r}: a precision is named twice")
    return tuple(items)


def plan_precisions(precisions: tuple[str, ...], targets: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """{precision: targets that get an artifact of it}; refuses a precision none of `targets` can run.

    `targets` are the tuned targets of the build (the portable graph, fp32, is always built).
    """
    plan = {}
    for p in precisions:
        ok = ("portable",) if p == "fp32" else ()
        ok += tuple(t for t in targets if t in RUNS_ON[p] and t != "portable")
        if not ok:
            can = ", ".join(t for t in RUNS_ON[p] if t != "portable")
            asked = ", ".join(t for t in targets if t != "portable")
            why = f"{asked}: {WHY_NOT[p]}" if asked else PORTABLE_NOTE
            raise InputError(f"--precision {p}: no target of this build can run it ({why}); "
                             f"add --target {can.split(', ')[0]} (targets that run {p}: {can})")
        plan[p] = ok
    return plan
