"""Attention blocks of the UNet (Transformer2DModel) and the VAE mid-block, as export-friendly Paddle Layers.

Parameter names follow diffusers (`to_q`, `to_out.0`, `ff.net.0.proj`, ...). Attention is plain
matmul + softmax in the head-split layout [B, H, S, hd]: Paddle's fused attention kernels have no
ONNX mapping, and this canonical form is what `sdc.passes` fuses into MultiHeadAttention.
"""

from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddle import nn


class Attention(nn.Layer):
    """diffusers `Attention` (AttnProcessor2_0 semantics) on token sequences [B, S, D]."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, cross_dim: int | None = None, bias: bool = False,
                 upcast: bool = False):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.scale = dim_head**-0.5
        # Upcasting only matters below fp32; the precision passes read it to keep softmax islands in fp32.
        self.upcast = upcast
        kv_dim = cross_dim if cross_dim is not None else query_dim
        self.to_q = nn.Linear(query_dim, inner, bias_attr=None if bias else False)
        self.to_k = nn.Linear(kv_dim, inner, bias_attr=None if bias else False)
        self.to_v = nn.Linear(kv_dim, inner, bias_attr=None if bias else False)
        self.to_out = nn.LayerList([nn.Linear(inner, query_dim)])

    def _split(self, x: paddle.Tensor) -> paddle.Tensor:
        return x.reshape([0, 0, self.heads, self.dim_head]).transpose([0, 2, 1, 3])

    def forward(self, x: paddle.Tensor, context: paddle.Tensor | None = None) -> paddle.Tensor:
        context = x if context is None else context
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(context)), self._split(self.to_v(context))
        probs = F.softmax(paddle.matmul(q, k, transpose_y=True) * self.scale, axis=-1)
        out = paddle.matmul(probs, v).transpose([0, 2, 1, 3]).reshape([0, 0, self.heads * self.dim_head])
        return self.to_out[0](out)


class GEGLU(nn.Layer):
    """Linear to 2x width; the first half is the value, the second the gate (exact GELU)."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)
        self.inner = inner

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        h = self.proj(x)
        return h[:, :, : self.inner] * F.gelu(h[:, :, self.inner :], approximate=False)


class FeedForward(nn.Layer):
    """`ff.net` = [GEGLU, Dropout, Linear]; index 1 (dropout) holds no parameters."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.LayerList([GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)])

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Layer):
    """Self-attention, cross-attention, GEGLU feed-forward; pre-LayerNorm (eps 1e-5), residual each."""

    def __init__(self, dim: int, heads: int, dim_head: int, cross_dim: int, upcast: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, epsilon=1e-5)
        self.attn1 = Attention(dim, heads, dim_head, upcast=upcast)
        self.norm2 = nn.LayerNorm(dim, epsilon=1e-5)
        self.attn2 = Attention(dim, heads, dim_head, cross_dim=cross_dim, upcast=upcast)
        self.norm3 = nn.LayerNorm(dim, epsilon=1e-5)
        self.ff = FeedForward(dim)

    def forward(self, x: paddle.Tensor, context: paddle.Tensor) -> paddle.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Layer):
    """Spatial transformer: GroupNorm (eps 1e-6), proj_in (1x1 conv or linear), blocks, proj_out, residual."""

    def __init__(self, channels: int, heads: int, layers: int, cross_dim: int, groups: int, linear_projection: bool,
                 upcast: bool):
        super().__init__()
        dim_head = channels // heads
        inner = heads * dim_head
        self.linear_projection = linear_projection
        self.norm = nn.GroupNorm(groups, channels, epsilon=1e-6)
        if linear_projection:
            self.proj_in, self.proj_out = nn.Linear(channels, inner), nn.Linear(inner, channels)
        else:
            self.proj_in, self.proj_out = nn.Conv2D(channels, inner, 1), nn.Conv2D(inner, channels, 1)
        self.transformer_blocks = nn.LayerList(
            [BasicTransformerBlock(inner, heads, dim_head, cross_dim, upcast) for _ in range(layers)]
        )

    def forward(self, x: paddle.Tensor, context: paddle.Tensor) -> paddle.Tensor:
        residual = x
        h = self.norm(x)
        if not self.linear_projection:
            h = self.proj_in(h)
        shape = paddle.shape(h)  # [B, C', H, W]
        h = h.flatten(2).transpose([0, 2, 1])  # [B, H*W, C']
        if self.linear_projection:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.linear_projection:
            h = self.proj_out(h)
        h = h.transpose([0, 2, 1]).reshape(shape if not self.linear_projection else paddle.shape(residual))
        if not self.linear_projection:
            h = self.proj_out(h)
        return h + residual


class VaeAttention(nn.Layer):
    """The VAE mid-block's single-head spatial self-attention with its own GroupNorm and a residual.

    Written in the same head-split form as `Attention` (one head): the split/merge are free reshapes,
    and the graph then matches the attention fusion in `sdc.passes` like every other attention.
    """

    def __init__(self, channels: int, groups: int, eps: float):
        super().__init__()
        self.channels = channels
        self.group_norm = nn.GroupNorm(groups, channels, epsilon=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.LayerList([nn.Linear(channels, channels)])
        self.scale = channels**-0.5

    def _split(self, x: paddle.Tensor) -> paddle.Tensor:
        return x.reshape([0, 0, 1, self.channels]).transpose([0, 2, 1, 3])

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        h = self.group_norm(x).flatten(2).transpose([0, 2, 1])  # [B, H*W, C]
        q, k, v = self._split(self.to_q(h)), self._split(self.to_k(h)), self._split(self.to_v(h))
        probs = F.softmax(paddle.matmul(q, k, transpose_y=True) * self.scale, axis=-1)
        out = paddle.matmul(probs, v).transpose([0, 2, 1, 3]).reshape([0, 0, self.channels])
        return self.to_out[0](out).transpose([0, 2, 1]).reshape(paddle.shape(x)) + x
