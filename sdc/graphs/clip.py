"""CLIP text encoder (SD 1.x/2.x `text_encoder`, SDXL `text_encoder_2` with projection) as a Paddle Layer.

Mirrors transformers' CLIPTextModel / CLIPTextModelWithProjection: parameter names are the
transformers state-dict names without the `text_model.` prefix, so `sdc.graphs.weights` assigns
checkpoints by lookup. `forward` is written to trace with `paddle.jit.to_static(full_graph=True)` and
export through paddle2onnx: shapes come from `paddle.shape`, there are no Python branches on tensor
values, no buffers (positions and the causal mask are built in-graph), and attention is plain
matmul + softmax (Paddle's fused attention ops have no ONNX mapping).
"""

from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddle import nn

from sdc.graphs.configs import CLIPTextConfig

# Legacy CLIP configs carry eos_token_id 2; transformers then pools at argmax(input_ids) (the EOS
# id 49407 is the largest id in the original vocabulary) instead of at the first EOS token.
LEGACY_EOS_TOKEN_ID = 2


class CLIPTextEmbeddings(nn.Layer):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)

    def forward(self, input_ids: paddle.Tensor) -> paddle.Tensor:
        # Positions over the dynamic sequence length; [S, D] broadcasts over the batch.
        positions = paddle.arange(paddle.shape(input_ids)[1], dtype="int64")
        return self.token_embedding(input_ids) + self.position_embedding(positions)


class CLIPAttention(nn.Layer):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.head_dim
        self.scale = self.head_dim**-0.5
        d = cfg.hidden_size
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.q_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def _heads(self, x: paddle.Tensor) -> paddle.Tensor:
        # [B, S, D] -> [B, H, S, hd]; 0 keeps the (dynamic) batch and sequence dims.
        return x.reshape([0, 0, self.num_heads, self.head_dim]).transpose([0, 2, 1, 3])

    def forward(self, hidden_states: paddle.Tensor, causal_mask: paddle.Tensor) -> paddle.Tensor:
        q = self._heads(self.q_proj(hidden_states))
        k = self._heads(self.k_proj(hidden_states))
        v = self._heads(self.v_proj(hidden_states))
        # Scale after the product, as transformers' eager attention does.
        scores = paddle.matmul(q, k, transpose_y=True) * self.scale + causal_mask
        probs = F.softmax(scores, axis=-1)
        out = paddle.matmul(probs, v).transpose([0, 2, 1, 3]).reshape([0, 0, self.num_heads * self.head_dim])
        return self.out_proj(out)


class CLIPMLP(nn.Layer):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.hidden_act = cfg.hidden_act
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, hidden_states: paddle.Tensor) -> paddle.Tensor:
        h = self.fc1(hidden_states)
        if self.hidden_act == "quick_gelu":
            h = h * F.sigmoid(1.702 * h)
        else:  # "gelu": transformers' GELUActivation is the exact (erf) form
            h = F.gelu(h, approximate=False)
        return self.fc2(h)


class CLIPEncoderLayer(nn.Layer):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps)

    def forward(self, hidden_states: paddle.Tensor, causal_mask: paddle.Tensor) -> paddle.Tensor:
        hidden_states = hidden_states + self.self_attn(self.layer_norm1(hidden_states), causal_mask)
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class CLIPEncoder(nn.Layer):
    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.layers = nn.LayerList([CLIPEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])


class CLIPTextModel(nn.Layer):
    """CLIP text transformer; returns the outputs named by `output_names`, in that order."""

    def __init__(self, cfg: CLIPTextConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = CLIPTextEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps)
        if cfg.with_projection:
            self.text_projection = nn.Linear(cfg.hidden_size, cfg.projection_dim, bias_attr=False)

    @property
    def output_names(self) -> tuple[str, ...]:
        if self.cfg.with_projection:
            return ("last_hidden_state", "pooler_output", "text_embeds", "hidden_states_penultimate")
        return ("last_hidden_state", "pooler_output", "hidden_states_penultimate")

    def _causal_mask(self, seq_len: paddle.Tensor, dtype) -> paddle.Tensor:
        """[1, 1, S, S] additive mask: 0 on and below the diagonal, the dtype's minimum above it.

        A finite minimum (as transformers uses) rather than -inf, so no 0 * inf NaN can arise if a
        later pass rewrites the add; every row keeps its diagonal, so softmax never sees an all-masked row.
        """
        pos = paddle.arange(seq_len, dtype="int64")
        future = (pos.unsqueeze(0) > pos.unsqueeze(1)).astype(dtype)  # [S, S], 1 above the diagonal
        return (future * paddle.finfo(dtype).min).unsqueeze([0, 1])

    def _pool_index(self, input_ids: paddle.Tensor) -> paddle.Tensor:
        """Per-row position of the EOS token, computed with tensor ops only (traceable)."""
        # int32 because ONNX Runtime's ArgMax has no int64 kernel; argmax returns the first maximum.
        if self.cfg.eos_token_id == LEGACY_EOS_TOKEN_ID:
            return paddle.argmax(input_ids.astype("int32"), axis=-1)
        return paddle.argmax((input_ids == self.cfg.eos_token_id).astype("int32"), axis=-1)

    def forward(self, input_ids: paddle.Tensor) -> tuple[paddle.Tensor, ...]:
        shape = paddle.shape(input_ids)
        batch, seq_len = shape[0], shape[1]
        hidden_states = self.embeddings(input_ids)
        causal_mask = self._causal_mask(seq_len, hidden_states.dtype)
        penultimate = hidden_states
        for layer in self.encoder.layers:
            penultimate = hidden_states  # ends as the input of the last layer (transformers' hidden_states[-2])
            hidden_states = layer(hidden_states, causal_mask)
        last_hidden_state = self.final_layer_norm(hidden_states)

        # Gather row b, position idx[b] from the flattened [B*S, D] states.
        flat_index = paddle.arange(batch, dtype="int64") * seq_len.astype("int64") + self._pool_index(input_ids)
        flat = last_hidden_state.reshape([-1, last_hidden_state.shape[-1]])
        pooled = paddle.gather(flat, flat_index, axis=0)

        if self.cfg.with_projection:
            return last_hidden_state, pooled, self.text_projection(pooled), penultimate
        return last_hidden_state, pooled, penultimate
