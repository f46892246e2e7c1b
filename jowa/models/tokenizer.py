"""JOWA's frame tokenizer: a VQ-VAE turning one 84x84 grayscale frame into 36 discrete tokens and back.

Written from the JOWA specification (section 2), not from the reference code. Module and parameter
names follow the reference layout on purpose, so that a reference tokenizer state dict
(``encoder.*``, ``pre_quant_conv.*``, ``embedding.weight``, ``post_quant_conv.*``, ``decoder.*``,
optionally ``lpips.*``) loads with ``load_state_dict(strict=True)`` and no renaming table. The
hyper-parameters live in :mod:`jowa.models.tokenizer_config`, the encoder and decoder in
:mod:`jowa.models.autoencoder`, the perceptual network in
:mod:`jowa.models.lpips`; reading weights from files is :mod:`jowa.weights.checkpoints`' job.

Frames enter and leave the public API in [0, 1]; internally the network works in [-1, 1].
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from jowa.core.errors import JowaError
from jowa.models.autoencoder import Decoder, Encoder
from jowa.models.lpips import LPIPS
from jowa.models.tokenizer_config import TokenizerConfig

__all__ = [
    "COMMITMENT_BETA",
    "PerceptualWeightsUnavailable",
    "Tokenizer",
    "TokenizerEncoding",
    "TokenizerOutput",
]

COMMITMENT_BETA = 1.0
"""Weight of the commitment term ||z - sg(z_q)||^2; the reference uses 1.0 (VQ-VAE paper), not 0.25."""

_NO_WEIGHTS_MESSAGE = (
    "the LPIPS perceptual loss needs pretrained weights (VGG16 features + LPIPS linear heads). Load them "
    "with jowa.weights.tokenizer_checkpoints.load_lpips("
    "jowa.weights.perceptual_weights.perceptual_source('lpips')) (the "
    "lpips package's heads + torchvision's VGG16, fetched once into torch's hub cache) or "
    "load_lpips(PATH), and pass the result as Tokenizer(config, perceptual=...) or "
    "tokenizer.load_perceptual(...); PATH (or a list of "
    "paths, merged) is a torch.save / .safetensors / .npz file with keys 'net.sliceK.N.{weight,bias}' and "
    "'linK.model.1.weight' (optionally prefixed 'lpips.', as in a JOWA tokenizer checkpoint; torchvision "
    "'features.N.*' VGG16 keys are accepted too). A reference checkpoint that contains 'lpips.*' keys "
    "provides them via jowa.weights.tokenizer_checkpoints.tokenizer_from_reference. "
    "Or call compute_loss(..., perceptual=False)."
)


class PerceptualWeightsUnavailable(JowaError, RuntimeError):
    """The perceptual loss was requested but no LPIPS net was given."""


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

    ``perceptual``: an optional LPIPS net with pretrained weights
    (``jowa.weights.tokenizer_checkpoints.load_lpips``); without it the perceptual loss is off. When
    present it is registered as ``lpips`` (frozen), as in reference checkpoints. ``initialize=False``
    skips the (QR-heavy) reference init, for callers that overwrite every weight anyway.
    """

    def __init__(
        self,
        config: TokenizerConfig | None = None,
        *,
        perceptual: LPIPS | None = None,
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
        self.register_module("lpips", None)  # the perceptual net, when given
        if initialize:
            self.reset_parameters()
        if perceptual is not None:
            self.load_perceptual(perceptual)

    def reset_parameters(self) -> None:
        """The reference init: orthogonal (ReLU gain) encoder/decoder convs with zero biases, codebook
        U(-1/V, 1/V); the pre/post-quant convs keep PyTorch's default init, as in the reference."""
        self.encoder.apply(_init_conv)
        self.decoder.apply(_init_conv)
        v = self.config.vocab_size
        nn.init.uniform_(self.embedding.weight, -1.0 / v, 1.0 / v)

    # -- perceptual net

    def load_perceptual(self, lpips: LPIPS) -> None:
        """Attach a frozen LPIPS net, moved to the tokenizer's device, enabling the perceptual loss."""
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
          default, whenever an LPIPS net is attached.
        """
        x = self.preprocess(frames.reshape(-1, *frames.shape[-3:]))
        return self.loss_terms(x, self(x), perceptual=perceptual)

    def loss_terms(
        self, x: Tensor, output: TokenizerOutput, *, perceptual: bool | None = None
    ) -> dict[str, Tensor]:
        """`compute_loss` from a forward pass already made on x in [-1, 1]: a DistributedDataParallel
        wrapper must run the forward itself for its gradient averaging to happen (spec gotcha 21)."""
        use_perceptual = self.has_perceptual if perceptual is None else perceptual
        if use_perceptual and self.lpips is None:
            raise PerceptualWeightsUnavailable(_NO_WEIGHTS_MESSAGE)
        z, z_q, rec = output
        codebook = (z.detach() - z_q).pow(2).mean()
        commitment = (z - z_q.detach()).pow(2).mean()
        losses = {
            "commitment_loss": codebook + COMMITMENT_BETA * commitment,
            "reconstruction_loss": (x - rec).abs().mean(),
        }
        if use_perceptual:
            losses["perceptual_loss"] = self.lpips(x, rec).mean()
        return losses
