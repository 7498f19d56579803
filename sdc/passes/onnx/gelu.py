"""Pass `gelu`: exact (erf) GELU, x·½(1 + erf(x/√2)), as com.microsoft Gelu for ONNX Runtime targets.

paddle2onnx writes F.gelu(x, approximate=False) as ((x · (erf(x / √2) + 1)) · ½). ONNX Runtime
runs com.microsoft Gelu on CPU and CUDA. TensorRT fuses the erf form itself, and ONNX's own Gelu
needs opset 20, so other targets keep the erf form.
"""

from __future__ import annotations

import math

from onnxscript.rewriter import MatchResult, RewriteRule

from sdc.passes.onnx._fusion import Fusion, scalar


def erf_gelu(op, x, sqrt2, one, half):
    return op.Mul(op.Mul(x, op.Add(op.Erf(op.Div(x, sqrt2)), one)), half)


def check_erf_gelu(context, sqrt2, one, half, **_) -> MatchResult:
    result = MatchResult()
    for name, value, expected in (("divisor", sqrt2, math.sqrt(2)), ("offset", one, 1.0), ("factor", half, 0.5)):
        got = scalar(value)
        if got is None or not math.isclose(got, expected, rel_tol=1e-6):
            return result.fail(f"{name} is {got}, not {expected:.7g}", value)
    return result


def gelu(op, x, **_):
    return op.Gelu(x, _domain="com.microsoft")


RULES = (RewriteRule(erf_gelu, gelu, check_erf_gelu, name="Gelu"),)

gelu_ort = Fusion("gelu", RULES)
