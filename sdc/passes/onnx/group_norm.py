"""Pass `group_norm`: paddle2onnx's InstanceNormalization form of GroupNorm, as one op per target.

paddle2onnx 2.1.0 exports `paddle.nn.GroupNorm(G, C)` on x [N, C, H, W] as

    y = Reshape(InstanceNormalization(Reshape(x, [0, G, -1]), ones(G), zeros(G)), Shape(x)) * γ + β

with γ, β of shape [C, 1, 1] once cleanup has folded their Unsqueeze, and F.silu as y * Sigmoid(y).
Two rewrites, each for the targets that run it well:

- ort-cuda: com.microsoft GroupNorm (NHWC, optional fused SiLU), between Transposes. CUDA only.
- tensorrt: ONNX GroupNormalization-18 with per-group ones/zeros, followed by the per-channel γ, β.
  Opset 18 because TensorRT 10 parses GroupNormalization-18 but rejects the per-channel
  GroupNormalization-21 (NVIDIA/TensorRT#4336); the model's opset is raised to 18 when needed
  (sdc.passes.onnx.opset). Not for `portable`/`ort-cpu`: ONNX Runtime 1.32 has no GroupNormalization
  kernel and expands its function body (29 nodes: ReduceMean, Sub, Sqrt, ...). Measured on CPU, one
  thread, x [2, 320, 64, 64], 32 groups: 1.6x the InstanceNormalization form's time at opset 18
  (+ Mul/Add), 1.9x at opset 21; on the UNet-like test export, 1.01-1.04x overall.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRule

from sdc.passes.onnx import opset
from sdc.passes.onnx._fusion import Fusion, PassResult, constant, log


# --- patterns: GroupNorm as paddle2onnx writes it ---------------------------------------------

def group_norm_pattern(op, x, groups_shape, ones, zeros, gamma, beta, epsilon, x_shape):
    # x_shape is Shape(x), or x's shape as a constant once folded; the check says which. It stays out
    # of the matched nodes because paddle reuses one Shape(x) for other reshapes.
    normed = op.InstanceNormalization(op.Reshape(x, groups_shape), ones, zeros, epsilon=epsilon)
    return op.Add(op.Mul(op.Reshape(normed, x_shape), gamma), beta)


def group_norm_silu_pattern(op, x, groups_shape, ones, zeros, gamma, beta, epsilon, x_shape):
    y = group_norm_pattern(op, x, groups_shape, ones, zeros, gamma, beta, epsilon, x_shape)
    return op.Mul(y, op.Sigmoid(y))


# --- check: is it really GroupNorm over the channels of a 4-D x? -------------------------------

def check_group_norm(context, x, groups_shape, ones, zeros, gamma, beta, x_shape, **_) -> MatchResult:
    result = MatchResult()
    if x.shape is None or x.shape.rank() != 4:
        return result.fail(f"x must be 4-D with a known rank (got shape {x.shape})", x)
    channels = x.shape[1]
    if not isinstance(channels, int):
        return result.fail(f"channel dim of x is not static ({channels})", x)
    scale, bias = constant(ones), constant(zeros)
    if scale is None or bias is None or scale.ndim != 1 or scale.shape != bias.shape:
        return result.fail("InstanceNormalization scale/bias are not 1-D constants of one shape", ones)
    groups = scale.shape[0]
    if not (np.all(scale == 1) and np.all(bias == 0)):
        return result.fail("InstanceNormalization has a real affine (scale != 1 or bias != 0)", ones)
    target = constant(groups_shape)
    if target is None or target.tolist() != [0, groups, -1]:
        return result.fail(f"first Reshape target is {target}, expected [0, {groups}, -1]", groups_shape)
    if channels % groups:
        return result.fail(f"{channels} channels not divisible into {groups} groups", x)
    if not _is_shape_of(x_shape, x):
        return result.fail(f"second Reshape target is neither Shape(x) nor x's static shape {x.shape}", x_shape)
    for name, value in (("gamma", gamma), ("beta", beta)):
        array = constant(value)
        if array is None:
            return result.fail(f"{name} is not a constant", value)
        if array.shape not in ((channels, 1, 1), (1, channels, 1, 1)):
            return result.fail(f"{name} has shape {array.shape}, expected ({channels}, 1, 1)", value)
    return result


def _is_shape_of(shape: ir.Value, x: ir.Value) -> bool:
    producer = shape.producer()
    if producer is not None and producer.op_type == "Shape" and producer.domain in ("", "ai.onnx"):
        return producer.inputs[0] is x and not {"start", "end"} & set(producer.attributes)
    dims = constant(shape)
    return dims is not None and x.shape is not None and x.shape.is_static() and dims.tolist() == list(x.shape)


def check_group_normalization_18(context, ones, **bindings) -> MatchResult:
    result = check_group_norm(context, ones=ones, **bindings)
    if result and constant(ones).shape[0] == 1:
        # TensorRT <= 10.16 computes GroupNormalization(num_groups=1) per channel (NVIDIA/TensorRT#4756).
        return result.fail("num_groups == 1 is mis-computed by TensorRT's GroupNormalization", ones)
    return result


# --- rewrites ----------------------------------------------------------------------------------

def _per_channel(op, value: ir.Value, suffix: str) -> ir.Value:
    """γ or β as the 1-D float32 tensor com.microsoft GroupNorm requires."""
    array = constant(value).reshape(-1).astype(np.float32)
    return op.initializer(ir.tensor(array, name=f"{value.name}.{suffix}"))


def _ort_group_norm(op, x, ones, gamma, beta, epsilon, activation: int):
    nhwc = op.Transpose(x, perm=[0, 2, 3, 1])
    y = op.GroupNorm(
        nhwc, _per_channel(op, gamma, "gamma_c"), _per_channel(op, beta, "beta_c"),
        activation=activation, channels_last=1, epsilon=epsilon.value, groups=constant(ones).shape[0],
        _domain="com.microsoft",
    )
    return op.Transpose(y, perm=[0, 3, 1, 2])


def ort_group_norm(op, x, ones, gamma, beta, epsilon, **_):
    return _ort_group_norm(op, x, ones, gamma, beta, epsilon, activation=0)


def ort_group_norm_silu(op, x, ones, gamma, beta, epsilon, **_):
    return _ort_group_norm(op, x, ones, gamma, beta, epsilon, activation=1)


def group_normalization_18(op, x, ones, zeros, gamma, beta, epsilon, **_):
    y = op.GroupNormalization(x, ones, zeros, epsilon=epsilon.value, num_groups=constant(ones).shape[0])
    return op.Add(op.Mul(y, gamma), beta)


ORT_CUDA_RULES = (
    RewriteRule(group_norm_silu_pattern, ort_group_norm_silu, check_group_norm, name="GroupNorm+SiLU"),
    RewriteRule(group_norm_pattern, ort_group_norm, check_group_norm, name="GroupNorm"),
)
ONNX18_RULES = (
    RewriteRule(group_norm_pattern, group_normalization_18, check_group_normalization_18, name="GroupNormalization"),
)

group_norm_ort_cuda = Fusion("group_norm", ORT_CUDA_RULES)


def group_norm_onnx18(model: ir.Model, debug: bool = False) -> PassResult:
    """GroupNormalization-18 (tensorrt); raises the default opset to 18 only if a group norm was fused."""
    blockers = opset.blockers_to_18(model)
    if blockers:
        log.warning("group_norm: opset stays %s, so no GroupNormalization: %s",
                    opset.default_version(model), "; ".join(blockers))
        return PassResult("group_norm", False, {})
    result = Fusion("group_norm", ONNX18_RULES)(model, debug)
    if result.modified and opset.default_version(model) < 18:
        # The new nodes carry no version of their own: raising the import makes them opset-18 nodes.
        adapted = opset.adapt_nodes_to_18(model)
        opset.set_default_version(model, 18)
        if adapted:
            result.counts["opset 17->18 adapted nodes"] = adapted
    return result
