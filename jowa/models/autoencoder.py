"""Encoder and decoder of the frame tokenizer (spec 2.2-2.5), taming-transformers style.

Written from the JOWA specification, not from the reference code. Module names (``down.N.block.M``,
``attn``, ``downsample``, ``mid.block_1``, ``nin_shortcut`` ...) follow the reference layout on purpose,
so that reference tokenizer weights load by name without a renaming table.

Architecture facts that are easy to get wrong (spec 2.2-2.5 and gotcha 9):

* GroupNorm has 2 groups (not 32) because there are only 64 channels; eps 1e-6.
* The encoder downsamples x7 then x2 (84 -> 12 -> 6) with right/bottom zero padding and kernel ``s + 1``; the
  decoder upsamples x7 then x2 (6 -> 42 -> 84) by nearest interpolation and a 3x3 conv.
* The decoder's resolution bookkeeping starts at ``resolution // 21`` (4) instead of the latent size (6),
  so it never matches ``attn_resolutions``: the decoder has attention only in its middle block, the
  encoder has it at 12 and 6. We reproduce that so reference weights load and behave identically.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from jowa.models.tokenizer_config import FIRST_SCALE, TokenizerConfig

__all__ = ["AttnBlock", "Decoder", "Downsample", "Encoder", "ResnetBlock", "Upsample"]

_DECODER_RES_DIVISOR = 21
"""The reference decoder starts its attention bookkeeping at ``resolution // 21`` (= 4 for 84), not at the
latent size: the off-by-resolution quirk leaving the decoder without attention outside its middle block."""


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 2 groups: the reference shrinks taming's 32 groups for its 64-channel network."""
    return nn.GroupNorm(num_groups=2, num_channels=channels, eps=1e-6, affine=True)


def _swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """GN, swish, conv3x3, GN, swish, dropout, conv3x3, plus a skip (a 1x1 conv if widths differ)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = _norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        # Only exists when widths differ (never with ch_mult all ones), named as in taming-style checkpoints.
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, with 1x1-conv q/k/v/proj_out and a residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)
        q = self.q(hn).reshape(b, c, h * w).transpose(1, 2)  # b, hw, c
        k = self.k(hn).reshape(b, c, h * w)  # b, c, hw
        v = self.v(hn).reshape(b, c, h * w)  # b, c, hw
        weights = torch.softmax(torch.bmm(q, k) * c**-0.5, dim=2)  # b, hw(query), hw(key)
        out = torch.bmm(v, weights.transpose(1, 2)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Zero-pad right/bottom by 1, then an (s+1)x(s+1) conv of stride s: 84 -> 12 (s=7), 12 -> 6 (s=2)."""

    def __init__(self, channels: int, scale: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=scale + 1, stride=scale, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Nearest-neighbour interpolation by an integer scale, then a 3x3 conv."""

    def __init__(self, channels: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=self.scale, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks) and ``attn`` (one AttnBlock per block, or none)."""

    def __init__(self, blocks: list[ResnetBlock], attns: list[AttnBlock]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn) > 0:
                x = self.attn[i](x)
        return x


class _Middle(nn.Module):
    """ResnetBlock, AttnBlock, ResnetBlock at the latent resolution (both encoder and decoder)."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """84x84xin_channels -> latent_resolution^2 x z_channels (spec 2.3)."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        c = config
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, kernel_size=3, padding=1)
        in_mult = (1, *c.ch_mult)
        res = c.resolution
        self.down = nn.ModuleList()
        block_in = c.ch
        for level in range(c.num_levels):
            block_in, block_out = c.ch * in_mult[level], c.ch * c.ch_mult[level]
            blocks = []
            for _ in range(c.num_res_blocks):
                blocks.append(ResnetBlock(block_in, block_out, c.dropout))
                block_in = block_out
            attns = [AttnBlock(block_in) for _ in blocks] if res in c.attn_resolutions else []
            stage = _Level(blocks, attns)
            if level != c.num_levels - 1:
                scale = FIRST_SCALE if level == 0 else 2
                stage.downsample = Downsample(block_in, scale)
                res //= scale
            self.down.append(stage)
        self.mid = _Middle(block_in, c.dropout)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, c.z_channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            h = stage(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    """latent x z_channels -> 84x84xout_ch in [-1, 1] (spec 2.5), with the reference's attention quirk.

    ``up[i]`` is indexed like the encoder's ``down[i]`` (level 0 = full resolution) but applied from the
    highest index down, as in the reference checkpoints.
    """

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        c = config
        block_in = c.ch * c.ch_mult[-1]
        self.conv_in = nn.Conv2d(c.z_channels, block_in, kernel_size=3, padding=1)
        self.mid = _Middle(block_in, c.dropout)
        bookkept_res = c.resolution // _DECODER_RES_DIVISOR  # the quirk: 4, 28, 56 never match (6, 12)
        stages: list[_Level] = []
        for level in reversed(range(c.num_levels)):
            block_out = c.ch * c.ch_mult[level]
            blocks = []
            for _ in range(c.num_res_blocks + 1):
                blocks.append(ResnetBlock(block_in, block_out, c.dropout))
                block_in = block_out
            attns = [AttnBlock(block_in) for _ in blocks] if bookkept_res in c.attn_resolutions else []
            stage = _Level(blocks, attns)
            if level != 0:
                scale = FIRST_SCALE if level == c.num_levels - 1 else 2
                stage.upsample = Upsample(block_in, scale)
                bookkept_res *= scale
            stages.insert(0, stage)
        self.up = nn.ModuleList(stages)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, c.out_ch, kernel_size=3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for stage in reversed(self.up):
            h = stage(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))
