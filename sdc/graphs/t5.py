"""T5 encoder (transformers' T5EncoderModel: Flux's `text_encoder_2`) as a Paddle Layer.

T5 v1.1 as Flux uses it: RMS layer norm (no mean, no bias; variance in float32), gated-GELU
feed-forward (`gelu_new`, the tanh form) or the original ReLU one, attention without the 1/sqrt(d)
scale, and one relative-position bias table (first block) shared by every block. Parameter names are
transformers' state-dict names (`shared.weight`, `encoder.block.0.layer.0.SelfAttention.q.weight`, ...).

The relative-position buckets come from the sequence length in-graph, through a constant table of
transformers' float32 bucket per distance (see `bucket_table`), so the exported graph serves any
text length and every runtime picks the same buckets. `forward(input_ids) -> last_hidden_state`. No attention mask:
FluxPipeline runs T5 on padded ids without one.
"""

from __future__ import annotations

import math

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from sdc.graphs.configs_flux import T5Config
from sdc.graphs.layers import RMSNorm, gelu_tanh


def bucket_table(num_buckets: int, max_distance: int) -> np.ndarray:
    """Bucket of each distance 0..max_distance (one direction), as transformers computes it in float32.

    Past max_distance every distance has the last bucket. A table, not in-graph logs: at distances where
    the log formula lands on a whole number (16, 32, 64 for T5's defaults) a log kernel one ulp off
    (ONNX Runtime's vectorised one is) truncates to the neighbouring bucket.
    """
    half = num_buckets // 2
    exact = half // 2
    d = np.arange(max_distance + 1)
    near = np.maximum(d, max(exact, 1)).astype(np.float32)  # distances below `exact` take d itself below: no log(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        large = exact + (np.log(near / np.float32(exact)) / np.float32(math.log(max_distance / exact))
                         * np.float32(half - exact)).astype(np.int64)
    return np.where(d < exact, d, np.minimum(large, half - 1)).astype(np.int64)


def relative_position_bucket(relative_position: paddle.Tensor, num_buckets: int, max_distance: int) -> paddle.Tensor:
    """transformers' bidirectional T5 bucket of each relative position (int64 in, int64 out)."""
    buckets = (relative_position > 0).astype("int64") * (num_buckets // 2)
    distance = paddle.minimum(paddle.abs(relative_position), paddle.full_like(relative_position, max_distance))
    table = paddle.to_tensor(bucket_table(num_buckets, max_distance))
    return buckets + paddle.gather(table, distance.reshape([-1])).reshape(paddle.shape(distance))


class T5Attention(nn.Layer):
    def __init__(self, cfg: T5Config, has_bias: bool):
        super().__init__()
        self.heads, self.d_kv = cfg.num_heads, cfg.d_kv
        inner = cfg.num_heads * cfg.d_kv
        self.q = nn.Linear(cfg.d_model, inner, bias_attr=False)
        self.k = nn.Linear(cfg.d_model, inner, bias_attr=False)
        self.v = nn.Linear(cfg.d_model, inner, bias_attr=False)
        self.o = nn.Linear(inner, cfg.d_model, bias_attr=False)
        if has_bias:
            self.relative_attention_bias = nn.Embedding(cfg.relative_attention_num_buckets, cfg.num_heads)
        self.buckets, self.max_distance = cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance

    def position_bias(self, seq_len: paddle.Tensor) -> paddle.Tensor:
        """[1, H, S, S] bias from the bucket of (key position - query position)."""
        pos = paddle.arange(seq_len, dtype="int64")
        relative = pos.unsqueeze(0) - pos.unsqueeze(1)  # [query, key]: memory - context
        values = self.relative_attention_bias(relative_position_bucket(relative, self.buckets, self.max_distance))
        return values.transpose([2, 0, 1]).unsqueeze(0)

    def _heads(self, x: paddle.Tensor) -> paddle.Tensor:
        return x.reshape([0, 0, self.heads, self.d_kv]).transpose([0, 2, 1, 3])

    def forward(self, x: paddle.Tensor, bias: paddle.Tensor) -> paddle.Tensor:
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        scores = paddle.matmul(q, k, transpose_y=True) + bias  # no 1/sqrt(d): T5 folds it into the weights
        probs = F.softmax(scores.astype("float32"), axis=-1).astype(scores.dtype)
        out = paddle.matmul(probs, v).transpose([0, 2, 1, 3]).reshape([0, 0, self.heads * self.d_kv])
        return self.o(out)


class T5LayerSelfAttention(nn.Layer):
    def __init__(self, cfg: T5Config, has_bias: bool):
        super().__init__()
        self.SelfAttention = T5Attention(cfg, has_bias)
        self.layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def forward(self, x: paddle.Tensor, bias: paddle.Tensor) -> paddle.Tensor:
        return x + self.SelfAttention(self.layer_norm(x), bias)


class T5DenseReluDense(nn.Layer):
    """wi -> act -> wo, or gated: act(wi_0 x) * wi_1 x -> wo."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.gated, self.activation = cfg.gated, cfg.activation
        if cfg.gated:
            self.wi_0 = nn.Linear(cfg.d_model, cfg.d_ff, bias_attr=False)
            self.wi_1 = nn.Linear(cfg.d_model, cfg.d_ff, bias_attr=False)
        else:
            self.wi = nn.Linear(cfg.d_model, cfg.d_ff, bias_attr=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias_attr=False)

    def _act(self, x: paddle.Tensor) -> paddle.Tensor:
        return gelu_tanh(x) if self.activation == "gelu_new" else F.relu(x)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        h = self._act(self.wi_0(x)) * self.wi_1(x) if self.gated else self._act(self.wi(x))
        return self.wo(h)


class T5LayerFF(nn.Layer):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.DenseReluDense = T5DenseReluDense(cfg)
        self.layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return x + self.DenseReluDense(self.layer_norm(x))


class T5Block(nn.Layer):
    def __init__(self, cfg: T5Config, has_bias: bool):
        super().__init__()
        self.layer = nn.LayerList([T5LayerSelfAttention(cfg, has_bias), T5LayerFF(cfg)])

    def forward(self, x: paddle.Tensor, bias: paddle.Tensor) -> paddle.Tensor:
        return self.layer[1](self.layer[0](x, bias))


class T5Stack(nn.Layer):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.block = nn.LayerList([T5Block(cfg, i == 0) for i in range(cfg.num_layers)])
        self.final_layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)


class T5EncoderModel(nn.Layer):
    output_names = ("last_hidden_state",)

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.cfg = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = T5Stack(cfg)

    def forward(self, input_ids: paddle.Tensor) -> paddle.Tensor:
        h = self.shared(input_ids)
        bias = self.encoder.block[0].layer[0].SelfAttention.position_bias(paddle.shape(input_ids)[1])
        for block in self.encoder.block:
            h = block(h, bias)
        return self.encoder.final_layer_norm(h)
