"""Pass `rms_norm`: x·rsqrt(mean(x²) + eps)·weight over the last axis, as ORT's SimplifiedLayerNormalization.

sdc.graphs.layers.RMSNorm (T5's layer norms, Flux's per-head q/k norms) exports through paddle2onnx
2.1, after cleanup, as

    ms  = ReduceMean(Pow(x, 2), axes=[-1], keepdims=1) [· 1]        # paddle's `scale` op: Mul by [1.]
    out = Mul(weight, Mul(x, Reciprocal(Sqrt(Add(ms, eps)))))

(the `· 1` survives cleanup because its 1 is a 1-D [1.], which onnxscript's x·1 rule does not take).
The rewrite is SimplifiedLayerNormalization(x, weight, axis=-1, epsilon=eps, stash_type=1): ONNX
Runtime's RMS norm, a contrib op that ORT registers in the *default* ONNX domain (measured with ORT
1.32: the com.microsoft spelling is refused), on CPU and CUDA. So the rewritten graph does not pass
onnx.checker, and only the ort-cpu and ort-cuda pipelines run this pass; portable and tensorrt keep
the standard ops (ONNX's own RMSNormalization needs opset 23; sdc exports at 17 by default).
Axes come from the attribute (opset 17) or the second input (opset 18+). Measured on ORT 1.32 CPU,
2 threads, x [1, 1024, 24, 128] (Flux's q norm): 0.29-0.31x the unfused time.

Not onnxscript's ort_fusions.rms_normalization: its pattern has no Mul by 1 and writes ReduceMean
with an axes input, so on these opset-17 exports it matches nothing.
"""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRule, pattern

from sdc.passes.onnx._fusion import Fusion, attribute, constant, scalar

_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def rms_norm_pattern(op, x, two, one, eps, weight):
    mean_square = op.ReduceMean(op.Pow(x, two), _allow_other_inputs=True, _outputs=["mean_square"])
    mean_square = pattern.OrValue([op.Mul(mean_square, one), mean_square])
    return op.Mul(weight, op.Mul(x, op.Reciprocal(op.Sqrt(op.Add(mean_square, eps)))))


def reduced_axes(node: ir.Node) -> list[int] | None:
    """A ReduceMean's axes (attribute before opset 18, constant input after), or None if unknown/all."""
    axes = attribute(node, "axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        value = constant(node.inputs[1])
        axes = None if value is None else value.reshape(-1).tolist()
    return None if axes is None else list(axes)


def check_rms_norm(context, x, two, one, eps, weight, mean_square, **_) -> MatchResult:
    result = MatchResult()
    if x.dtype not in _FLOATS or weight.dtype != x.dtype:
        return result.fail(f"x ({x.dtype}) and weight ({weight.dtype}) are not one float type", x)
    if x.shape is None or x.shape.rank() < 1 or not isinstance(x.shape[-1], int):
        return result.fail(f"x's last dim is not known (shape {x.shape})", x)
    width, rank = x.shape[-1], x.shape.rank()
    if weight.shape is None or list(weight.shape) != [width]:
        return result.fail(f"weight shape {weight.shape} is not [{width}], x's last dim", weight)
    if scalar(two) != 2.0:
        return result.fail(f"x is raised to {scalar(two)}, not squared", two)
    if one is not None and (scalar(one) != 1.0 or constant(one).ndim > 1):
        return result.fail(f"the mean square is multiplied by {constant(one)}, not a scalar 1", one)
    epsilon = scalar(eps)
    if epsilon is None or constant(eps).ndim > 1:
        return result.fail("epsilon is not a constant scalar", eps)
    reduce = mean_square.producer()
    axes = reduced_axes(reduce)
    if axes is None or [a % rank for a in axes] != [rank - 1]:
        return result.fail(f"ReduceMean over axes {axes}, not only the last of {rank}", mean_square)
    if attribute(reduce, "keepdims", 1) != 1:
        return result.fail("ReduceMean drops the reduced axis (keepdims=0)", mean_square)
    return result


def simplified_layer_norm(op, x, eps, weight, **_):
    # stash_type 1: the mean square in float32, as RMSNorm computes it (x.astype("float32")).
    return op.SimplifiedLayerNormalization(x, weight, axis=-1, epsilon=scalar(eps), stash_type=1)


RULES = (RewriteRule(rms_norm_pattern, simplified_layer_norm, check_rms_norm, name="SimplifiedLayerNormalization"),)

rms_norm_ort = Fusion("rms_norm", RULES)
