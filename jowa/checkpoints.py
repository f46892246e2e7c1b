"""Checkpoints: our safetensors format, state files, import of reference-layout weights, parameter counts.

Our format is one `.safetensors` file: the weights (online and target Q heads included, so training
resumes exactly) plus, in the file's JSON header metadata, the model config (`jowa_config`) and free-form
metadata (`jowa_meta`), both JSON strings. Any safetensors reader, or `read_metadata`, shows them without
loading a tensor. The attention backend is not saved: it is chosen when loading.

All file reading of the models happens here, so that every bad file or state dict fails the same way: a
`CheckpointError` naming the file and what was expected, and for a state dict of the wrong layout one
message listing every missing, unexpected and wrong-shaped key (`check_state_dict`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import zipfile
import zlib
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from jowa.atomic import atomic_file
from jowa.errors import JowaError, MissingInputError
from jowa.models.lpips import LPIPS, VGG16_SLICE_ENDS
from jowa.models.tokenizer import Tokenizer, TokenizerConfig
from jowa.models.transformer import AttentionBackend
from jowa.models.world_action import JOWA, JOWAConfig, QEnsemble, TokenLayout

FORMAT = "jowa-safetensors-v1"
TOKENIZER_FORMAT = "jowa-tokenizer-safetensors-v1"

# LPIPS weights: a state file, several merged (e.g. torchvision VGG16 + LPIPS heads), or a mapping.
WeightsSource = str | os.PathLike | Sequence[str | os.PathLike] | Mapping[str, Any]

# LPIPS buffers that state files may leave out: fixed constants, not learned weights.
_LPIPS_CONSTANTS = ("scaling_layer.shift", "scaling_layer.scale")

# What the parsers raise on a corrupt, truncated or foreign file.
_UNREADABLE = (
    OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, zlib.error,
    SafetensorError,
)  # fmt: skip


class CheckpointError(JowaError, ValueError):
    """A checkpoint or state file is unreadable, of another format, or does not fit the model."""


def _reason(error: BaseException) -> str:
    """A parser's message cut to its first sentence: torch's unpickling errors run to paragraphs of advice."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    return f"{type(error).__name__}: {text.split('. ')[0].splitlines()[0]}" if text else type(error).__name__


def check_state_dict(
    state: Mapping[str, torch.Tensor],
    expected: Mapping[str, Sequence[int]],
    *,
    what: str,
    optional: Collection[str] = (),
    values: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Raise one CheckpointError listing every missing, unexpected and wrong-shaped key of `state`.

    `expected` maps each key to its shape; keys in `optional` may be absent; `values` holds entries whose
    contents, not just shapes, are fixed (the reference's index buffers). Diagnosing a bad checkpoint in one
    go beats fixing it one key at a time.
    """
    missing = [key for key in expected if key not in state and key not in optional]
    unexpected = [key for key in state if key not in expected]
    wrong_shape = [
        f"{key} (expected {list(shape)}, got {list(state[key].shape)})"
        for key, shape in expected.items()
        if key in state and tuple(state[key].shape) != tuple(shape)
    ]
    wrong_values = [
        f"{key} (expected {value.tolist()})"
        for key, value in (values or {}).items()
        if key in state
        and tuple(state[key].shape) == tuple(value.shape)
        and not torch.equal(state[key].cpu().to(value.dtype), value)
    ]
    found = {
        "missing keys": missing,
        "unexpected keys": unexpected,
        "wrong shapes": wrong_shape,
        "wrong values": wrong_values,
    }
    problems = [f"{label} ({len(items)}): {', '.join(items)}" for label, items in found.items() if items]
    if problems:
        raise CheckpointError(f"{what}: the state dict does not fit the model: " + "; ".join(problems))


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


# ----------------------------------------------------------------------------------------- state files


def _as_tensor(value: Any, name: str, source: object) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray) and value.dtype != object:
        return torch.from_numpy(np.ascontiguousarray(value))
    raise CheckpointError(
        f"{source}: state dict entry {name!r} is of type {type(value).__name__}, not a tensor or number array"
    )


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except _UNREADABLE as error:
        raise CheckpointError(
            f"{path}: not a readable .safetensors file ({_reason(error)}); expected a safetensors state dict"
        ) from error


def load_state_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from `.safetensors`, `.npz` or a torch pickle (read with ``weights_only=True``).

    A pickle holding ``{"state_dict": ...}`` (a training checkpoint) gives that inner dict.
    """
    p = Path(path)
    if not p.exists():
        raise MissingInputError(f"state file not found: {p}")
    if p.suffix == ".safetensors":
        state: Any = _load_safetensors(p)
    else:
        try:
            if p.suffix == ".npz":
                with np.load(p) as archive:
                    state = {name: archive[name] for name in archive.files}
            else:
                state = torch.load(p, map_location="cpu", weights_only=True)
        except _UNREADABLE as error:
            kind = ".npz archive" if p.suffix == ".npz" else "torch.save file (read with weights_only=True)"
            raise CheckpointError(
                f"{p}: not a readable {kind} ({_reason(error)}); expected a state dict of named tensors"
            ) from error
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not state:
        found = f"a {type(state).__name__}" if state else "nothing"
        raise CheckpointError(f"{p}: holds {found}, not a state dict (a mapping of names to tensors)")
    return {str(name): _as_tensor(value, str(name), p) for name, value in state.items()}


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
        raw = {str(name): _as_tensor(value, str(name), what) for name, value in source.items()}
    else:
        paths = [source] if isinstance(source, str | os.PathLike) else list(source)
        what = "LPIPS weights from " + " + ".join(str(path) for path in paths)
        raw = {name: value for path in paths for name, value in load_state_file(path).items()}
    state = _lpips_state(raw)
    with torch.device("meta"):
        expected = _shapes(LPIPS())
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
        expected = _shapes(Tokenizer(config, perceptual=LPIPS() if lpips else None, initialize=False))
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
    tensors = {str(k): _as_tensor(v, str(k), "reference tokenizer") for k, v in state_dict.items()}
    return _build_tokenizer(tensors, cfg, "reference tokenizer")


# ----------------------------------------------------------------------------------------- our format


def read_metadata(path: str | Path, expected_format: str = FORMAT) -> dict[str, Any]:
    """The format tag, config and metadata of a checkpoint, without loading weights."""
    if not Path(path).exists():
        raise MissingInputError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as checkpoint:
            header = checkpoint.metadata() or {}
    except _UNREADABLE as error:
        raise CheckpointError(
            f"{path}: not a readable .safetensors file ({_reason(error)}); expected a JOWA checkpoint"
        ) from error
    if header.get("format") != expected_format:
        raise CheckpointError(
            f"{path}: not a JOWA checkpoint of format {expected_format!r} (found {header.get('format')!r})"
        )
    try:
        config, meta = json.loads(header["jowa_config"]), json.loads(header["jowa_meta"])
    except (KeyError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: header entry jowa_config or jowa_meta absent or not JSON") from error
    return {"format": expected_format, "config": config, "meta": meta}


def _write_atomic(
    path: str | Path, module: nn.Module, kind: str, config: Mapping[str, Any], meta: Mapping[str, Any] | None
) -> None:
    """Weights plus a JSON header, written to a temp file renamed into place."""
    header = {
        "format": kind,
        "jowa_config": json.dumps(dict(config)),
        "jowa_meta": json.dumps(dict(meta or {})),
    }
    tensors = {name: tensor.detach().contiguous() for name, tensor in module.state_dict().items()}
    with atomic_file(Path(path)) as tmp:
        save_file(tensors, str(tmp), metadata=header)


def save_model(
    path: str | Path, model: JOWA, config: JOWAConfig, meta: Mapping[str, Any] | None = None
) -> None:
    """Write weights, config and JSON-serializable `meta` atomically (temp file, then rename)."""
    _write_atomic(path, model, FORMAT, dataclasses.asdict(config), meta)


def save_tokenizer(path: str | Path, tokenizer: Tokenizer, meta: Mapping[str, Any] | None = None) -> None:
    """Write a tokenizer (LPIPS weights included when it has them) in our format, atomically."""
    _write_atomic(path, tokenizer, TOKENIZER_FORMAT, tokenizer.config.to_dict(), meta)


def load_tokenizer(path: str | Path, device: torch.device | str = "cpu") -> tuple[Tokenizer, dict[str, Any]]:
    """(tokenizer, metadata) from a file written by `save_tokenizer`."""
    info = read_metadata(path, expected_format=TOKENIZER_FORMAT)
    try:
        config = TokenizerConfig.from_dict(info["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: bad tokenizer config {info['config']}: {error}") from error
    tokenizer = _build_tokenizer(_load_safetensors(Path(path)), config, str(path))
    return tokenizer.to(device), info["meta"]


def _assign(config: JOWAConfig, state_dict: Mapping[str, torch.Tensor], attention: AttentionBackend) -> JOWA:
    """Build a model without initializing it (meta device) and adopt the given float32 tensors."""
    with torch.device("meta"):
        model = JOWA(config, attention=attention)
    state = {
        name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in state_dict.items()
    }
    model.load_state_dict(state, strict=True, assign=True)
    model.q_target_head.requires_grad_(False)
    return model.train()


def _expected_shapes(config: JOWAConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return _shapes(JOWA(config))


def load_model(
    path: str | Path, device: torch.device | str = "cpu", *, attention: AttentionBackend = "auto"
) -> tuple[JOWA, dict[str, Any]]:
    """(model in train mode, metadata) from a checkpoint written by `save_model`, with `attention`."""
    info = read_metadata(path)
    try:
        config = JOWAConfig(**info["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: bad JOWA config {info['config']}: {error}") from error
    state = _load_safetensors(Path(path))
    check_state_dict(state, _expected_shapes(config), what=str(path))
    return _assign(config, state, attention).to(device), info["meta"]


# ----------------------------------------------------------------------------------------- reference JOWA


def reference_name_map(config: JOWAConfig) -> dict[str, str]:
    """Reference JOWA parameter name -> our name, for every parameter of a model with `config`."""
    names = {name: name for name in _expected_shapes(config) if name.startswith("transformer.")}
    names |= {
        "pos_emb.weight": "position_embedding.weight",
        "embedder.embedding_tables.0.weight": "action_embedding.weight",
        "embedder.embedding_tables.1.weight": "observation_embedding.weight",
    }
    if config.use_task_embed:
        names["task_emb.embedding_tables.0.weight"] = "task_embedding_action.weight"
        names["task_emb.embedding_tables.1.weight"] = "task_embedding_observation.weight"
    heads = {"observations": "observation_head", "rewards": "reward_head", "ends": "end_head"}
    for reference, ours in heads.items():
        for layer in (0, 2):
            for kind in ("weight", "bias"):
                names[f"head_{reference}.head_module.{layer}.{kind}"] = f"{ours}.{layer}.{kind}"
    for reference, ours in (("head_q", "q_head"), ("head_q_target", "q_target_head")):
        for index, name in enumerate(QEnsemble.PARAMETER_NAMES):
            names[f"{reference}.head_module.params.{index}"] = f"{ours}.{name}"
    return names


def from_reference(
    state_dict: Mapping[str, Any],
    arch: str | Mapping[str, Any],
    *,
    attention: AttentionBackend = "auto",
    **overrides: Any,
) -> JOWA:
    """A JOWA model holding the weights of a reference-layout state dict (e.g. a released checkpoint).

    `arch` is a size name or a mapping (see JOWAConfig.from_arch) and fixes the expected names and
    shapes. The reference's `*.indices` buffers, each head's positions in a full window, carry no weights
    but must hold the positions our layout computes.
    """
    config = JOWAConfig.from_arch(arch, **overrides)
    # Copies, so that the model never shares memory with the caller's arrays.
    tensors = {str(k): _as_tensor(v, str(k), "reference JOWA").clone() for k, v in state_dict.items()}
    names = reference_name_map(config)
    ours = _expected_shapes(config)
    layout = TokenLayout.build(0, config.max_tokens, config.tokens_per_block, torch.device("cpu"))
    indices = {
        "head_observations.indices": layout.obs_head,
        "head_rewards.indices": layout.action,
        "head_ends.indices": layout.action,
        "head_q.indices": layout.q,
        "head_q_target.indices": layout.q,
    }
    expected = {name: ours[our_name] for name, our_name in names.items()}
    expected |= {name: tuple(value.shape) for name, value in indices.items()}
    label = arch if isinstance(arch, str) else json.dumps(dict(arch))
    check_state_dict(tensors, expected, values=indices, what=f"reference JOWA {label}")
    return _assign(config, {our_name: tensors[name] for name, our_name in names.items()}, attention)
