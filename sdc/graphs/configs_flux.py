"""Typed configs of the Flux family's own submodels (T5 encoder so far), read like sdc.graphs.configs.

Every option that changes the computation is implemented or refused by name (`UnsupportedConfigError`);
transformers' generic keys (dropout, decoder sizes, token ids) do not change the encoder's numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdc.errors import ConfigError, UnsupportedConfigError
from sdc.graphs.configs import _Reader, read_json

# feed_forward_proj -> (gated, activation); "gated-gelu" is T5 v1.1's (Flux, SD3, PixArt), gelu_new = tanh form
T5_FEED_FORWARD = {"gated-gelu": (True, "gelu_new"), "relu": (False, "relu"), "gated-relu": (True, "relu"),
                   "gelu": (False, "gelu_new")}


@dataclass(frozen=True)
class T5Config:
    path: Path
    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_heads: int
    relative_attention_num_buckets: int
    relative_attention_max_distance: int
    gated: bool
    activation: str  # "gelu_new" (tanh approximation) or "relu"
    layer_norm_epsilon: float


def load_t5_config(path: Path) -> T5Config:
    path = Path(path)
    r = _Reader(path, read_json(path))
    arch = r.get("architectures", ["T5EncoderModel"], list) or ["T5EncoderModel"]
    if arch[0] not in ("T5EncoderModel", "T5Model", "T5ForConditionalGeneration", "UMT5EncoderModel"):
        raise UnsupportedConfigError(path, "architectures", arch[0], "T5EncoderModel")
    if arch[0] == "UMT5EncoderModel":  # per-layer relative biases: another computation
        raise UnsupportedConfigError(path, "architectures", arch[0], "T5EncoderModel")
    ff = r.get("feed_forward_proj", "relu", str)
    if ff not in T5_FEED_FORWARD:
        raise UnsupportedConfigError(path, "feed_forward_proj", ff, ", ".join(T5_FEED_FORWARD))
    gated, act = T5_FEED_FORWARD[ff]
    heads = r.require("num_heads", int)
    buckets = r.get("relative_attention_num_buckets", 32, int)
    if buckets < 4 or buckets % 4:
        raise ConfigError(path, "relative_attention_num_buckets", f"expected a multiple of 4 >= 4, got {buckets}")
    return T5Config(
        path=path,
        vocab_size=r.require("vocab_size", int),
        d_model=r.require("d_model", int),
        d_kv=r.require("d_kv", int),
        d_ff=r.require("d_ff", int),
        num_layers=r.require("num_layers", int),
        num_heads=heads,
        relative_attention_num_buckets=buckets,
        relative_attention_max_distance=r.get("relative_attention_max_distance", 128, int),
        gated=gated,
        activation=act,
        layer_norm_epsilon=r.get("layer_norm_epsilon", 1e-6, float),
    )
