"""Checkpoints: our safetensors format, import of reference-layout JOWA weights, parameter counts.

Our format is one `.safetensors` file: the weights (online and target Q heads included, so training
resumes exactly) plus, in the file's JSON header metadata, the model config (`jowa_config`) and free-form
metadata (`jowa_meta`), both JSON strings. Any safetensors reader, or `read_metadata`, shows them without
loading a tensor.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from jowa.atomic import atomic_file
from jowa.models.tokenizer import Tokenizer, TokenizerConfig, tokenizer_from_reference
from jowa.models.world_action import JOWA, JOWAConfig, QEnsemble, TokenLayout

__all__ = [
    "count_parameters",
    "from_reference",
    "load_model",
    "load_tokenizer",
    "save_model",
    "save_tokenizer",
    "tokenizer_from_reference",
]

FORMAT = "jowa-safetensors-v1"
TOKENIZER_FORMAT = "jowa-tokenizer-safetensors-v1"

# Spec 2.8: the reference tokenizer module, which registers the frozen LPIPS VGG16, and its trainable part.
REFERENCE_TOKENIZER_PARAMETERS = 18_763_649
TOKENIZER_TRAINABLE_PARAMETERS = 4_047_489


def read_metadata(path: str | Path, expected_format: str = FORMAT) -> dict[str, Any]:
    """The format tag, config and metadata of a checkpoint, without loading weights."""
    with safe_open(str(path), framework="pt") as checkpoint:
        header = checkpoint.metadata() or {}
    if header.get("format") != expected_format:
        raise ValueError(
            f"{path}: not a JOWA checkpoint of format {expected_format!r} (found {header.get('format')!r})"
        )
    return {
        "format": expected_format,
        "config": json.loads(header["jowa_config"]),
        "meta": json.loads(header["jowa_meta"]),
    }


def _write_atomic(path: Path, tensors: Mapping[str, torch.Tensor], header: dict[str, str]) -> None:
    with atomic_file(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(tmp), metadata=header)


def save_model(
    path: str | Path, model: JOWA, config: JOWAConfig, meta: Mapping[str, Any] | None = None
) -> None:
    """Write weights, config and JSON-serializable `meta` atomically (temp file, then rename)."""
    header = {
        "format": FORMAT,
        "jowa_config": json.dumps(dataclasses.asdict(config)),
        "jowa_meta": json.dumps(dict(meta or {})),
    }
    _write_atomic(Path(path), model.state_dict(), header)


def save_tokenizer(path: str | Path, tokenizer: Tokenizer, meta: Mapping[str, Any] | None = None) -> None:
    """Write a tokenizer (LPIPS weights included when it has them) in our format, atomically."""
    header = {
        "format": TOKENIZER_FORMAT,
        "jowa_config": json.dumps(tokenizer.config.to_dict()),
        "jowa_meta": json.dumps(dict(meta or {})),
    }
    _write_atomic(Path(path), tokenizer.state_dict(), header)


def load_tokenizer(path: str | Path, device: torch.device | str = "cpu") -> tuple[Tokenizer, dict[str, Any]]:
    """(tokenizer, metadata) from a file written by `save_tokenizer`."""
    info = read_metadata(path, expected_format=TOKENIZER_FORMAT)
    state = load_file(str(path), device=str(device))
    tokenizer = Tokenizer(TokenizerConfig.from_dict(info["config"]), initialize=False)
    lpips = {k: v for k, v in state.items() if k.startswith("lpips.")}
    tokenizer.load_state_dict({k: v for k, v in state.items() if k not in lpips}, strict=True)
    if lpips:
        tokenizer.load_perceptual_weights(lpips)
    return tokenizer, info["meta"]


def _assign(config: JOWAConfig, state_dict: Mapping[str, torch.Tensor]) -> JOWA:
    """Build a model without initializing it (meta device) and adopt the given float32 tensors."""
    with torch.device("meta"):
        model = JOWA(config)
    state = {
        name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in state_dict.items()
    }
    model.load_state_dict(state, strict=True, assign=True)
    model.q_target_head.requires_grad_(False)
    return model.train()


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[JOWA, dict[str, Any]]:
    """(model in train mode, metadata) from a checkpoint written by `save_model`."""
    info = read_metadata(path)
    model = _assign(JOWAConfig(**info["config"]), load_file(str(path), device=str(device)))
    return model, info["meta"]


def reference_name_map(config: JOWAConfig) -> dict[str, str]:
    """Reference JOWA parameter name -> our name, for every parameter of a model with `config`."""
    with torch.device("meta"):
        backbone = JOWA(config).transformer
    names = {f"transformer.{name}": f"transformer.{name}" for name, _ in backbone.named_parameters()}
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


def _reference_indices(config: JOWAConfig) -> dict[str, torch.Tensor]:
    """The reference's `*.indices` buffers: each head's positions in a full window."""
    layout = TokenLayout.build(0, config.max_tokens, config.tokens_per_block, torch.device("cpu"))
    return {
        "head_observations.indices": layout.obs_head,
        "head_rewards.indices": layout.action,
        "head_ends.indices": layout.action,
        "head_q.indices": layout.q,
        "head_q_target.indices": layout.q,
    }


def from_reference(state_dict: Mapping[str, Any], arch: str | Mapping[str, Any], **overrides: Any) -> JOWA:
    """A JOWA model holding the weights of a reference-layout state dict (e.g. a released checkpoint).

    `arch` is a size name or a mapping (see JOWAConfig.from_arch) and fixes the expected names and
    shapes. The `*.indices` buffers must hold the positions our layout computes; they carry no weights.
    Raises ValueError naming every missing, unexpected or wrong-shaped entry.
    """
    config = JOWAConfig.from_arch(arch, **overrides)
    # Copies, so that the model never shares memory with the caller's arrays.
    tensors = {name: torch.as_tensor(value).clone() for name, value in state_dict.items()}
    names = reference_name_map(config)
    with torch.device("meta"):
        expected_shapes = {name: tuple(tensor.shape) for name, tensor in JOWA(config).state_dict().items()}
    indices = _reference_indices(config)
    missing = sorted(set(names) - set(tensors)) + sorted(set(indices) - set(tensors))
    unexpected = sorted(set(tensors) - set(names) - set(indices))
    wrong_shape = [
        f"{name}: {tuple(tensors[name].shape)} instead of {expected_shapes[ours]}"
        for name, ours in names.items()
        if name in tensors and tuple(tensors[name].shape) != expected_shapes[ours]
    ]
    wrong_shape += [
        f"{name}: not the positions {value.tolist()} of the {config.tokens_per_block}-token block layout"
        for name, value in indices.items()
        if name in tensors
        and (tensors[name].shape != value.shape or not torch.equal(tensors[name].cpu().long(), value))
    ]
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"state dict does not match reference JOWA {arch if isinstance(arch, str) else dict(arch)}: "
            f"missing {missing}, unexpected {unexpected}, wrong shape or values {wrong_shape}"
        )
    return _assign(config, {ours: tensors[name] for name, ours in names.items()})


def count_parameters(model: JOWA, tokenizer: nn.Module | None = None) -> dict[str, int]:
    """Parameter counts in the reference's naming convention and of what actually trains (spec 3.5).

    The paper's size names count every registered parameter: the JOWA module with its frozen target Q
    copy plus the tokenizer module with its frozen LPIPS VGG16. Without `tokenizer` the reference
    tokenizer's counts (spec 2.8) are used.
    """
    jowa_total = sum(parameter.numel() for parameter in model.parameters())
    jowa_trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    if tokenizer is None:
        tokenizer_total, tokenizer_trainable = REFERENCE_TOKENIZER_PARAMETERS, TOKENIZER_TRAINABLE_PARAMETERS
    else:
        tokenizer_total = sum(parameter.numel() for parameter in tokenizer.parameters())
        tokenizer_trainable = sum(p.numel() for p in tokenizer.parameters() if p.requires_grad)
    return {
        "jowa_module": jowa_total,
        "jowa_trainable": jowa_trainable,
        "q_head": sum(parameter.numel() for parameter in model.q_head.parameters()),
        "tokenizer_module": tokenizer_total,
        "tokenizer_trainable": tokenizer_trainable,
        "reference_name": jowa_total + tokenizer_total,
        "trainable_total": jowa_trainable + tokenizer_trainable,
    }
