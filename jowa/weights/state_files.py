"""Reading and writing weight files: state files of any layout, our safetensors header, one error type.

All file reading of models happens through here, so that every bad file or state dict fails the same way:
a `CheckpointError` naming the file and what was expected, and for a state dict of the wrong layout one
message listing every missing, unexpected and wrong-shaped key (`check_state_dict`). Our format is one
`.safetensors` file whose JSON header holds a format tag, the config (`jowa_config`) and free-form
metadata (`jowa_meta`): any safetensors reader, or `read_metadata`, shows them without loading a tensor.
"""

from __future__ import annotations

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

from jowa.core.atomic import atomic_file
from jowa.core.errors import JowaError, MissingInputError

# What the parsers raise on a corrupt, truncated or foreign file.
UNREADABLE = (
    OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, zlib.error,
    SafetensorError,
)  # fmt: skip


class CheckpointError(JowaError, ValueError):
    """A checkpoint or state file is unreadable, of another format, or does not fit the model."""


def reason(error: BaseException) -> str:
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


def shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}


# ----------------------------------------------------------------------------------------- state files


def as_tensor(value: Any, name: str, source: object) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray) and value.dtype != object:
        return torch.from_numpy(np.ascontiguousarray(value))
    raise CheckpointError(
        f"{source}: state dict entry {name!r} is of type {type(value).__name__}, not a tensor or number array"
    )


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except UNREADABLE as error:
        raise CheckpointError(
            f"{path}: not a readable .safetensors file ({reason(error)}); expected a safetensors state dict"
        ) from error


def load_state_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from `.safetensors`, `.npz` or a torch pickle (read with ``weights_only=True``).

    A pickle holding ``{"state_dict": ...}`` (a training checkpoint) gives that inner dict.
    """
    p = Path(path)
    if not p.exists():
        raise MissingInputError(f"state file not found: {p}")
    if p.suffix == ".safetensors":
        state: Any = load_safetensors(p)
    else:
        try:
            if p.suffix == ".npz":
                with np.load(p) as archive:
                    state = {name: archive[name] for name in archive.files}
            else:
                state = torch.load(p, map_location="cpu", weights_only=True)
        except UNREADABLE as error:
            kind = ".npz archive" if p.suffix == ".npz" else "torch.save file (read with weights_only=True)"
            raise CheckpointError(
                f"{p}: not a readable {kind} ({reason(error)}); expected a state dict of named tensors"
            ) from error
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not state:
        found = f"a {type(state).__name__}" if state else "nothing"
        raise CheckpointError(f"{p}: holds {found}, not a state dict (a mapping of names to tensors)")
    return {str(name): as_tensor(value, str(name), p) for name, value in state.items()}


def read_metadata(path: str | Path, expected_format: str) -> dict[str, Any]:
    """The format tag, config and metadata of a checkpoint, without loading weights."""
    if not Path(path).exists():
        raise MissingInputError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as checkpoint:
            header = checkpoint.metadata() or {}
    except UNREADABLE as error:
        raise CheckpointError(
            f"{path}: not a readable .safetensors file ({reason(error)}); expected a JOWA checkpoint"
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


def write_atomic(
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
