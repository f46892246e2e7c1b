"""The LPIPS perceptual distance (Zhang et al. 2018), VGG16 variant, used by the tokenizer's perceptual loss.

Written from the paper. Parameter names (``net.sliceK.N.*``, ``linK.model.1.weight``,
``scaling_layer.{shift,scale}``) follow the layout of reference tokenizer checkpoints, which carry the
network under ``lpips.``. The module only defines the network: its pretrained weights are read by
``jowa.weights.tokenizer_checkpoints.load_lpips``, from the named source ``lpips``
(``jowa.weights.perceptual_weights``)
or from state files.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["LPIPS", "VGG16_SLICE_ENDS"]

_VGG16_LAYOUT: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M")
_VGG16_LAYOUT += (512, 512, 512)
VGG16_SLICE_ENDS = (4, 9, 16, 23, 30)
"""torchvision's flat VGG16 ``features`` indices ending slices 1-5 (after relu1_2 ... relu5_3): layer N of
torchvision's ``features.N.*`` is layer N of the first slice whose end exceeds N."""
_LPIPS_CHANNELS = (64, 128, 256, 512, 512)
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)  # input scaling constants of the LPIPS paper's VGG variant
_LPIPS_SCALE = (0.458, 0.448, 0.450)


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
        for k, end in enumerate(VGG16_SLICE_ENDS, start=1):
            sl = nn.Sequential()
            for idx in range(start, end):
                sl.add_module(str(idx), layers[idx])
            setattr(self, f"slice{k}", sl)
            start = end

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for k in range(1, len(VGG16_SLICE_ENDS) + 1):
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


class LPIPS(nn.Module):
    """Learned Perceptual Image Patch Similarity (Zhang et al. 2018), VGG16 variant, frozen.

    Written from the paper: VGG16 features at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of both images
    (after the fixed scaling layer) are unit-normalised over channels, their squared difference is weighted
    per channel by a learned 1x1 conv, averaged over space, and summed over layers. Inputs are in [-1, 1];
    one-channel (grayscale) images are repeated to 3 channels. Returns shape (B, 1, 1, 1).

    A new module is randomly initialised (only useful for tests);
    ``jowa.weights.tokenizer_checkpoints.load_lpips``
    builds one with pretrained weights. Its weights are frozen, but it follows the tokenizer's train/eval
    mode as the reference's does: its heads' dropout (p = 0.5) is on while the tokenizer trains (gotcha 24).
    """

    def __init__(self) -> None:
        super().__init__()
        self.scaling_layer = _ScalingLayer()
        self.net = _VGG16Features()
        for k, channels in enumerate(_LPIPS_CHANNELS):
            setattr(self, f"lin{k}", _LinearHead(channels))
        self.requires_grad_(False)
        self.eval()

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
