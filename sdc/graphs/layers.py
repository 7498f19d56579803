"""Convolutional building blocks shared by the UNet and the VAE: resnets, resampling, timestep embedding.

Each class mirrors the diffusers module of the same name closely enough that its parameter names
are the diffusers state-dict names (so `sdc.graphs.weights` assigns checkpoints by lookup). Every
`forward` is written for `paddle.jit.to_static` and paddle2onnx: dynamic sizes come from
`paddle.shape`, no Python branches on tensor values, no buffers (constants are built in-graph).
"""

from __future__ import annotations

import math

import paddle
import paddle.nn.functional as F
from paddle import nn


def conv2d(cin: int, cout: int, kernel: int = 3, stride: int = 1, padding: int | None = None) -> nn.Conv2D:
    """A Conv2D with PyTorch's defaults (bias on, 'same' padding for odd kernels unless given)."""
    return nn.Conv2D(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2 if padding is None else padding)


class ResnetBlock2D(nn.Layer):
    """diffusers ResnetBlock2D with `time_embedding_norm="default"`; no time projection when temb_channels is None (VAE)."""

    def __init__(self, cin: int, cout: int, temb_channels: int | None, groups: int, eps: float, output_scale_factor: float = 1.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, epsilon=eps)
        self.conv1 = conv2d(cin, cout)
        if temb_channels is not None:
            self.time_emb_proj = nn.Linear(temb_channels, cout)
        self.norm2 = nn.GroupNorm(groups, cout, epsilon=eps)
        self.conv2 = conv2d(cout, cout)
        if cin != cout:
            self.conv_shortcut = conv2d(cin, cout, kernel=1)
        self.has_temb = temb_channels is not None
        self.has_shortcut = cin != cout
        self.output_scale_factor = output_scale_factor

    def forward(self, x: paddle.Tensor, temb: paddle.Tensor | None = None) -> paddle.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.has_temb:
            h = h + self.time_emb_proj(F.silu(temb)).unsqueeze([2, 3])
        h = self.conv2(F.silu(self.norm2(h)))
        if self.has_shortcut:
            x = self.conv_shortcut(x)
        out = x + h
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out


class Downsample2D(nn.Layer):
    """Stride-2 3x3 conv. With padding 0 (the VAE) diffusers pads right and bottom by one first."""

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.pad_right_bottom = padding == 0
        self.conv = conv2d(channels, channels, 3, stride=2, padding=padding)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        if self.pad_right_bottom:
            # Paddle's 4-element pad on NCHW is [left, right, top, bottom], like torch's F.pad.
            x = F.pad(x, [0, 1, 0, 1], mode="constant", value=0.0)
        return self.conv(x)


class Upsample2D(nn.Layer):
    """Nearest upsampling then a 3x3 conv.

    `forward(x, like)` resizes to `like`'s height and width, as diffusers does when a latent size is
    not a multiple of the UNet's total downscale (its `forward_upsample_size`): a skip connection from an
    odd level is not exactly 2x the level below. Without `like` it is a plain 2x.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = conv2d(channels, channels)

    def forward(self, x: paddle.Tensor, like: paddle.Tensor | None = None) -> paddle.Tensor:
        if like is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            size = paddle.shape(like)[2:4]
            x = F.interpolate(x, size=[size[0], size[1]], mode="nearest")
        return self.conv(x)


def timestep_features(timesteps: paddle.Tensor, dim: int, flip_sin_to_cos: bool, freq_shift: float) -> paddle.Tensor:
    """diffusers `get_timestep_embedding` (max_period 10000): [B] -> [B, dim] sinusoids, computed in-graph."""
    half = dim // 2
    exponent = paddle.arange(half, dtype="float32") * (-math.log(10000.0))
    freqs = paddle.exp(exponent / (half - freq_shift))
    args = timesteps.astype("float32").unsqueeze(1) * freqs.unsqueeze(0)
    sin, cos = paddle.sin(args), paddle.cos(args)
    emb = paddle.concat([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2 == 1:
        emb = paddle.concat([emb, paddle.zeros_like(emb[:, :1])], axis=-1)
    return emb


class TimestepEmbedding(nn.Layer):
    """Two linears with SiLU between: the MLP on top of the sinusoidal timestep features."""

    def __init__(self, cin: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(cin, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class RMSNorm(nn.Layer):
    """Root-mean-square norm over the last axis, x * rsqrt(mean(x^2) + eps) * weight, the mean taken in
    float32: transformers' T5LayerNorm and torch.nn.RMSNorm (Flux's q/k norms) alike."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = self.create_parameter([dim], default_initializer=nn.initializer.Constant(1.0))
        self.eps = eps

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        variance = x.astype("float32").pow(2).mean(axis=-1, keepdim=True)
        return self.weight * (x * paddle.rsqrt(variance + self.eps)).astype(self.weight.dtype)


def gelu_tanh(x: paddle.Tensor) -> paddle.Tensor:
    """GELU's tanh form (torch's approximate="tanh", transformers' gelu_new) written out: paddle2onnx 2.1
    (opset 17) exports F.gelu(approximate=True) as the exact erf GELU (1e-3 off on the T5 fixture)."""
    return 0.5 * x * (1.0 + paddle.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * paddle.pow(x, 3.0))))
