"""UNet2DConditionModel (SD 1.x / 2.x) as a Paddle Layer built from a `UNetConfig`.

Block construction follows diffusers' `UNet2DConditionModel.__init__` channel bookkeeping exactly
(per-block heads, layers, transformer depth and cross-attention width; up blocks see them reversed),
so any valid config of the supported block types loads its checkpoint by name.
`forward(sample, timestep, encoder_hidden_states[, text_embeds, time_ids]) -> out_sample`; the last two
exist for SDXL (`addition_embed_type="text_time"`), whose time embedding adds an MLP of the pooled
text embedding concatenated with sinusoids of the size/crop (or aesthetic-score) time ids.
"""

from __future__ import annotations

import paddle
import paddle.nn.functional as F
from paddle import nn

from sdc.graphs.attention import Transformer2DModel
from sdc.graphs.configs_unet import UNetConfig
from sdc.graphs.layers import Downsample2D, ResnetBlock2D, TimestepEmbedding, Upsample2D, conv2d, timestep_features


def transformers(cfg: UNetConfig, r: int, channels: int, n: int, depths=None) -> nn.LayerList:
    """`n` spatial transformers with block `r`'s heads and cross-attention width (r: down-block index).

    depths: one depth for all, or one per transformer; default block r's down-path depths.
    """
    depths = cfg.transformer_layers_per_block[r] if depths is None else depths
    per = list(depths) if isinstance(depths, tuple) else [depths] * n
    return nn.LayerList([
        Transformer2DModel(channels, cfg.num_attention_heads[r], per[j], cfg.cross_attention_dim[r],
                           cfg.norm_num_groups, cfg.use_linear_projection, cfg.upcast_attention)
        for j in range(n)
    ])


class DownBlock(nn.Layer):
    """CrossAttnDownBlock2D (with `attentions`) or DownBlock2D (without)."""

    def __init__(self, cfg: UNetConfig, i: int, cin: int, cout: int, temb: int, cross: bool, downsample: bool):
        super().__init__()
        g, eps = cfg.norm_num_groups, cfg.norm_eps
        n = cfg.layers_per_block[i]
        self.resnets = nn.LayerList([ResnetBlock2D(cin if j == 0 else cout, cout, temb, g, eps) for j in range(n)])
        self.cross = cross
        if cross:
            self.attentions = transformers(cfg, i, cout, n)
        if downsample:
            self.downsamplers = nn.LayerList([Downsample2D(cout, padding=cfg.downsample_padding)])
        self.downsample = downsample

    def forward(self, h, temb, context) -> tuple[paddle.Tensor, list[paddle.Tensor]]:
        skips = []
        for j, resnet in enumerate(self.resnets):
            h = resnet(h, temb)
            if self.cross:
                h = self.attentions[j](h, context)
            skips.append(h)
        if self.downsample:
            h = self.downsamplers[0](h)
            skips.append(h)
        return h, skips


class UpBlock(nn.Layer):
    """CrossAttnUpBlock2D or UpBlock2D: each resnet takes the running map concatenated with one skip."""

    def __init__(self, cfg: UNetConfig, i: int, cin: int, cout: int, prev: int, temb: int, cross: bool, upsample: bool):
        super().__init__()
        g, eps = cfg.norm_num_groups, cfg.norm_eps
        r = len(cfg.block_out_channels) - 1 - i  # index into the (down-ordered) per-block lists
        n = cfg.layers_per_block[r] + 1
        self.resnets = nn.LayerList([
            ResnetBlock2D((prev if j == 0 else cout) + (cin if j == n - 1 else cout), cout, temb, g, eps) for j in range(n)
        ])
        self.cross = cross
        if cross:
            rev = cfg.reverse_transformer_layers_per_block
            self.attentions = transformers(cfg, r, cout, n, rev[i] if rev is not None else None)
        if upsample:
            self.upsamplers = nn.LayerList([Upsample2D(cout)])
        self.upsample = upsample

    def forward(self, h, skips: list[paddle.Tensor], temb, context, upsample_like=None) -> paddle.Tensor:
        for j, resnet in enumerate(self.resnets):
            h = resnet(paddle.concat([h, skips[-1 - j]], axis=1), temb)
            if self.cross:
                h = self.attentions[j](h, context)
        if self.upsample:
            h = self.upsamplers[0](h, upsample_like)
        return h


class MidBlock(nn.Layer):
    """UNetMidBlock2DCrossAttn: resnet, then (attention, resnet) once; resnets scale by mid_block_scale_factor."""

    def __init__(self, cfg: UNetConfig, channels: int, temb: int):
        super().__init__()
        g, eps, s = cfg.norm_num_groups, cfg.norm_eps, cfg.mid_block_scale_factor
        self.resnets = nn.LayerList([ResnetBlock2D(channels, channels, temb, g, eps, s) for _ in range(2)])
        depths = cfg.transformer_layers_per_block[-1]  # diffusers: the mid block takes the first of a list
        self.attentions = transformers(cfg, -1, channels, 1, depths[0] if isinstance(depths, tuple) else depths)

    def forward(self, h, temb, context):
        h = self.resnets[0](h, temb)
        return self.resnets[1](self.attentions[0](h, context), temb)


class UNet2DConditionModel(nn.Layer):
    output_names = ("out_sample",)

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        boc = cfg.block_out_channels
        temb = cfg.time_embedding_dim
        self.conv_in = conv2d(cfg.in_channels, boc[0], cfg.conv_in_kernel)
        self.time_embedding = TimestepEmbedding(boc[0], temb)
        if cfg.text_time:
            self.add_embedding = TimestepEmbedding(cfg.projection_class_embeddings_input_dim, temb)

        down, cout = [], boc[0]
        for i, kind in enumerate(cfg.down_block_types):
            cin, cout = cout, boc[i]
            down.append(DownBlock(cfg, i, cin, cout, temb, kind.startswith("CrossAttn"), i < len(boc) - 1))
        self.down_blocks = nn.LayerList(down)
        if cfg.mid_block_type is not None:
            self.mid_block = MidBlock(cfg, boc[-1], temb)

        rev = boc[::-1]
        up, cout = [], rev[0]
        for i, kind in enumerate(cfg.up_block_types):
            prev, cout = cout, rev[i]
            cin = rev[min(i + 1, len(boc) - 1)]
            up.append(UpBlock(cfg, i, cin, cout, prev, temb, kind.startswith("CrossAttn"), i < len(boc) - 1))
        self.up_blocks = nn.LayerList(up)

        self.conv_norm_out = nn.GroupNorm(cfg.norm_num_groups, boc[0], epsilon=cfg.norm_eps)
        self.conv_out = conv2d(boc[0], cfg.out_channels, cfg.conv_out_kernel)

    def forward(self, sample: paddle.Tensor, timestep: paddle.Tensor, encoder_hidden_states: paddle.Tensor,
                text_embeds: paddle.Tensor | None = None, time_ids: paddle.Tensor | None = None) -> paddle.Tensor:
        cfg = self.cfg
        features = timestep_features(timestep, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        temb = self.time_embedding(features)
        if cfg.text_time:
            temb = temb + self.add_embedding(self._text_time(text_embeds, time_ids))
        if cfg.center_input_sample:
            sample = 2.0 * sample - 1.0
        h = self.conv_in(sample)

        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, temb, encoder_hidden_states)
            skips.extend(block_skips)
        if cfg.mid_block_type is not None:
            h = self.mid_block(h, temb, encoder_hidden_states)

        for block in self.up_blocks:
            n = len(block.resnets)
            mine, skips = skips[-n:], skips[:-n]
            # The next level's first skip sets the upsampled size (diffusers' forward_upsample_size).
            h = block(h, mine, temb, encoder_hidden_states, skips[-1] if block.upsample else None)

        return self.conv_out(F.silu(self.conv_norm_out(h)))

    def _text_time(self, text_embeds: paddle.Tensor, time_ids: paddle.Tensor) -> paddle.Tensor:
        """diffusers' `get_aug_embed` for text_time: [text_embeds, sinusoids of every time id] along features."""
        cfg = self.cfg
        ids = time_ids.reshape([-1])  # [B * n]: each id gets its own sinusoids, as diffusers' flatten()
        features = timestep_features(ids, cfg.addition_time_embed_dim, cfg.flip_sin_to_cos, cfg.freq_shift)
        features = features.reshape([paddle.shape(text_embeds)[0], -1])
        return paddle.concat([text_embeds, features.astype(text_embeds.dtype)], axis=-1)
