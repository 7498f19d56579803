"""Pass `geglu`: diffusers' GEGLU, value · gelu(gate) from one projection, as com.microsoft BiasSplitGelu.

    h = x·W + b;  value, gate = Split(h, [n, n], axis=-1);  out = value · gelu_erf(gate)

(the first half is the value, the second the gate). BiasSplitGelu(x·W, b) does the bias add, split
and gated GELU in one kernel, but exists only on CUDA, and only for 2n in {2560, 5120, 10240}
(onnxruntime contrib_ops/cuda/diffusion/bias_split_gelu.cc), the SD 1.x/2.x/XL widths. So: ort-cuda
only; on ort-cpu the gelu pass fuses the Gelu and the Split stays.
"""

from __future__ import annotations

from onnxscript.rewriter import MatchResult, RewriteRule

from sdc.passes.onnx._fusion import Fusion, constant
from sdc.passes.onnx.gelu import check_erf_gelu, erf_gelu

CUDA_WIDTHS = (2560, 5120, 10240)


def geglu_pattern(op, x, w, b, halves, sqrt2, one, half, split_axis):
    value, gate = op.Split(op.Add(op.MatMul(x, w), b), halves, axis=split_axis, _outputs=2)
    return op.Mul(value, erf_gelu(op, gate, sqrt2, one, half))


def check_geglu(context, x, w, b, halves, split_axis, **bindings) -> MatchResult:
    result = check_erf_gelu(context, **bindings)
    if not result:
        return result
    weight, bias, sizes = constant(w), constant(b), constant(halves)
    if weight is None or weight.ndim != 2 or bias is None or bias.shape != (weight.shape[1],):
        return result.fail("projection weight/bias are not constants [D, 2n] / [2n]", w)
    if x.shape is None or x.shape.rank() != 3:
        return result.fail(f"input is not known to be 3-D (shape {x.shape}), as BiasSplitGelu needs", x)
    if split_axis.value not in (-1, 2):
        return result.fail(f"split over axis {split_axis.value}, not the last", halves)
    width = weight.shape[1]
    if sizes is None or sizes.tolist() != [width // 2, width // 2]:
        return result.fail(f"split sizes {sizes} are not two halves of {width}", halves)
    if width not in CUDA_WIDTHS:
        return result.fail(f"width {width} not in {CUDA_WIDTHS}, which ORT's CUDA BiasSplitGelu requires", w)
    return result


def bias_split_gelu(op, x, w, b, **_):
    return op.BiasSplitGelu(op.MatMul(x, w), b, _domain="com.microsoft")


RULES = (RewriteRule(geglu_pattern, bias_split_gelu, check_geglu, name="BiasSplitGelu"),)

geglu_ort_cuda = Fusion("geglu", RULES)
