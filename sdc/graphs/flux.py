"""FluxTransformer2DModel (diffusers 0.42) as a Paddle Layer: double-stream then single-stream MMDiT blocks.

Parameter names are diffusers' state-dict names. The rotary tables are inputs (`rope_cos`, `rope_sin`,
[text + image tokens, head_dim]): diffusers builds them from the (0, row, column) ids in float64, and
the runtime does the same in numpy (`sdc.runtime.rope.rope_tables`), so the graph holds no float64 and no trigonometry
of large positions. `forward(hidden_states, encoder_hidden_states, pooled_projections, timestep,
rope_cos, rope_sin[, guidance]) -> out_sample`; `timestep` and `guidance` are diffusers' inputs (sigma,
and the guidance scale), multiplied by 1000 inside as diffusers does.
"""

from __future__ import annotations

import math

import paddle
import paddle.nn.functional as F
from paddle import nn

from sdc.graphs.configs_flux import FluxConfig
from sdc.graphs.layers import RMSNorm, TimestepEmbedding, gelu_tanh, timestep_features


def layer_norm(x: paddle.Tensor, eps: float = 1e-6) -> paddle.Tensor:
    """LayerNorm without affine parameters (diffusers' elementwise_affine=False)."""
    return F.layer_norm(x, x.shape[-1:], epsilon=eps)


def apply_rope(x: paddle.Tensor, cos: paddle.Tensor, sin: paddle.Tensor) -> paddle.Tensor:
    """diffusers' apply_rotary_emb (use_real, unbind dim -1) on x [B, S, H, D] with tables [S, D]."""
    pairs = x.reshape([0, 0, 0, -1, 2])
    real, imag = pairs[..., 0], pairs[..., 1]
    rotated = paddle.stack([-imag, real], axis=-1).reshape(paddle.shape(x))
    return x * cos.unsqueeze([0, 2]) + rotated * sin.unsqueeze([0, 2])


class FeedForward(nn.Layer):
    """diffusers FeedForward(activation_fn="gelu-approximate"): net.0.proj -> tanh GELU -> net.2."""

    class _Proj(nn.Layer):
        def __init__(self, dim: int, inner: int):
            super().__init__()
            self.proj = nn.Linear(dim, inner)

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.LayerList([FeedForward._Proj(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)])

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.net[2](gelu_tanh(self.net[0].proj(x)))


class FluxAttention(nn.Layer):
    """Joint attention: image q/k/v (and, in double blocks, text q/k/v), RMSNorm on q and k, RoPE, SDPA."""

    def __init__(self, dim: int, heads: int, head_dim: int, joint: bool):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.to_q, self.to_k, self.to_v = nn.Linear(dim, inner), nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.norm_q, self.norm_k = RMSNorm(head_dim, 1e-6), RMSNorm(head_dim, 1e-6)
        self.joint = joint
        if joint:
            self.to_out = nn.LayerList([nn.Linear(inner, dim)])
            self.add_q_proj, self.add_k_proj = nn.Linear(dim, inner), nn.Linear(dim, inner)
            self.add_v_proj = nn.Linear(dim, inner)
            self.norm_added_q, self.norm_added_k = RMSNorm(head_dim, 1e-6), RMSNorm(head_dim, 1e-6)
            self.to_add_out = nn.Linear(inner, dim)

    def _split(self, x: paddle.Tensor) -> paddle.Tensor:
        return x.reshape([0, 0, self.heads, self.head_dim])

    def forward(self, x, context, cos, sin):
        q, k, v = self.norm_q(self._split(self.to_q(x))), self.norm_k(self._split(self.to_k(x))), self._split(self.to_v(x))
        if self.joint:  # text tokens first, as diffusers concatenates them
            cq = self.norm_added_q(self._split(self.add_q_proj(context)))
            ck = self.norm_added_k(self._split(self.add_k_proj(context)))
            cv = self._split(self.add_v_proj(context))
            q, k, v = paddle.concat([cq, q], axis=1), paddle.concat([ck, k], axis=1), paddle.concat([cv, v], axis=1)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = (t.transpose([0, 2, 1, 3]) for t in (q, k, v))  # [B, H, S, D]
        scores = paddle.matmul(q, k, transpose_y=True) * (1.0 / math.sqrt(self.head_dim))
        out = paddle.matmul(F.softmax(scores, axis=-1), v).transpose([0, 2, 1, 3])
        out = out.reshape([0, 0, self.heads * self.head_dim])
        if not self.joint:
            return out
        n_text = paddle.shape(context)[1]
        return self.to_out[0](out[:, n_text:]), self.to_add_out(out[:, :n_text])


class AdaNormZero(nn.Layer):
    """AdaLayerNormZero: SiLU -> Linear(dim, 6 dim); shift, scale, gate (attention), shift, scale, gate (MLP)."""

    def __init__(self, dim: int, chunks: int = 6):
        super().__init__()
        self.linear = nn.Linear(dim, chunks * dim)
        self.chunks = chunks

    def forward(self, x, temb):
        parts = paddle.chunk(self.linear(F.silu(temb)), self.chunks, axis=1)
        return (layer_norm(x) * (1 + parts[1].unsqueeze(1)) + parts[0].unsqueeze(1),) + tuple(parts[2:])


class FluxTransformerBlock(nn.Layer):
    """Double-stream block: image and text each keep their own norms and MLPs, and attend jointly."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.norm1, self.norm1_context = AdaNormZero(dim), AdaNormZero(dim)
        self.attn = FluxAttention(dim, heads, head_dim, joint=True)
        self.ff, self.ff_context = FeedForward(dim), FeedForward(dim)

    def forward(self, x, context, temb, cos, sin):
        nx, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(x, temb)
        nc, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(context, temb)
        attn, context_attn = self.attn(nx, nc, cos, sin)
        x = x + gate_msa.unsqueeze(1) * attn
        x = x + gate_mlp.unsqueeze(1) * self.ff(layer_norm(x) * (1 + scale_mlp.unsqueeze(1)) + shift_mlp.unsqueeze(1))
        context = context + c_gate_msa.unsqueeze(1) * context_attn
        ffc = self.ff_context(layer_norm(context) * (1 + c_scale_mlp.unsqueeze(1)) + c_shift_mlp.unsqueeze(1))
        return context + c_gate_mlp.unsqueeze(1) * ffc, x


class FluxSingleTransformerBlock(nn.Layer):
    """Single-stream block over [text; image]: attention and MLP in parallel from one AdaLayerNormZeroSingle."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm = AdaNormZero(dim, chunks=3)
        self.proj_mlp = nn.Linear(dim, hidden)
        self.proj_out = nn.Linear(dim + hidden, dim)
        self.attn = FluxAttention(dim, heads, head_dim, joint=False)

    def forward(self, h, temb, cos, sin):
        nh, gate = self.norm(h, temb)
        mlp = gelu_tanh(self.proj_mlp(nh))
        out = self.proj_out(paddle.concat([self.attn(nh, None, cos, sin), mlp], axis=2))
        return h + gate.unsqueeze(1) * out


class _TextProjection(nn.Layer):
    """PixArtAlphaTextProjection(act_fn="silu"): linear_1 -> SiLU -> linear_2."""

    def __init__(self, cin: int, dim: int):
        super().__init__()
        self.linear_1, self.linear_2 = nn.Linear(cin, dim), nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class _TimeTextEmbed(nn.Layer):
    """CombinedTimestep(Guidance)TextProjEmbeddings: sinusoids (256) -> MLP, plus the pooled text projection."""

    def __init__(self, dim: int, pooled_dim: int, guidance: bool):
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(256, dim)
        if guidance:
            self.guidance_embedder = TimestepEmbedding(256, dim)
        self.text_embedder = _TextProjection(pooled_dim, dim)
        self.guidance = guidance

    def forward(self, timestep, pooled, guidance=None):
        # sinusoids in float32, then the model's dtype (as diffusers casts them): float64 for a float64 reference
        emb = self.timestep_embedder(timestep_features(timestep, 256, True, 0).astype(pooled.dtype))
        if self.guidance:
            emb = emb + self.guidance_embedder(timestep_features(guidance, 256, True, 0).astype(pooled.dtype))
        return emb + self.text_embedder(pooled)


class _NormOut(nn.Layer):
    """AdaLayerNormContinuous: SiLU -> Linear(dim, 2 dim) -> scale, shift (in that order)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x, temb):
        scale, shift = paddle.chunk(self.linear(F.silu(temb)), 2, axis=1)
        return layer_norm(x) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class FluxTransformer2DModel(nn.Layer):
    output_names = ("out_sample",)

    def __init__(self, cfg: FluxConfig):
        super().__init__()
        self.cfg = cfg
        dim, heads, hd = cfg.inner_dim, cfg.num_attention_heads, cfg.attention_head_dim
        self.time_text_embed = _TimeTextEmbed(dim, cfg.pooled_projection_dim, cfg.guidance_embeds)
        self.context_embedder = nn.Linear(cfg.joint_attention_dim, dim)
        self.x_embedder = nn.Linear(cfg.in_channels, dim)
        self.transformer_blocks = nn.LayerList([FluxTransformerBlock(dim, heads, hd) for _ in range(cfg.num_layers)])
        self.single_transformer_blocks = nn.LayerList(
            [FluxSingleTransformerBlock(dim, heads, hd) for _ in range(cfg.num_single_layers)])
        self.norm_out = _NormOut(dim)
        self.proj_out = nn.Linear(dim, cfg.patch_size * cfg.patch_size * cfg.out_channels)

    def forward(self, hidden_states, encoder_hidden_states, pooled_projections, timestep, rope_cos, rope_sin,
                guidance=None):
        x = self.x_embedder(hidden_states)
        temb = self.time_text_embed(timestep * 1000.0, pooled_projections,
                                    guidance * 1000.0 if self.cfg.guidance_embeds else None)
        context = self.context_embedder(encoder_hidden_states)
        for block in self.transformer_blocks:
            context, x = block(x, context, temb, rope_cos, rope_sin)
        n_text = paddle.shape(context)[1]
        h = paddle.concat([context, x], axis=1)
        for block in self.single_transformer_blocks:
            h = block(h, temb, rope_cos, rope_sin)
        return self.proj_out(self.norm_out(h[:, n_text:], temb))
