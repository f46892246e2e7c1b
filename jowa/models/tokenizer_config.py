"""The tokenizer's hyper-parameters, apart from its networks, so that both import them.

`jowa.models.autoencoder` builds its encoder and decoder from a `TokenizerConfig` and
`jowa.models.tokenizer` composes them; with the config in either of the two, each would import the other.
The first downsampling scale lives here too: it decides which resolutions the config accepts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FIRST_SCALE = 7
"""Scale of the encoder's first downsample and the decoder's first (lowest-res) upsample: 84 = 7*2*6."""


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
                f"{self.total_downsampling} (x{FIRST_SCALE} then x2 per further level), so the decoder "
                "could not reproduce the input size"
            )

    @property
    def num_levels(self) -> int:
        return len(self.ch_mult)

    @property
    def total_downsampling(self) -> int:
        return FIRST_SCALE * 2 ** (self.num_levels - 2) if self.num_levels > 1 else 1

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
