"""AutoencoderKL halves as Paddle Layers: `VaeEncoder` (image -> latent moments) and `VaeDecoder` (latent -> image).

They are separate submodels because the runtime calls them separately (img2img encodes once,
every generation decodes once). Parameter names keep diffusers' `encoder.` / `decoder.` /
`quant_conv.` / `post_quant_conv.` prefixes so one checkpoint file serves both. The encoder returns
the raw moments (mean ‖ logvar, as diffusers' `quant_conv` output); sampling the posterior is the
runtime's job so that its noise is reproducible outside the graph.
"""

from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddle import nn

from sdc.graphs.attention import VaeAttention
from sdc.graphs.configs_unet import VAEConfig
from sdc.graphs.layers import Downsample2D, ResnetBlock2D, Upsample2D, conv2d

VAE_EPS = 1e-6  # diffusers hard-codes the VAE's norm epsilon


class _Block(nn.Layer):
    """DownEncoderBlock2D / UpDecoderBlock2D: resnets without time embedding, then an optional resample."""

    def __init__(self, cin: int, cout: int, layers: int, groups: int, resample: str | None):
        super().__init__()
        self.resnets = nn.LayerList([ResnetBlock2D(cin if j == 0 else cout, cout, None, groups, VAE_EPS) for j in range(layers)])
        if resample == "down":
            self.downsamplers = nn.LayerList([Downsample2D(cout, padding=0)])
        elif resample == "up":
            self.upsamplers = nn.LayerList([Upsample2D(cout)])
        self.resample = resample

    def forward(self, h: paddle.Tensor) -> paddle.Tensor:
        for resnet in self.resnets:
            h = resnet(h)
        if self.resample == "down":
            h = self.downsamplers[0](h)
        elif self.resample == "up":
            h = self.upsamplers[0](h)
        return h


class _MidBlock(nn.Layer):
    """UNetMidBlock2D: resnet, (attention,) resnet."""

    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = nn.LayerList([ResnetBlock2D(channels, channels, None, groups, VAE_EPS) for _ in range(2)])
        if attention:
            self.attentions = nn.LayerList([VaeAttention(channels, groups, VAE_EPS)])
        self.attention = attention

    def forward(self, h: paddle.Tensor) -> paddle.Tensor:
        h = self.resnets[0](h)
        if self.attention:
            h = self.attentions[0](h)
        return self.resnets[1](h)


class Encoder(nn.Layer):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        boc, g, n = cfg.block_out_channels, cfg.norm_num_groups, len(cfg.block_out_channels)
        self.conv_in = conv2d(cfg.in_channels, boc[0])
        self.down_blocks = nn.LayerList([
            _Block(boc[max(i - 1, 0)], boc[i], cfg.layers_per_block, g, "down" if i < n - 1 else None) for i in range(n)
        ])
        self.mid_block = _MidBlock(boc[-1], g, cfg.mid_block_add_attention)
        self.conv_norm_out = nn.GroupNorm(g, boc[-1], epsilon=VAE_EPS)
        self.conv_out = conv2d(boc[-1], 2 * cfg.latent_channels)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        h = self.conv_in(x)
        for block in self.down_blocks:
            h = block(h)
        h = self.mid_block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class Decoder(nn.Layer):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        boc, g, n = cfg.block_out_channels, cfg.norm_num_groups, len(cfg.block_out_channels)
        rev = boc[::-1]
        self.conv_in = conv2d(cfg.latent_channels, rev[0])
        self.mid_block = _MidBlock(rev[0], g, cfg.mid_block_add_attention)
        self.up_blocks = nn.LayerList([
            _Block(rev[max(i - 1, 0)], rev[i], cfg.layers_per_block + 1, g, "up" if i < n - 1 else None) for i in range(n)
        ])
        self.conv_norm_out = nn.GroupNorm(g, boc[0], epsilon=VAE_EPS)
        self.conv_out = conv2d(boc[0], cfg.out_channels)

    def forward(self, z: paddle.Tensor) -> paddle.Tensor:
        h = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            h = block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class VaeEncoder(nn.Layer):
    """`sample` [B, 3, H, W] in [-1, 1] -> `latent_parameters` [B, 2*latent, H/f, W/f] (mean ‖ logvar)."""

    output_names = ("latent_parameters",)

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.encoder = Encoder(cfg)
        self.use_quant_conv = cfg.use_quant_conv
        if cfg.use_quant_conv:
            self.quant_conv = conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)

    def forward(self, sample: paddle.Tensor) -> paddle.Tensor:
        moments = self.encoder(sample)
        return self.quant_conv(moments) if self.use_quant_conv else moments


class VaeDecoder(nn.Layer):
    """`latent_sample` [B, latent, h, w] (already divided by the scaling factor) -> `sample` [B, 3, h*f, w*f]."""

    output_names = ("sample",)

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.use_post_quant_conv = cfg.use_post_quant_conv
        if cfg.use_post_quant_conv:
            self.post_quant_conv = conv2d(cfg.latent_channels, cfg.latent_channels, 1)
        self.decoder = Decoder(cfg)

    def forward(self, latent_sample: paddle.Tensor) -> paddle.Tensor:
        z = self.post_quant_conv(latent_sample) if self.use_post_quant_conv else latent_sample
        return self.decoder(z)
