"""World-action model checkpoints: our safetensors format and the import of reference-layout weights.

Our format is one `.safetensors` file: the weights (online and target Q heads included, so training
resumes exactly) plus the model config and free-form metadata in its header (`jowa.weights.state_files`). The
attention backend is not saved: it is chosen when loading. Tokenizer files:
`jowa.weights.tokenizer_checkpoints`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from jowa.models.q_ensemble import QEnsemble
from jowa.models.token_layout import TokenLayout
from jowa.models.transformer import QKV_PARTS, AttentionBackend, fuse_qkv_keys
from jowa.models.world_action import JOWA, JOWAConfig
from jowa.weights.state_files import (
    CheckpointError,
    as_tensor,
    check_state_dict,
    load_safetensors,
    read_metadata,
    shapes,
    write_atomic,
)

FORMAT = "jowa-safetensors-v1"


def read_model_metadata(path: str | Path) -> dict[str, Any]:
    """The format tag, config and metadata of a model checkpoint, without loading weights."""
    return read_metadata(path, FORMAT)


def save_model(
    path: str | Path, model: JOWA, config: JOWAConfig, meta: Mapping[str, Any] | None = None
) -> None:
    """Write weights, config and JSON-serializable `meta` atomically (temp file, then rename)."""
    write_atomic(path, model, FORMAT, dataclasses.asdict(config), meta)


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
        return shapes(JOWA(config))


def load_model(
    path: str | Path, device: torch.device | str = "cpu", *, attention: AttentionBackend = "auto"
) -> tuple[JOWA, dict[str, Any]]:
    """(model in train mode, metadata) from a checkpoint written by `save_model`, with `attention`."""
    info = read_model_metadata(path)
    try:
        config = JOWAConfig(**info["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: bad JOWA config {info['config']}: {error}") from error
    # Checkpoints written before issue 19 hold separate query/key/value weights: stacked here.
    state = fuse_qkv_keys(load_safetensors(Path(path)))
    check_state_dict(state, _expected_shapes(config), what=str(path))
    return _assign(config, state, attention).to(device), info["meta"]


# ----------------------------------------------------------------------------------------- reference JOWA


def separate_qkv_shapes(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Parameter shapes with each fused `attn.qkv` entry as the separate query/key/value entries of the
    reference layout (which `fuse_qkv_keys` stacks back)."""
    separate = {}
    for name, shape in shapes.items():
        if ".attn.qkv." not in name:
            separate[name] = shape
            continue
        prefix, kind = name.split(".attn.qkv.")
        for part in QKV_PARTS:
            separate[f"{prefix}.attn.{part}.{kind}"] = (shape[0] // 3, *shape[1:])
    return separate


def reference_name_map(config: JOWAConfig) -> dict[str, str]:
    """Reference JOWA parameter name -> our name, for every parameter of a model with `config`; the
    transformer's names are ours but for the separate query/key/value, which the import stacks."""
    transformer = separate_qkv_shapes(_expected_shapes(config))
    names = {name: name for name in transformer if name.startswith("transformer.")}
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
    tensors = {str(k): as_tensor(v, str(k), "reference JOWA").clone() for k, v in state_dict.items()}
    names = reference_name_map(config)
    ours = separate_qkv_shapes(_expected_shapes(config))
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
    ours_named = {our_name: tensors[name] for name, our_name in names.items()}
    return _assign(config, fuse_qkv_keys(ours_named), attention)
