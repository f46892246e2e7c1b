"""Where the tokenizer's LPIPS weights come from: the named source `lpips`, or state files.

`tokenizer.perceptual_weights: lpips` (the paper's setting) assembles the network the paper's tokenizer
trains with from its two published parts: the LPIPS v0.1 linear heads that the `lpips` package ships in
its wheel (`lpips/weights/v0.1/vgg.pth`, found through the installed package's file list, without
importing it: it imports torchvision, which this project does not install), and torchvision's ImageNet
VGG16 backbone (`vgg16-397923af.pth`), downloaded once into torch's hub cache the way torchvision does
(`torch.hub.load_state_dict_from_url`, hash-checked). Offline, one line names the file to put there.
Any other value is a state file path (or several, merged), read by
`jowa.weights.tokenizer_checkpoints.load_lpips`.

Install the package without its dependencies (`pip install --no-deps lpips==0.1.4`; its torchvision
would replace this project's torch): only its weights file is read.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from urllib.error import URLError

import torch

from jowa.core.errors import JowaError, MissingInputError

LPIPS_SOURCE = "lpips"
LPIPS_HEADS = "lpips/weights/v0.1/vgg.pth"
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"


class PerceptualWeightsError(JowaError, RuntimeError):
    """The LPIPS weights of the named source are neither installed nor downloadable."""


def lpips_heads_file() -> Path:
    """The LPIPS v0.1 VGG heads inside the installed `lpips` package."""
    try:
        distribution = importlib.metadata.distribution("lpips")
    except importlib.metadata.PackageNotFoundError:
        raise PerceptualWeightsError(
            "tokenizer.perceptual_weights: lpips needs the lpips package's weights: "
            "pip install --no-deps lpips==0.1.4 (without --no-deps its torchvision replaces torch)"
        ) from None
    path = Path(str(distribution.locate_file(LPIPS_HEADS)))
    if not path.is_file():
        raise MissingInputError(f"{path}: the installed lpips package lacks its {LPIPS_HEADS}; reinstall it")
    return path


def vgg16_file(url: str | None = None) -> Path:
    """torchvision's ImageNet VGG16 weights in torch's hub cache, downloaded there on first use."""
    url = url or VGG16_URL
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not path.is_file():
        try:
            torch.hub.load_state_dict_from_url(url, map_location="cpu", check_hash=True, progress=False)
        except (URLError, OSError, RuntimeError) as error:
            raise PerceptualWeightsError(
                f"cannot download the VGG16 ImageNet weights {url} ({error}); offline, put the file at {path}"
            ) from None
    return path


def perceptual_source(value: str) -> str | list[Path]:
    """`tokenizer.perceptual_weights` as what `load_lpips` reads: the named source's two files, or
    the state file path as given."""
    if value == LPIPS_SOURCE:
        return [vgg16_file(), lpips_heads_file()]
    return value
