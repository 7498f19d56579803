"""Rule of pass `attention`: softmax(q·kᵀ·s)·v on q, k, v already split into heads [B, S, H, D], as MHA.

Flux's attention (sdc.graphs.flux.FluxAttention) splits heads *before* attention: RMSNorm per head on
q and k, then RoPE, both on [B, S, H, D]. So after cleanup the attention itself is

    scores = MatMul(Transpose(q, [0, 2, 1, 3]), Transpose(k, [0, 2, 3, 1])) * s
    out    = Reshape(Transpose(MatMul(Softmax(scores, -1), Transpose(v, [0, 2, 1, 3])), [0, 2, 1, 3]),
                     [0, 0, H·Dv])

with no head-split Reshape right before the Transposes, which is what the `attention` pass's
patterns start from (sdc.passes.onnx.attention). The rewrite is

    MultiHeadAttention(Reshape(q, [0, 0, H·D]), Reshape(k, [0, 0, H·D]), Reshape(v, [0, 0, H·Dv]))

because MultiHeadAttention takes the query only as [B, S, H·D] (or packed QKV), and key/value as
[B, Skv, H·D] or [B, H, Skv, D] (ORT docs/ContribOperators.md). Merging the last two dims of a
contiguous tensor is a Reshape, which ONNX Runtime runs as a view (its kernel aliases the input);
the BHSD key form would cost a Transpose. The rule sits in the `attention` pass of ort-cpu and
ort-cuda (sdc.passes.onnx.pipelines), after the rules that start at the head-split Reshape: on SD
graphs those match first and this one finds nothing left.
The RMSNorm (sdc.passes.onnx.rms_norm) and RoPE stay outside: MultiHeadAttention has no rotary option.

Measured on ORT 1.32 CPU, 2 threads, q/k/v [1, 1024, 24, 128] (real Flux heads, 1024 tokens):
0.89-0.95x the unfused time over two runs on a shared machine; max |diff| 2.4e-7.

Not onnxscript's ort_fusions route (sdpa.py to a private `ai.onnxruntime._fusion` SDPA op, then
sdpa_via_mha.py to MultiHeadAttention): measured with onnxscript 0.7.2 on flux-tiny, it fuses 2 of the
3 attentions (its shape check takes the joint block's unknown q batch vs v's symbolic `batch` for a
mismatch), leaves Transpose/Reshape pairs around each op for a later cleanup, and a first step
whose second fails would leave an op no runtime has.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRule

from sdc.passes.onnx._fusion import attribute, scalar
from sdc.passes.onnx.attention import check_heads_scores_merge

_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def bshd_attention_pattern(op, q, k, v, scale, out_shape, softmax_axis):
    scores = op.Mul(op.MatMul(op.Transpose(q, perm=[0, 2, 1, 3]), op.Transpose(k, perm=[0, 2, 3, 1])), scale)
    probs = op.Softmax(scores, axis=softmax_axis)
    heads_out = op.MatMul(probs, op.Transpose(v, perm=[0, 2, 1, 3]))
    return op.Reshape(op.Transpose(heads_out, perm=[0, 2, 1, 3]), out_shape)


def heads_of(t: ir.Value) -> tuple[int, int] | str:
    """(H, D) if t is known to be a float [B, S, H, D] with static H and D, else why not."""
    if t.dtype not in _FLOATS:
        return f"{t.name} has dtype {t.dtype}"
    if t.shape is None or t.shape.rank() != 4:
        return f"{t.name} is not known to be 4-D [B, S, H, D] (shape {t.shape})"
    heads, size = t.shape[2], t.shape[3]
    if not (isinstance(heads, int) and isinstance(size, int)):
        return f"{t.name}: heads and head size are not static (shape {t.shape})"
    return heads, size


def _differ(a, b) -> bool:
    """Two dims that are certainly different sizes (unknown or symbolic dims might be equal)."""
    return isinstance(a, int) and isinstance(b, int) and a != b


def check_bshd_attention(context, q, k, v, scale, out_shape, softmax_axis, **_) -> MatchResult:
    result = MatchResult()
    split = {}
    for name, t in (("q", q), ("k", k), ("v", v)):
        heads = heads_of(t)
        if isinstance(heads, str):
            return result.fail(heads, t)
        split[name] = heads
    if not check_heads_scores_merge(result, split, scale, softmax_axis, out_shape, k):
        return result
    # MatMul broadcasts a batch of 1; MultiHeadAttention does not.
    if _differ(q.shape[0], k.shape[0]) or _differ(k.shape[0], v.shape[0]) or _differ(k.shape[1], v.shape[1]):
        return result.fail(f"batch or key length differ: q {q.shape}, k {k.shape}, v {v.shape}", k)
    if attribute(context.root, "allowzero", 0) == 1:
        return result.fail("head-merge Reshape has allowzero=1: its 0s are sizes, not copies", out_shape)
    return result


def _merge_heads(op, t: ir.Value):
    heads, size = t.shape[2], t.shape[3]
    return op.Reshape(t, op.Constant(value=ir.tensor(np.array([0, 0, heads * size], np.int64))))


def multi_head_attention(op, q, k, v, scale, **_):
    return op.MultiHeadAttention(_merge_heads(op, q), _merge_heads(op, k), _merge_heads(op, v),
                                 num_heads=q.shape[2], scale=scalar(scale), _domain="com.microsoft")


RULES = (RewriteRule(bshd_attention_pattern, multi_head_attention, check_bshd_attention,
                     name="MultiHeadAttention(BSHD)"),)
