"""Pass `attention`: softmax(q·kᵀ·s [+ mask])·v over split heads, as one com.microsoft attention op.

sdc's Paddle attention (sdc.graphs.clip.CLIPAttention, the UNet's self/cross attention) exports,
after cleanup, as

    heads(t)  = Transpose(Reshape(t, [0, 0, H, hd]), [0, 2, 1, 3])          # [B,S,H·hd] -> [B,H,S,hd]
    scores    = MatMul(heads(q), Transpose(Reshape(k, [0, 0, H, hd]), [0, 2, 3, 1])) * s  (+ mask)
    out       = Reshape(Transpose(MatMul(Softmax(scores, -1), heads(v)), [0, 2, 1, 3]), [0, 0, H·hd])

(paddle's matmul(transpose_y=True) becomes a Transpose that cleanup merges with the head split).
Rewrites, by target:

- ort-cpu: MultiHeadAttention(q, k, v) (+ attention_bias for a mask). Measured on the UNet-like
  test export (ORT 1.32, 1-2 threads, latent 32x32 and 64x64, tests/passes/bench_passes.py):
  0.71-0.82x the unfused time over several runs on a shared machine. The other CPU option, com.microsoft Attention with packed [D, 3D] QKV weights for
  self-attention, gave 0.93x, so packed QKV is not used on CPU.
- ort-cuda: self-attention -> MultiHeadAttention on packed QKV [B, S, H, 3, hd] (one GEMM); cross-
  attention -> packed KV [B, Skv, H, 2, hd]; masked or other -> MultiHeadAttention. The packed forms
  run on CUDA only, so on this machine they are checked structurally and by their weight layout.
- tensorrt and portable: nothing here; cleanup leaves the canonical MatMul-Softmax-MatMul that
  TensorRT's own MHA fusion looks for.
"""

from __future__ import annotations

import os

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRule, pattern

from sdc.passes.onnx._fusion import Fusion, constant, scalar

_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


# --- patterns ------------------------------------------------------------------------------------

def _heads(op, t, shape):
    return op.Transpose(op.Reshape(t, shape), perm=[0, 2, 1, 3])


def _scores(op, q, k, q_shape, k_shape, scale):
    return op.Mul(op.MatMul(_heads(op, q, q_shape), op.Transpose(op.Reshape(k, k_shape), perm=[0, 2, 3, 1])), scale)


def _attend(op, scores, v, v_shape, out_shape, softmax_axis):
    probs = op.Softmax(scores, axis=softmax_axis)
    return op.Reshape(op.Transpose(op.MatMul(probs, _heads(op, v, v_shape)), perm=[0, 2, 1, 3]), out_shape)


def attention_pattern(op, q, k, v, q_shape, k_shape, v_shape, scale, out_shape, softmax_axis):
    return _attend(op, _scores(op, q, k, q_shape, k_shape, scale), v, v_shape, out_shape, softmax_axis)


def masked_attention_pattern(op, q, k, v, q_shape, k_shape, v_shape, scale, out_shape, softmax_axis, mask):
    return _attend(op, op.Add(_scores(op, q, k, q_shape, k_shape, scale), mask), v, v_shape, out_shape, softmax_axis)


def _projection(op, x, w, b, name: str):
    """x·w, with or without + b (diffusers' to_q/k/v have no bias, CLIP's q/k/v_proj do); bound as `name`."""
    return pattern.OrValue([op.Add(op.MatMul(x, w), b), op.MatMul(x, w)], name=name,
                           tag_var=f"{name}_biased", tag_values=[True, False])


def self_attention_pattern(op, x, wq, wk, wv, bq, bk, bv, q_shape, k_shape, v_shape, scale, out_shape, softmax_axis):
    q, k, v = (_projection(op, x, w, b, n) for n, w, b in (("q", wq, bq), ("k", wk, bk), ("v", wv, bv)))
    return attention_pattern(op, q, k, v, q_shape, k_shape, v_shape, scale, out_shape, softmax_axis)


def cross_attention_pattern(op, q, kv_input, wk, wv, bk, bv, q_shape, k_shape, v_shape, scale, out_shape,
                            softmax_axis):
    k, v = _projection(op, kv_input, wk, bk, "k"), _projection(op, kv_input, wv, bv, "v")
    return attention_pattern(op, q, k, v, q_shape, k_shape, v_shape, scale, out_shape, softmax_axis)


# --- checks --------------------------------------------------------------------------------------

def split_heads(t: ir.Value, shape: ir.Value) -> tuple[int, int] | str:
    """(H, hd) if Reshape(t, shape) splits t's last dim [B, S, H·hd] into [B, S, H, hd], else why not."""
    dims = constant(shape)
    if dims is None or dims.shape != (4,):
        return f"head-split Reshape target is not a constant of 4 dims ({dims})"
    if t.shape is None or t.shape.rank() != 3:
        return f"{t.name} is not known to be 3-D [B, S, D] (shape {t.shape})"
    if t.dtype not in _FLOATS:
        return f"{t.name} has dtype {t.dtype}"
    b, s, heads, head_dim = (int(d) for d in dims)
    hidden = t.shape[2]
    if heads <= 0 or head_dim <= 0:
        return f"head-split Reshape target {dims.tolist()} does not name heads and head size"
    if b not in (0, t.shape[0]) or s not in (0, -1, t.shape[1]):
        return f"head-split Reshape target {dims.tolist()} moves batch or sequence dims"
    if not isinstance(hidden, int) or hidden != heads * head_dim:
        return f"hidden size {hidden} of {t.name} is not {heads} heads x {head_dim}"
    return heads, head_dim


def check_heads_scores_merge(result: MatchResult, split: dict, scale, softmax_axis, out_shape, where) -> MatchResult:
    """What every multi-head attention rule checks once the heads are known (`split`: q/k/v -> (heads, head
    size)): one head count, equal q and k head sizes, a constant scalar scale, Softmax over the key axis,
    and heads merged back into [B, S, heads x v head size]. Fails `result` (anchored at `where`) or returns it."""
    (heads, head_dim), (k_heads, k_dim), (v_heads, v_dim) = split["q"], split["k"], split["v"]
    if not heads == k_heads == v_heads:
        return result.fail(f"head counts differ: q {heads}, k {k_heads}, v {v_heads}", where)
    if head_dim != k_dim:
        return result.fail(f"q and k head sizes differ ({head_dim}, {k_dim})", where)
    if scalar(scale) is None:
        return result.fail("scores are not scaled by a constant scalar", scale)
    if softmax_axis.value not in (-1, 3):
        return result.fail(f"Softmax over axis {softmax_axis.value}, not the key axis", softmax_axis)
    merged = constant(out_shape)
    width = heads * v_dim
    if merged is None or merged.tolist() not in ([0, 0, width], [0, -1, width], [0, 0, -1]):
        return result.fail(f"head-merge Reshape target {merged} is not [0, 0, {width}]", out_shape)
    return result


def check_attention(context, q, k, v, q_shape, k_shape, v_shape, scale, out_shape, softmax_axis, mask=None,
                    **_) -> MatchResult:
    result = MatchResult()
    split = {}
    for name, t, shape in (("q", q, q_shape), ("k", k, k_shape), ("v", v, v_shape)):
        heads = split_heads(t, shape)
        if isinstance(heads, str):
            return result.fail(f"{name}: {heads}", shape)
        split[name] = heads
    if not check_heads_scores_merge(result, split, scale, softmax_axis, out_shape, k_shape):
        return result
    heads = split["q"][0]
    if mask is not None:
        dims = mask.shape
        if dims is None or dims.rank() != 4 or dims[0] not in (1, q.shape[0]) or dims[1] not in (1, heads):
            return result.fail(f"mask shape {dims} is not (1|B, 1|H, S, Skv) as attention_bias needs", mask)
    return result


def check_projections(context, x_value: ir.Value, weights: tuple[ir.Value, ...], **bindings) -> MatchResult:
    """Constant 2-D float32 weights of one shape, read from x's hidden size: packable into one GEMM."""
    result = check_attention(context, **bindings)
    if not result:
        return result
    arrays = [constant(w) for w in weights]
    if any(a is None for a in arrays):
        return result.fail("a projection weight is not a constant", weights[0])
    if any(a.ndim != 2 or a.shape != arrays[0].shape or a.dtype != np.float32 for a in arrays):
        return result.fail(f"projection weights are not 2-D float32 of one shape: {[a.shape for a in arrays]}",
                           weights[0])
    if x_value.shape is None or x_value.shape.rank() != 3:
        return result.fail(f"projection input is not known to be 3-D (shape {x_value.shape})", x_value)
    if isinstance(x_value.shape[2], int) and x_value.shape[2] != arrays[0].shape[0]:
        return result.fail(f"projection input {x_value.shape} does not match weights {arrays[0].shape}", x_value)
    for name in ("bq", "bk", "bv"):
        if bindings.get(name) is not None and constant(bindings[name]) is None:
            return result.fail(f"{name} is not a constant", bindings[name])
    return result


def check_packed_self_attention(context, x, wq, wk, wv, **bindings) -> MatchResult:
    result = check_projections(context, x, (wq, wk, wv), **bindings)
    if result and split_heads(bindings["q"], bindings["q_shape"]) != split_heads(bindings["v"], bindings["v_shape"]):
        return result.fail("v head size differs from q's: cannot pack QKV", bindings["v_shape"])
    return result


def check_packed_cross_attention(context, kv_input, wk, wv, **bindings) -> MatchResult:
    return check_projections(context, kv_input, (wk, wv), **bindings)


# --- rewrites ------------------------------------------------------------------------------------

def _heads_and_scale(q, q_shape, scale) -> tuple[int, int, float]:
    heads, head_dim = split_heads(q, q_shape)
    return heads, head_dim, scalar(scale)


def multi_head_attention(op, q, k, v, q_shape, scale, mask=None, **_):
    heads, _, s = _heads_and_scale(q, q_shape, scale)
    return op.MultiHeadAttention(q, k, v, None, None, mask, num_heads=heads, scale=s, _domain="com.microsoft")


def _packed_name(weights: tuple[ir.Value, ...], what: str) -> str:
    return os.path.commonprefix([w.name or "" for w in weights]) + what


def interleave_heads(arrays: list[np.ndarray], heads: int) -> np.ndarray:
    """[..., H·hd] x n -> [..., H·n·hd] ordered (head, which, d): MultiHeadAttention's packed layouts."""
    split = [a.reshape(*a.shape[:-1], heads, -1) for a in arrays]
    return np.stack(split, axis=-2).reshape(*arrays[0].shape[:-1], -1)  # [..., H, n, hd] flattened


def _packed_projection(op, x, weights, biases, heads: int, what: str):
    """Reshape(x·W_packed (+ b_packed), [0, 0, H, n, hd]): the input MultiHeadAttention unpacks itself."""
    arrays = [constant(w) for w in weights]
    name = os.path.commonprefix([w.name or "" for w in weights]) + what
    y = op.MatMul(x, op.initializer(ir.tensor(interleave_heads(arrays, heads), name=f"{name}.weight")))
    if any(b is not None for b in biases):  # a missing bias packs as zeros
        width = arrays[0].shape[1]
        bias = [np.zeros(width, np.float32) if b is None else constant(b).astype(np.float32) for b in biases]
        y = op.Add(y, op.initializer(ir.tensor(interleave_heads(bias, heads), name=f"{name}.bias")))
    shape = np.array([0, 0, heads, len(weights), arrays[0].shape[1] // heads], np.int64)
    return op.Reshape(y, op.initializer(ir.tensor(shape, name=f"{name}.shape")))


def packed_qkv_attention(op, x, wq, wk, wv, q, q_shape, scale, **bindings):
    heads, _, s = _heads_and_scale(q, q_shape, scale)
    biases = [bindings.get(n) for n in ("bq", "bk", "bv")]
    qkv = _packed_projection(op, x, (wq, wk, wv), biases, heads, "qkv")
    return op.MultiHeadAttention(qkv, None, None, num_heads=heads, scale=s, _domain="com.microsoft")


def packed_kv_attention(op, q, kv_input, wk, wv, q_shape, scale, **bindings):
    heads, _, s = _heads_and_scale(q, q_shape, scale)
    kv = _packed_projection(op, kv_input, (wk, wv), [bindings.get("bk"), bindings.get("bv")], heads, "kv")
    return op.MultiHeadAttention(q, kv, None, num_heads=heads, scale=s, _domain="com.microsoft")


MHA_RULES = (
    RewriteRule(masked_attention_pattern, multi_head_attention, check_attention, name="MultiHeadAttention"),
    RewriteRule(attention_pattern, multi_head_attention, check_attention, name="MultiHeadAttention"),
)
CUDA_RULES = (
    RewriteRule(self_attention_pattern, packed_qkv_attention, check_packed_self_attention,
                name="MultiHeadAttention(packed QKV)"),
    RewriteRule(cross_attention_pattern, packed_kv_attention, check_packed_cross_attention,
                name="MultiHeadAttention(packed KV)"),
    *MHA_RULES,
)

attention_ort_cpu = Fusion("attention", MHA_RULES)
attention_ort_cuda = Fusion("attention", CUDA_RULES)
