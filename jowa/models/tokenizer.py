"""JOWA's frame tokenizer: a VQ-VAE turning one 84x84 grayscale frame into 36 discrete tokens and back.

Written from the JOWA specification (section 2), not from the reference code. Module and parameter
names follow the reference layout on purpose, so that a reference tokenizer state dict
(``encoder.down.0.block.0.norm1.weight`` ..., ``pre_quant_conv.*``, ``embedding.weight``,
``post_quant_conv.*``, ``decoder.*``, optionally ``lpips.*``) loads with ``load_state_dict(strict=True)``
and no renaming table.

Architecture facts that are easy to get wrong (spec 2.2-2.5 and gotcha 9):

* GroupNorm has 2 groups (not 32) because there are only 64 channels; eps 1e-6.
* The encoder downsamples x7 then x2 (84 -> 12 -> 6) with right/bottom zero padding and kernel ``s + 1``; the
  decoder upsamples x7 then x2 (6 -> 42 -> 84) by nearest interpolation and a 3x3 conv.
* The decoder's resolution bookkeeping starts at ``resolution // 21`` (4) instead of the latent size (6),
  so it never matches ``attn_resolutions``: the decoder has attention only in its middle block, the
  encoder has it at 12 and 6. We reproduce that so reference weights load and behave identically.

Frames enter and leave the public API in [0, 1]; internally the network works in [-1, 1].
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "COMMITMENT_BETA",
    "LPIPS",
    "PerceptualWeightsUnavailable",
    "Tokenizer",
    "TokenizerConfig",
    "TokenizerEncoding",
    "TokenizerOutput",
    "load_state_file",
    "tokenizer_from_reference",
]

COMMITMENT_BETA = 1.0
"""Weight of the commitment term ||z - sg(z_q)||^2; the reference uses 1.0 (VQ-VAE paper), not 0.25."""

_FIRST_SCALE = 7
"""Scale of the encoder's first downsample and the decoder's first (lowest-res) upsample: 84 = 7*2*6."""

_DECODER_RES_DIVISOR = 21
"""The reference decoder starts its attention bookkeeping at ``resolution // 21`` (= 4 for 84), not at the
latent size: the off-by-resolution quirk leaving the decoder without attention outside its middle block."""

_MAX_LISTED = 20


# ----------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class TokenizerConfig:
    """Tokenizer hyper-parameters; defaults are the released ``config/tokenizer/default.yaml`` values."""

    vocab_size: int = 2048
    embed_dim: int = 512
    resolution: int = 84
    in_channels: int = 1
    z_channels: int = 512
    ch: int = 64
    ch_mult: tuple[int, ...] = (1, 1, 1)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (6, 12)
    out_ch: int = 1
    dropout: float = 0.0

    def __post_init__(self) -> None:
        # Accept lists (YAML/JSON) but store tuples so the config stays hashable and immutable.
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        if not self.ch_mult:
            raise ValueError("ch_mult must have at least one level")
        positive = ("vocab_size", "embed_dim", "resolution", "in_channels", "z_channels", "ch", "out_ch")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_res_blocks < 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("num_res_blocks must be >= 0 and dropout in [0, 1)")
        if self.resolution % self.total_downsampling:
            raise ValueError(
                f"resolution {self.resolution} is not divisible by the total downsampling factor "
                f"{self.total_downsampling} (x{_FIRST_SCALE} then x2 per further level), so the decoder "
                "could not reproduce the input size"
            )

    @property
    def num_levels(self) -> int:
        return len(self.ch_mult)

    @property
    def total_downsampling(self) -> int:
        return _FIRST_SCALE * 2 ** (self.num_levels - 2) if self.num_levels > 1 else 1

    @property
    def latent_resolution(self) -> int:
        """Side of the token grid (6 for the default config)."""
        return self.resolution // self.total_downsampling

    @property
    def tokens_per_frame(self) -> int:
        """Tokens per frame, in raster order of the latent grid (36 for the default config)."""
        return self.latent_resolution**2

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenizerConfig:
        """Build from the reference layout ``{vocab_size, embed_dim, encoder_decoder: {...}}`` or a flat dict.

        Keys starting with ``_`` (Hydra's ``_target_``) are ignored; any other unknown key is an error, so a
        typo cannot silently fall back to a default.
        """
        flat: dict[str, Any] = {}
        for key, value in data.items():
            if key.startswith("_"):
                continue
            if key == "encoder_decoder":
                if not isinstance(value, Mapping):
                    raise ValueError("'encoder_decoder' must be a mapping")
                flat.update({k: v for k, v in value.items() if not k.startswith("_")})
            else:
                flat[key] = value
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(flat) - known)
        if unknown:
            raise ValueError(f"unknown tokenizer config keys: {unknown} (known: {sorted(known)})")
        return cls(**flat)

    def to_dict(self) -> dict[str, Any]:
        """The reference layout (inverse of :meth:`from_dict`)."""
        inner = dataclasses.asdict(self)
        top = {"vocab_size": inner.pop("vocab_size"), "embed_dim": inner.pop("embed_dim")}
        inner["ch_mult"] = list(inner["ch_mult"])
        inner["attn_resolutions"] = list(inner["attn_resolutions"])
        return {**top, "encoder_decoder": inner}


# ----------------------------------------------------------------------------------------------- blocks


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
                scale = _FIRST_SCALE if level == 0 else 2
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
                scale = _FIRST_SCALE if level == c.num_levels - 1 else 2
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


# ----------------------------------------------------------------------------------------------- LPIPS

WeightsSource = str | os.PathLike | Sequence[str | os.PathLike] | Mapping[str, Any]

_VGG16_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M")
_VGG16_LAYOUT += (512, 512, 512)
_VGG16_SLICE_ENDS = (4, 9, 16, 23, 30)  # flat layer indices after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_LPIPS_CHANNELS = (64, 128, 256, 512, 512)
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)  # input scaling constants of the LPIPS paper's VGG variant
_LPIPS_SCALE = (0.458, 0.448, 0.450)

_NO_WEIGHTS_MESSAGE = (
    "the LPIPS perceptual loss needs pretrained weights (VGG16 features + LPIPS linear heads), which "
    "cannot be downloaded in this environment. Provide them as a state-dict file: "
    "Tokenizer(config, perceptual_weights=PATH) or tokenizer.load_perceptual_weights(PATH), where PATH "
    "(or a list of paths, merged) is a torch.save / .safetensors / .npz file with keys "
    "'net.sliceK.N.{weight,bias}' and 'linK.model.1.weight' (optionally prefixed 'lpips.', as in a JOWA "
    "tokenizer checkpoint; torchvision 'features.N.*' VGG16 keys are accepted too). A reference checkpoint "
    "that contains 'lpips.*' keys also provides them via tokenizer_from_reference. "
    "Or call compute_loss(..., perceptual=False)."
)


class PerceptualWeightsUnavailable(RuntimeError):
    """The perceptual loss was requested but no LPIPS weights were given (they cannot be fetched here)."""


class _ScalingLayer(nn.Module):
    """Fixed per-channel affine input normalisation of LPIPS (persistent buffers, as in checkpoints)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale


class _VGG16Features(nn.Module):
    """VGG16 conv trunk in 5 slices ending at relu1_2 ... relu5_3; layer indices as in torchvision."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU()]
                channels = int(item)
        start = 0
        for k, end in enumerate(_VGG16_SLICE_ENDS, start=1):
            sl = nn.Sequential()
            for idx in range(start, end):
                sl.add_module(str(idx), layers[idx])
            setattr(self, f"slice{k}", sl)
            start = end

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for k in range(1, len(_VGG16_SLICE_ENDS) + 1):
            x = getattr(self, f"slice{k}")(x)
            feats.append(x)
        return feats


class _LinearHead(nn.Module):
    """LPIPS learned per-channel weights: dropout + 1x1 conv to one channel (``model.1.weight``, no bias)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def _vgg_slice_of(layer: int) -> int:
    for k, end in enumerate(_VGG16_SLICE_ENDS, start=1):
        if layer < end:
            return k
    raise ValueError(f"VGG16 feature layer {layer} is past relu5_3 and unused by LPIPS")


class LPIPS(nn.Module):
    """Learned Perceptual Image Patch Similarity (Zhang et al. 2018), VGG16 variant, frozen.

    Written from the paper: VGG16 features at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of both images
    (after the fixed scaling layer) are unit-normalised over channels, their squared difference is weighted
    per channel by a learned 1x1 conv, averaged over space, and summed over layers. Inputs are in [-1, 1];
    one-channel (grayscale) images are repeated to 3 channels. Returns shape (B, 1, 1, 1).

    Without loaded weights it is randomly initialised (only useful for tests). The module always stays in eval
    mode: it is a fixed metric, so ``tokenizer.train()`` must not switch on the heads' dropout.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scaling_layer = _ScalingLayer()
        self.net = _VGG16Features()
        for k, channels in enumerate(_LPIPS_CHANNELS):
            setattr(self, f"lin{k}", _LinearHead(channels))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        """Ignore ``mode``: a frozen metric must stay deterministic."""
        return super().train(False)

    @staticmethod
    def _unit_normalize(x: Tensor, eps: float = 1e-10) -> Tensor:
        return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape:
            raise ValueError(f"LPIPS inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
        if x.shape[1] == 1:
            x, y = x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)
        feats_x, feats_y = self.net(self.scaling_layer(x)), self.net(self.scaling_layer(y))
        total = x.new_zeros(x.shape[0], 1, 1, 1)
        for k, (fx, fy) in enumerate(zip(feats_x, feats_y, strict=True)):
            diff = (self._unit_normalize(fx) - self._unit_normalize(fy)).pow(2)
            total = total + getattr(self, f"lin{k}")(diff).mean(dim=(2, 3), keepdim=True)
        return total

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], *, key_prefix: str = "") -> LPIPS:
        """Build from LPIPS weights; ``lpips.``-prefixed and torchvision ``features.N.*`` keys are accepted.

        Every parameter is required; the scaling-layer buffers are optional (fixed constants).
        ``key_prefix`` only serves to name keys in error messages as the caller's dict spells them.
        """
        normalized = _normalize_lpips_keys(state)
        model = cls()
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        optional = {k for k in expected if k.startswith("scaling_layer.")}
        _check_layout(normalized, expected, optional=optional, what="LPIPS", key_prefix=key_prefix)
        model.load_state_dict(normalized, strict=False)  # strictness already checked, buffers optional
        return model

    @classmethod
    def from_pretrained(cls, source: WeightsSource) -> LPIPS:
        """Load from a state-dict file, several files (merged: e.g. VGG16 + LPIPS heads) or a mapping."""
        return cls.from_state_dict(_read_weights_source(source))


def _normalize_lpips_keys(state: Mapping[str, Any]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        name = key.removeprefix("lpips.")
        if name.startswith(
            "classifier."
        ):  # a full torchvision VGG16 file: its classifier is not part of LPIPS
            continue
        match = re.fullmatch(r"features\.(\d+)\.(weight|bias)", name)
        if match:
            layer = int(match[1])
            name = f"net.slice{_vgg_slice_of(layer)}.{layer}.{match[2]}"
        out[name] = _as_tensor(value, key)
    return out


def load_state_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors``, ``.npz`` or a torch pickle (``weights_only=True``)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    if p.suffix == ".npz":
        with np.load(p) as archive:
            return {k: torch.from_numpy(archive[k]) for k in archive.files}
    obj = torch.load(p, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{p} does not hold a state dict (got {type(obj).__name__})")
    return {str(k): _as_tensor(v, str(k)) for k, v in obj.items()}


def _read_weights_source(source: WeightsSource) -> dict[str, Tensor]:
    if isinstance(source, str | os.PathLike):
        return load_state_file(source)
    if isinstance(source, Mapping):
        return {str(k): _as_tensor(v, str(k)) for k, v in source.items()}
    merged: dict[str, Tensor] = {}
    for path in source:
        merged.update(load_state_file(path))
    return merged


# ----------------------------------------------------------------------------------------------- tokenizer


class TokenizerEncoding(NamedTuple):
    """Encoder output: ``z``, ``z_quantized`` (..., embed_dim, h, w) and ``tokens`` (..., h*w)."""

    z: Tensor
    z_quantized: Tensor
    tokens: Tensor


class TokenizerOutput(NamedTuple):
    """Training forward pass: latents and the reconstruction in the [-1, 1] domain."""

    z: Tensor
    z_quantized: Tensor
    reconstruction: Tensor


def _init_conv(module: nn.Module) -> None:
    """Orthogonal (ReLU gain) weights and zero biases, the reference init for encoder/decoder convs."""
    if isinstance(module, nn.Conv2d):
        nn.init.orthogonal_(module.weight, gain=nn.init.calculate_gain("relu"))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class Tokenizer(nn.Module):
    """VQ-VAE frame tokenizer (spec section 2): frames in [0, 1] <-> ``tokens_per_frame`` tokens per frame.

    ``perceptual_weights``: optional LPIPS weights (path, list of paths or mapping, see :class:`LPIPS`).
    Without them the perceptual loss is off; they cannot be downloaded here. When present, the LPIPS net is
    registered as ``lpips`` (frozen), as in reference checkpoints. ``initialize=False`` skips the (QR-heavy)
    reference init, for callers that overwrite every weight anyway.
    """

    def __init__(
        self,
        config: TokenizerConfig | None = None,
        *,
        perceptual_weights: WeightsSource | None = None,
        initialize: bool = True,
    ) -> None:
        super().__init__()
        self.config = config if config is not None else TokenizerConfig()
        c = self.config
        self.encoder = Encoder(c)
        self.pre_quant_conv = nn.Conv2d(c.z_channels, c.embed_dim, kernel_size=1)
        self.embedding = nn.Embedding(c.vocab_size, c.embed_dim)
        self.post_quant_conv = nn.Conv2d(c.embed_dim, c.z_channels, kernel_size=1)
        self.decoder = Decoder(c)
        self.register_module("lpips", None)
        if initialize:
            self.reset_parameters()
        if perceptual_weights is not None:
            self.load_perceptual_weights(perceptual_weights)

    def reset_parameters(self) -> None:
        """The reference init: orthogonal (ReLU gain) encoder/decoder convs with zero biases, codebook
        U(-1/V, 1/V); the pre/post-quant convs keep PyTorch's default init, as in the reference."""
        self.encoder.apply(_init_conv)
        self.decoder.apply(_init_conv)
        v = self.config.vocab_size
        nn.init.uniform_(self.embedding.weight, -1.0 / v, 1.0 / v)

    # -- perceptual net

    def load_perceptual_weights(self, source: WeightsSource | LPIPS) -> None:
        """Attach a frozen LPIPS net (from weights, or an already built :class:`LPIPS`)."""
        lpips = source if isinstance(source, LPIPS) else LPIPS.from_pretrained(source)
        self.lpips = lpips.to(self.embedding.weight.device)

    @property
    def has_perceptual(self) -> bool:
        return self.lpips is not None

    # -- domain conversion

    @staticmethod
    def preprocess(frames: Tensor) -> Tensor:
        """[0, 1] -> [-1, 1], the network's working domain."""
        return frames.mul(2).sub(1)

    @staticmethod
    def postprocess(y: Tensor, clamp: bool = True) -> Tensor:
        """[-1, 1] -> [0, 1]; clamped for display/imagination (the raw decoder output can leave the range)."""
        out = y.add(1).div(2)
        return out.clamp(0.0, 1.0) if clamp else out

    # -- latent-level API ([-1, 1] domain, any leading dims)

    def encode_latents(self, x: Tensor) -> TokenizerEncoding:
        """Encode (..., C, H, W) in [-1, 1]: pre-quant latents, nearest codes, raster-order tokens."""
        lead = x.shape[:-3]
        z = self.pre_quant_conv(self.encoder(x.reshape(-1, *x.shape[-3:])))
        b, e, h, w = z.shape
        with torch.no_grad():  # argmin is not differentiable; no graph needed for the distances
            flat = z.permute(0, 2, 3, 1).reshape(-1, e)
            codebook = self.embedding.weight
            dist = flat.pow(2).sum(dim=1, keepdim=True) + codebook.pow(2).sum(dim=1) - 2 * flat @ codebook.t()
            tokens = dist.argmin(dim=-1)
        z_q = self.embedding(tokens).view(b, h, w, e).permute(0, 3, 1, 2).contiguous()
        return TokenizerEncoding(
            z.reshape(*lead, e, h, w), z_q.reshape(*lead, e, h, w), tokens.reshape(*lead, h * w)
        )

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """(..., tokens_per_frame) token ids -> (..., embed_dim, h, w) quantized latents."""
        n, side = self.config.tokens_per_frame, self.config.latent_resolution
        if tokens.shape[-1] != n:
            raise ValueError(f"expected {n} tokens per frame, got shape {tuple(tokens.shape)}")
        z_q = self.embedding(tokens.long()).reshape(*tokens.shape[:-1], side, side, self.config.embed_dim)
        return z_q.movedim(-1, -3).contiguous()

    def decode_latents(self, z_q: Tensor) -> Tensor:
        """(..., embed_dim, h, w) -> reconstruction (..., out_ch, H, W) in the [-1, 1] domain (unclamped)."""
        lead = z_q.shape[:-3]
        rec = self.decoder(self.post_quant_conv(z_q.reshape(-1, *z_q.shape[-3:])))
        return rec.reshape(*lead, *rec.shape[1:])

    def forward(self, x: Tensor) -> TokenizerOutput:
        """Training pass on [-1, 1] input; the decoder sees z + sg(z_q - z) (straight-through estimator)."""
        z, z_q, _ = self.encode_latents(x)
        rec = self.decode_latents(z + (z_q - z).detach())
        return TokenizerOutput(z, z_q, rec)

    # -- frame-level API ([0, 1] domain)

    @torch.no_grad()
    def encode(self, frames: Tensor) -> Tensor:
        """Frames (..., C, H, W) in [0, 1] -> LongTensor (..., tokens_per_frame), grid raster order."""
        return self.encode_latents(self.preprocess(frames)).tokens

    def decode(self, tokens: Tensor, clamp: bool = True) -> Tensor:
        """Tokens (..., tokens_per_frame) -> frames (..., out_ch, H, W) in [0, 1] ((y + 1) / 2, clamped)."""
        return self.postprocess(self.decode_latents(self.embed_tokens(tokens)), clamp=clamp)

    @torch.no_grad()
    def encode_decode(self, frames: Tensor, clamp: bool = True) -> Tensor:
        """Reconstruct frames in [0, 1] through the codebook (no gradients)."""
        z_q = self.encode_latents(self.preprocess(frames)).z_quantized
        return self.postprocess(self.decode_latents(z_q), clamp=clamp)

    # -- losses

    def compute_loss(self, frames: Tensor, *, perceptual: bool | None = None) -> dict[str, Tensor]:
        """Tokenizer losses on frames (..., C, H, W) in [0, 1]; the training objective is their sum.

        * ``commitment_loss`` = mean (sg(z) - z_q)^2 + beta * mean (z - sg(z_q))^2 with beta = 1
          (codebook plus commitment term; z is the pre-quant-conv output);
        * ``reconstruction_loss`` = mean |x - x_hat| in the [-1, 1] domain;
        * ``perceptual_loss`` = batch mean of LPIPS(x, x_hat) in [-1, 1], when ``perceptual`` is true or, by
          default, whenever LPIPS weights are loaded.
        """
        use_perceptual = self.has_perceptual if perceptual is None else perceptual
        if use_perceptual and self.lpips is None:
            raise PerceptualWeightsUnavailable(_NO_WEIGHTS_MESSAGE)
        x = self.preprocess(frames.reshape(-1, *frames.shape[-3:]))
        z, z_q, rec = self(x)
        codebook = (z.detach() - z_q).pow(2).mean()
        commitment = (z - z_q.detach()).pow(2).mean()
        losses = {
            "commitment_loss": codebook + COMMITMENT_BETA * commitment,
            "reconstruction_loss": (x - rec).abs().mean(),
        }
        if use_perceptual:
            losses["perceptual_loss"] = self.lpips(x, rec).mean()
        return losses


# ----------------------------------------------------------------------------------------------- loading


def _as_tensor(value: Any, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise ValueError(f"state dict entry {name!r} is a {type(value).__name__}, not a tensor or array")


def _listing(items: Iterable[str]) -> str:
    items = list(items)
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def _check_layout(
    given: Mapping[str, Tensor],
    expected: Mapping[str, tuple[int, ...]],
    *,
    optional: set[str] | frozenset[str] = frozenset(),
    what: str,
    key_prefix: str = "",
) -> None:
    """Raise one ValueError naming every missing, unexpected and wrong-shape key, so a bad checkpoint is
    diagnosed in one go rather than one key at a time."""
    missing = [k for k in expected if k not in given and k not in optional]
    unexpected = [k for k in given if k not in expected]
    wrong = [
        f"{key_prefix}{k} (expected {list(expected[k])}, got {list(given[k].shape)})"
        for k in expected
        if k in given and tuple(given[k].shape) != tuple(expected[k])
    ]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {_listing(key_prefix + k for k in missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {_listing(key_prefix + k for k in unexpected)}")
    if wrong:
        parts.append(f"wrong shapes ({len(wrong)}): {_listing(wrong)}")
    raise ValueError(f"{what} state dict does not match the reference layout: " + "; ".join(parts))


def tokenizer_from_reference(
    state_dict: Mapping[str, Tensor | np.ndarray], config: TokenizerConfig | Mapping[str, Any]
) -> Tokenizer:
    """Build a :class:`Tokenizer` from reference-layout weights (torch tensors or numpy arrays).

    Names and shapes must match exactly, else a ValueError lists the missing, unexpected and wrong-shape keys.
    ``lpips.*`` keys (the frozen perceptual net a reference checkpoint carries) are optional: when present
    they must form a complete LPIPS and are loaded into ``tokenizer.lpips``, enabling the perceptual loss.
    """
    cfg = config if isinstance(config, TokenizerConfig) else TokenizerConfig.from_dict(config)
    tensors = {str(k): _as_tensor(v, str(k)) for k, v in state_dict.items()}
    lpips_state = {k: v for k, v in tensors.items() if k.startswith("lpips.")}
    main_state = {k: v for k, v in tensors.items() if not k.startswith("lpips.")}
    with torch.device("meta"):  # the layout alone, without allocating or initialising any weight
        expected = {k: tuple(v.shape) for k, v in Tokenizer(cfg, initialize=False).state_dict().items()}
    _check_layout(main_state, expected, what="tokenizer")
    tokenizer = Tokenizer(cfg, initialize=False)
    tokenizer.load_state_dict(main_state, strict=True)
    if lpips_state:
        stripped = {k.removeprefix("lpips."): v for k, v in lpips_state.items()}
        tokenizer.load_perceptual_weights(LPIPS.from_state_dict(stripped, key_prefix="lpips."))
    return tokenizer
