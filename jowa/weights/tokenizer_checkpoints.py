"""Tokenizer weights: our tokenizer files, reference-layout tokenizers and the LPIPS net's weights.

Apart from `jowa.weights.checkpoints` (the world-action model), so that the tokenizer's commands do not
depend on
the world model's code: editing the transformer reruns no tokenizer training.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from jowa.models.lpips import LPIPS, VGG16_SLICE_ENDS
from jowa.models.tokenizer import Tokenizer
from jowa.models.tokenizer_config import TokenizerConfig
from jowa.weights.state_files import (
    CheckpointError,
    as_tensor,
    check_state_dict,
    load_safetensors,
    load_state_file,
    read_metadata,
    shapes,
    write_atomic,
)

TOKENIZER_FORMAT = "jowa-tokenizer-safetensors-v1"

# LPIPS weights: a state file, several merged (e.g. torchvision VGG16 + LPIPS heads), or a mapping.
WeightsSource = str | os.PathLike | Sequence[str | os.PathLike] | Mapping[str, Any]

# LPIPS buffers that state files may leave out: fixed constants, not learned weights.
_LPIPS_CONSTANTS = ("scaling_layer.shift", "scaling_layer.scale")

# ----------------------------------------------------------------------------------------- LPIPS


def _lpips_state(state: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """`state` in our LPIPS names under `prefix`: ``lpips.`` stripped, torchvision's VGG16 ``features.N.*``
    moved into their slice and its classifier (no part of LPIPS) dropped."""
    out = {}
    for key, value in state.items():
        name = key.removeprefix("lpips.")
        match = re.fullmatch(r"features\.(\d+)\.(weight|bias)", name)
        if match:  # a layer past relu5_3 keeps its name and is reported as unexpected
            layer = int(match[1])
            slices = [k for k, end in enumerate(VGG16_SLICE_ENDS, start=1) if layer < end]
            name = f"net.slice{slices[0]}.{layer}.{match[2]}" if slices else name
        if not name.startswith("classifier."):
            out[prefix + name] = value
    return out


def load_lpips(source: WeightsSource) -> LPIPS:
    """A frozen LPIPS net with pretrained weights, for ``Tokenizer(config, perceptual=...)``.

    Keys may be ours, prefixed ``lpips.`` (a JOWA tokenizer checkpoint) or torchvision's VGG16
    ``features.N.*`` (with the LPIPS heads from another file of the list). Every parameter is required;
    the scaling-layer buffers are optional (fixed constants).
    """
    if isinstance(source, Mapping):
        what = "LPIPS weights"
        raw = {str(name): as_tensor(value, str(name), what) for name, value in source.items()}
    else:
        paths = [source] if isinstance(source, str | os.PathLike) else list(source)
        what = "LPIPS weights from " + " + ".join(str(path) for path in paths)
        raw = {name: value for path in paths for name, value in load_state_file(path).items()}
    state = _lpips_state(raw)
    with torch.device("meta"):
        expected = shapes(LPIPS())
    check_state_dict(state, expected, optional=_LPIPS_CONSTANTS, what=what)
    lpips = LPIPS()
    lpips.load_state_dict(state, strict=False)  # checked: only the scaling constants may be absent
    return lpips


# ----------------------------------------------------------------------------------------- tokenizer


def _build_tokenizer(state: Mapping[str, torch.Tensor], config: TokenizerConfig, what: str) -> Tokenizer:
    """A tokenizer holding `state` (reference layout, with an optional ``lpips.*`` net), checked in one go."""
    lpips = _lpips_state({k: v for k, v in state.items() if k.startswith("lpips.")}, prefix="lpips.")
    state = {**{k: v for k, v in state.items() if not k.startswith("lpips.")}, **lpips}
    with torch.device("meta"):  # the layout alone, without allocating or initialising any weight
        expected = shapes(Tokenizer(config, perceptual=LPIPS() if lpips else None, initialize=False))
    optional = [f"lpips.{name}" for name in _LPIPS_CONSTANTS]
    check_state_dict(
        state, expected, optional=optional, what=what + (" (with its LPIPS net)" if lpips else "")
    )
    tokenizer = Tokenizer(config, perceptual=LPIPS() if lpips else None, initialize=False)
    tokenizer.load_state_dict(state, strict=False)  # checked: only the LPIPS scaling constants may be absent
    return tokenizer


def tokenizer_from_reference(
    state_dict: Mapping[str, Any], config: TokenizerConfig | Mapping[str, Any]
) -> Tokenizer:
    """A :class:`Tokenizer` holding reference-layout weights (torch tensors or numpy arrays).

    ``lpips.*`` keys (the frozen perceptual net a reference checkpoint carries) are optional: when present
    they must form a complete LPIPS and are loaded into ``tokenizer.lpips``, enabling the perceptual loss.
    """
    cfg = config if isinstance(config, TokenizerConfig) else TokenizerConfig.from_dict(config)
    tensors = {str(k): as_tensor(v, str(k), "reference tokenizer") for k, v in state_dict.items()}
    return _build_tokenizer(tensors, cfg, "reference tokenizer")


def save_tokenizer(path: str | Path, tokenizer: Tokenizer, meta: Mapping[str, Any] | None = None) -> None:
    """Write a tokenizer (LPIPS weights included when it has them) in our format, atomically."""
    write_atomic(path, tokenizer, TOKENIZER_FORMAT, tokenizer.config.to_dict(), meta)


def load_tokenizer(path: str | Path, device: torch.device | str = "cpu") -> tuple[Tokenizer, dict[str, Any]]:
    """(tokenizer, metadata) from a file written by `save_tokenizer`."""
    info = read_metadata(path, expected_format=TOKENIZER_FORMAT)
    try:
        config = TokenizerConfig.from_dict(info["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: bad tokenizer config {info['config']}: {error}") from error
    tokenizer = _build_tokenizer(load_safetensors(Path(path)), config, str(path))
    return tokenizer.to(device), info["meta"]
