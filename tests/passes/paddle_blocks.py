"""Tiny Paddle layers written like the project's submodels, exported the way the build exports them.

The passes must match what paddle2onnx really emits, so the test graphs come from Paddle, not from
hand-written ONNX: a UNet-like stage (GroupNorm+SiLU resnet, transformer block with self- and
cross-attention and a GEGLU feed-forward) and the project's own CLIP text encoder (causal mask).
Exports are cached by the hash of the sources that define them.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states")
UNET_OUTPUTS = ("out_sample",)
CLIP_INPUTS = ("input_ids",)
CLIP_OUTPUTS = ("last_hidden_state", "pooler_output", "hidden_states_penultimate")


def _layers():
    """The Paddle classes, built on first use so importing this module does not import paddle."""
    import paddle
    import paddle.nn.functional as F
    from paddle import nn

    class Attention(nn.Layer):
        """diffusers' Attention as sdc.graphs writes attention: Linear q/k/v, [B,S,H,hd] heads, matmul + softmax."""

        def __init__(self, dim: int, heads: int, context_dim: int | None = None):
            super().__init__()
            self.heads, self.head_dim = heads, dim // heads
            self.scale = self.head_dim**-0.5
            kv = context_dim or dim
            self.to_q = nn.Linear(dim, dim, bias_attr=False)
            self.to_k = nn.Linear(kv, dim, bias_attr=False)
            self.to_v = nn.Linear(kv, dim, bias_attr=False)
            self.to_out = nn.Linear(dim, dim)

        def _heads(self, x):
            return x.reshape([0, 0, self.heads, self.head_dim]).transpose([0, 2, 1, 3])

        def forward(self, x, context=None):
            context = x if context is None else context
            q, k, v = self._heads(self.to_q(x)), self._heads(self.to_k(context)), self._heads(self.to_v(context))
            probs = F.softmax(paddle.matmul(q, k, transpose_y=True) * self.scale, axis=-1)
            out = paddle.matmul(probs, v).transpose([0, 2, 1, 3]).reshape([0, 0, self.heads * self.head_dim])
            return self.to_out(out)

    class GEGLUFeedForward(nn.Layer):
        def __init__(self, dim: int, mult: int = 4):
            super().__init__()
            self.proj = nn.Linear(dim, dim * mult * 2)
            self.out = nn.Linear(dim * mult, dim)

        def forward(self, x):
            value, gate = self.proj(x).chunk(2, axis=-1)  # first half value, second half gate (diffusers)
            return self.out(value * F.gelu(gate))

    class TransformerBlock(nn.Layer):
        def __init__(self, dim: int, heads: int, context_dim: int, groups: int):
            super().__init__()
            self.norm = nn.GroupNorm(groups, dim, epsilon=1e-6)
            self.proj_in = nn.Conv2D(dim, dim, 1)
            self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.attn1 = Attention(dim, heads)
            self.attn2 = Attention(dim, heads, context_dim)
            self.ff = GEGLUFeedForward(dim)
            self.proj_out = nn.Conv2D(dim, dim, 1)

        def forward(self, x, context):
            shape = paddle.shape(x)
            h = self.proj_in(self.norm(x))
            t = h.flatten(2).transpose([0, 2, 1])
            t = t + self.attn1(self.norm1(t))
            t = t + self.attn2(self.norm2(t), context)
            t = t + self.ff(self.norm3(t))
            h = t.transpose([0, 2, 1]).reshape(shape)
            return x + self.proj_out(h)

    class ResnetBlock(nn.Layer):
        def __init__(self, cin: int, cout: int, temb: int, groups: int):
            super().__init__()
            self.norm1 = nn.GroupNorm(groups, cin, epsilon=1e-5)
            self.conv1 = nn.Conv2D(cin, cout, 3, padding=1)
            self.time_emb_proj = nn.Linear(temb, cout)
            self.norm2 = nn.GroupNorm(groups, cout, epsilon=1e-5)
            self.conv2 = nn.Conv2D(cout, cout, 3, padding=1)
            self.shortcut = nn.Conv2D(cin, cout, 1) if cin != cout else None

        def forward(self, x, temb):
            h = self.conv1(F.silu(self.norm1(x)))
            h = h + self.time_emb_proj(F.silu(temb)).unsqueeze([2, 3])
            h = self.conv2(F.silu(self.norm2(h)))
            return (x if self.shortcut is None else self.shortcut(x)) + h

    class TinyUNet(nn.Layer):
        """conv_in -> [resnet, transformer] x 2 (channel change between) -> GroupNorm+SiLU -> conv_out."""

        def __init__(self, channels=(32, 48), heads=2, context_dim=24, groups=8, temb=32):
            super().__init__()
            self.temb_dim = temb
            self.time_embedding = nn.Linear(temb, temb)
            self.conv_in = nn.Conv2D(4, channels[0], 3, padding=1)
            blocks, cin = [], channels[0]
            for c in channels:
                blocks += [ResnetBlock(cin, c, temb, groups), TransformerBlock(c, heads, context_dim, groups)]
                cin = c
            self.blocks = nn.LayerList(blocks)
            self.norm_out = nn.GroupNorm(groups, cin, epsilon=1e-5)
            self.conv_out = nn.Conv2D(cin, 4, 3, padding=1)

        def forward(self, sample, timestep, encoder_hidden_states):
            half = self.temb_dim // 2
            freqs = paddle.exp(paddle.arange(half, dtype="float32") * (-np.log(10000.0) / half))
            args = timestep.unsqueeze(1) * freqs.unsqueeze(0)
            temb = self.time_embedding(paddle.concat([paddle.cos(args), paddle.sin(args)], axis=-1))
            h = self.conv_in(sample)
            for block in self.blocks:
                h = block(h, temb) if isinstance(block, ResnetBlock) else block(h, encoder_hidden_states)
            return self.conv_out(F.silu(self.norm_out(h)))

    return TinyUNet


def _randomise(layer, seed: int) -> None:
    """Random values for every parameter (norms and biases too): a swapped or dropped one changes the output."""
    rng = np.random.default_rng(seed)
    for p in layer.parameters():
        scale = 0.5 if len(p.shape) <= 1 else 1.0 / np.sqrt(max(1, int(np.prod(p.shape[1:]))))
        value = rng.standard_normal(p.shape) * scale
        if len(p.shape) == 1 and "norm" in p.name and p.name.endswith(".w_0"):
            value += 1.0  # norm scales around 1, so activations keep their size
        p.set_value(value.astype(np.float32))


def _export(layer, specs, inputs: tuple[str, ...], outputs: tuple[str, ...], out: Path, opset: int = 17) -> Path:
    """sdc's export route: to_static, jit.save, paddle2onnx in a child process, weights attached by name."""
    import onnx
    import paddle

    from sdc.compile.export import attach_weights
    from sdc.compile.p2o import run_paddle2onnx

    prefix = out.parent / (out.stem + ".program")
    static = paddle.jit.to_static(layer, input_spec=specs, full_graph=True)
    paddle.jit.save(static, str(prefix))
    graph_only = out.with_name(out.stem + ".graph.onnx")
    run_paddle2onnx(Path(str(prefix) + ".json"), graph_only, opset, out.stem)
    model = onnx.load(str(graph_only))
    attach_weights(model, layer, out.stem)
    assert [i.name for i in model.graph.input] == list(inputs)
    renames = {o.name: name for o, name in zip(model.graph.output, outputs)}
    for node in model.graph.node:  # contract names on the outputs, as sdc.compile.export.name_io does
        node.output[:] = [renames.get(n, n) for n in node.output]
        node.input[:] = [renames.get(n, n) for n in node.input]
    for o in model.graph.output:
        o.name = renames[o.name]
    onnx.save(model, str(out))
    return out


def export_tiny_unet(out: Path, **config) -> Path:
    """TinyUNet(**config) exported; config as TinyUNet's arguments (channels, heads, context_dim, groups, temb)."""
    import paddle

    paddle.seed(0)
    layer = _layers()(**config)
    _randomise(layer, seed=1)
    layer.eval()
    specs = [
        paddle.static.InputSpec([None, 4, None, None], "float32", "sample"),
        paddle.static.InputSpec([None], "float32", "timestep"),
        paddle.static.InputSpec([None, None, config.get("context_dim", 24)], "float32", "encoder_hidden_states"),
    ]
    return _export(layer, specs, UNET_INPUTS, UNET_OUTPUTS, out)


def export_tiny_clip(out: Path, hidden_act: str = "gelu") -> Path:
    import paddle

    from sdc.graphs.clip import CLIPTextModel
    from sdc.graphs.configs import CLIPTextConfig

    cfg = CLIPTextConfig(
        path=Path("tiny"), vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=12, hidden_act=hidden_act, layer_norm_eps=1e-5,
        eos_token_id=9, with_projection=False, projection_dim=16,
    )
    paddle.seed(0)
    layer = CLIPTextModel(cfg)
    _randomise(layer, seed=2)
    layer.eval()
    specs = [paddle.static.InputSpec([None, None], "int64", "input_ids")]
    return _export(layer, specs, CLIP_INPUTS, CLIP_OUTPUTS, out)


def sources_hash() -> str:
    """Changes when anything that shapes the exported graphs changes."""
    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    for path in (Path(__file__), root / "sdc/graphs/clip.py", root / "sdc/compile/export.py", root / "sdc/compile/p2o_worker.py"):
        h.update(path.read_bytes())
    import importlib.metadata as md

    for dist in ("paddlepaddle", "paddle2onnx"):
        h.update(md.version(dist).encode())
    h.update(sys.version.encode())
    return h.hexdigest()[:16]


if __name__ == "__main__":  # python -m tests.passes.paddle_blocks OUT_DIR: export both, for inspection
    out_dir = Path(sys.argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    print(export_tiny_unet(out_dir / "unet.onnx"), export_tiny_clip(out_dir / "clip.onnx"))
