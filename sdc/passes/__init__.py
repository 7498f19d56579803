"""Graph rewrites between export and validation; `optimize(model, target)` runs a target's ONNX pipeline."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

    from sdc.passes.onnx.optimize import PassReport

TARGETS = ("portable", "ort-cpu", "ort-cuda", "tensorrt")


def optimize(model: onnx.ModelProto, target: str, debug: bool = False,
             after: PassReport | None = None, base_dir=None) -> tuple[onnx.ModelProto, PassReport]:
    """See sdc.passes.onnx.optimize.optimize (imported here lazily: onnx and onnxscript are build-time deps)."""
    from sdc.passes.onnx.optimize import optimize as _optimize

    return _optimize(model, target, debug, after, base_dir)


def fused_ops(passes: dict[str, dict[str, int]]) -> dict[str, int]:
    """Ops the fusion passes of one artifact created, summed over passes (cleanup, which every artifact
    has, is not a fusion), e.g. {"MultiHeadAttention": 32, "Gelu": 16}; empty when nothing fused."""
    fused: dict[str, int] = {}
    for name, counts in passes.items():
        if name.startswith(("cleanup", "precision")):  # precision passes are reported as precision, not fusion
            continue
        for op, n in counts.items():
            if n:
                fused[op] = fused.get(op, 0) + n
    return fused


def __getattr__(name: str):
    if name == "PassReport":
        from sdc.passes.onnx.optimize import PassReport

        return PassReport
    raise AttributeError(name)
