"""The JOWA world-action model: a causal transformer over observation/action tokens with four heads.

Sequence layout (spec 3.1): a step is a block of 37 tokens, slots j = 0..35 the 6x6 observation tokens of
a frame in raster order and j = 36 the action; 8 steps make the 296-token window. Heads (spec 3.4) read
the final-LN hidden states:

- observation head at every slot except j = 35 (j = 0..34 predict token j+1, j = 36 the next frame's 0);
- reward (sign classes) and termination heads at the action slot j = 36;
- the distributional Q-head ensemble (`jowa.models.q_ensemble`) at j = 35, after the whole frame and
  before the action;
- a frozen target copy of the Q head applied in the same pass to the detached hidden states (there is no
  target transformer; spec gotcha 6).

Difference from the reference (spec gotcha 20): the reference Q ensemble keeps its dropout active in
eval mode; here every dropout, the ensemble's included, is off in eval mode, and the target head is
always in eval mode.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from jowa.models.q_ensemble import QEnsemble
from jowa.models.token_layout import TokenLayout
from jowa.models.transformer import AttentionBackend, KVCache, Transformer, TransformerConfig

ARCH_KEYS = ("layers", "heads", "width", "q_hidden", "q_ensemble")

# Spec 3.3; the names are the paper's, which count frozen weights (see count_parameters).
SIZES: dict[str, dict[str, int]] = {
    "40M": {"layers": 4, "heads": 8, "width": 512, "q_hidden": 768, "q_ensemble": 1},
    "70M": {"layers": 6, "heads": 12, "width": 768, "q_hidden": 1024, "q_ensemble": 1},
    "150M": {"layers": 12, "heads": 12, "width": 768, "q_hidden": 1792, "q_ensemble": 3},
}


@dataclass(frozen=True)
class JOWAConfig:
    """Architecture of a JOWA model; defaults are the paper's (spec 3.1-3.4)."""

    layers: int
    heads: int
    width: int
    q_hidden: int
    q_ensemble: int
    q_dropout: float = 0.01
    tokens_per_block: int = 37
    max_blocks: int = 8
    max_tasks: int = 60
    obs_vocab: int = 2048
    num_actions: int = 18
    num_atoms: int = 51
    vmin: float = -10.0
    vmax: float = 30.0
    dropout: float = 0.1
    use_task_embed: bool = True

    @classmethod
    def from_arch(cls, arch: str | Mapping[str, Any], **overrides: Any) -> JOWAConfig:
        """Config from a size name ("40M", "70M", "150M") or a mapping with at least ARCH_KEYS.

        A mapping may also set any other field; `overrides` win over both.
        """
        if isinstance(arch, str):
            if arch not in SIZES:
                raise ValueError(f"unknown JOWA size {arch!r}; expected one of {sorted(SIZES)} or a mapping")
            arch = SIZES[arch]
        fields = {**arch, **overrides}
        missing = [key for key in ARCH_KEYS if key not in fields]
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if missing or unknown:
            raise ValueError(f"bad JOWA architecture: missing keys {missing}, unknown keys {unknown}")
        return cls(**fields)

    @property
    def max_tokens(self) -> int:
        return self.tokens_per_block * self.max_blocks

    def transformer_config(self) -> TransformerConfig:
        return TransformerConfig(
            num_layers=self.layers,
            num_heads=self.heads,
            embed_dim=self.width,
            max_tokens=self.max_tokens,
            dropout=self.dropout,
        )

    def atoms(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The C51 support z_k, linearly spaced on [vmin, vmax]."""
        return torch.linspace(self.vmin, self.vmax, self.num_atoms, device=device)


@dataclass
class JOWAOutput:
    """Head outputs for the positions present in the input (a partial window gives fewer of each).

    q_logits and q_target_logits are (num_q, B, steps, num_actions * num_atoms), action-major: view them
    as (..., num_actions, num_atoms).
    """

    obs_logits: torch.Tensor | None  # (B, positions with slot != 35, obs_vocab); None: see obs_features
    reward_logits: torch.Tensor  # (B, action positions, 3): classes sign(r) + 1
    end_logits: torch.Tensor  # (B, action positions, 2)
    q_logits: torch.Tensor
    q_target_logits: torch.Tensor
    # (B, positions with slot != 35, width): the observation head's input to its last Linear, returned
    # instead of obs_logits when a chunked loss computes the logits (`forward(..., obs_logits=False)`).
    obs_features: torch.Tensor | None = None


@dataclass(frozen=True)
class Levers:
    """Ways of computing the training step that give the same numbers in less time or memory (issue 19),
    each switchable to measure it. Not part of JOWAConfig: they change kernels, not the function."""

    fused_qkv: bool = True
    """the q/k/v projections as one GEMM (jowa.models.transformer.CausalSelfAttention)"""
    sliced_heads: bool = True
    """whole-step windows pick the heads' positions by reshape and slice instead of index gathers"""
    obs_loss_chunk: int = 8192
    """rows per chunk of the training observation loss, whose logits are recomputed in backward
    (jowa.models.linear_cross_entropy); 0: the full (rows, 2048) logits, as before"""

    def __post_init__(self) -> None:
        if self.obs_loss_chunk < 0:
            raise ValueError(f"obs_loss_chunk must be >= 0 rows, not {self.obs_loss_chunk}")

    @classmethod
    def none(cls) -> Levers:
        """Every lever off: the step as it was computed before issue 19."""
        return cls(fused_qkv=False, sliced_heads=False, obs_loss_chunk=0)


def _mlp_head(width: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, out_dim))


def _init_gpt_weights(module: nn.Module) -> None:
    """Spec 3.2 init: N(0, 0.02) Linear/Embedding weights, zero biases, LayerNorm (1, 0)."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class JOWA(nn.Module):
    """World-action model: `model(tokens, tasks, kv_cache)` -> JOWAOutput.

    `attention` picks the attention kernels (see jowa.models.transformer) and `levers` the ways of computing
    a training step (see Levers); neither is part of `config` because the weights compute the same function
    with every choice.
    """

    def __init__(
        self, config: JOWAConfig, *, attention: AttentionBackend = "auto", levers: Levers | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.levers = levers or Levers()
        width = config.width
        self.transformer = Transformer(
            config.transformer_config(), attention=attention, fused_qkv=self.levers.fused_qkv
        )
        self.position_embedding = nn.Embedding(config.max_tokens, width)
        self.action_embedding = nn.Embedding(config.num_actions, width)
        self.observation_embedding = nn.Embedding(config.obs_vocab, width)
        if config.use_task_embed:
            self.task_embedding_action = nn.Embedding(config.max_tasks, width)
            self.task_embedding_observation = nn.Embedding(config.max_tasks, width)
        self.observation_head = _mlp_head(width, config.obs_vocab)
        self.reward_head = _mlp_head(width, 3)
        self.end_head = _mlp_head(width, 2)
        self.apply(_init_gpt_weights)
        q_out = config.num_actions * config.num_atoms
        self.q_head = QEnsemble(config.q_ensemble, width, config.q_hidden, q_out, config.q_dropout)
        self.q_target_head = copy.deepcopy(self.q_head).requires_grad_(False).eval()
        # The training window's layout as (non-saved) buffers: built once, on the model's device, and
        # graph inputs of torch.compile instead of data-dependent nonzero calls on every step.
        full = TokenLayout.build(0, config.max_tokens, config.tokens_per_block, torch.device("cpu"))
        for name, tensor in full._asdict().items():
            self.register_buffer(f"layout_{name}", tensor, persistent=False)
        self._layouts: dict[tuple[int, int, torch.device], TokenLayout] = {}

    def train(self, mode: bool = True) -> JOWA:
        """Switch train/eval mode; the target Q head always stays in eval mode (no dropout in TD targets)."""
        super().train(mode)
        self.q_target_head.eval()
        return self

    @torch.no_grad()
    def update_target(self) -> None:
        """Hard copy of the online Q head into the target head (every 1000 steps in the reference)."""
        for target, online in zip(self.q_target_head.parameters(), self.q_head.parameters(), strict=True):
            target.copy_(online)

    def new_kv_cache(self) -> KVCache:
        """An empty cache for incremental decoding over at most one 296-token window."""
        return self.transformer.new_kv_cache()

    def _embed(self, tokens: torch.Tensor, tasks: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Token, position and task embeddings of tokens (B, T) at window positions (T,), a device tensor."""
        is_action = (positions % self.config.tokens_per_block == self.config.tokens_per_block - 1).unsqueeze(
            -1
        )
        # Token ids index the action table at slot 36 and the observation table elsewhere; clamping only
        # keeps the lookup of the unused table in range.
        x = torch.where(
            is_action,
            self.action_embedding(tokens.clamp(max=self.config.num_actions - 1)),
            self.observation_embedding(tokens.clamp(max=self.config.obs_vocab - 1)),
        )
        x = x + self.position_embedding(positions)
        if self.config.use_task_embed:
            task_action = self.task_embedding_action(tasks).unsqueeze(1)
            task_observation = self.task_embedding_observation(tasks).unsqueeze(1)
            x = x + torch.where(is_action, task_action, task_observation)
        return x

    def _layout(self, start: int, length: int, device: torch.device) -> TokenLayout:
        """The token layout of a window: the training window's buffers, or one built once per window."""
        if start == 0 and length == self.config.max_tokens:
            return TokenLayout(*(getattr(self, f"layout_{name}") for name in TokenLayout._fields))
        key = (start, length, device)
        if key not in self._layouts:
            self._layouts[key] = TokenLayout.build(start, length, self.config.tokens_per_block, device)
        return self._layouts[key]

    def forward(
        self,
        tokens: torch.Tensor,
        tasks: torch.Tensor,
        kv_cache: KVCache | None = None,
        *,
        obs_logits: bool = True,
    ) -> JOWAOutput:
        """Run `tokens` (B, T) of tasks (B,); with `kv_cache`, they continue the cached tokens.

        Positions count from the start of the window: token i sits at position kv_cache.length + i.
        `obs_logits` False returns the observation head's last-layer input instead of its logits, for a
        loss that applies that layer itself (jowa.models.linear_cross_entropy).
        """
        start = 0 if kv_cache is None else kv_cache.length
        hidden = self.hidden(tokens, tasks, kv_cache)
        obs_hidden, action_hidden, q_hidden = self._head_inputs(hidden, start)
        with torch.no_grad():
            q_target_logits = self.q_target_head(q_hidden.detach())
        head = self.observation_head
        features = None if obs_logits else head[1](head[0](obs_hidden))
        return JOWAOutput(
            obs_logits=head(obs_hidden) if obs_logits else None,
            reward_logits=self.reward_head(action_hidden),
            end_logits=self.end_head(action_hidden),
            q_logits=self.q_head(q_hidden),
            q_target_logits=q_target_logits,
            obs_features=features,
        )

    def _head_inputs(
        self, hidden: torch.Tensor, start: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The hidden states (B, positions, E) the observation, reward/termination and Q heads read.

        A window of whole steps (the training window) is a view (B, steps, 37, E) whose slots 35 and 36
        are slices and whose observation-head rows are slots 0..34 and 36 side by side, in the order the
        layout's indices give, with no index kernel (Levers.sliced_heads); other windows gather them.
        The slices are copied (B x steps rows): a strided view saved for backward by a head would keep
        all of `hidden` alive until then.
        """
        per_block = self.config.tokens_per_block
        batch, length, width = hidden.shape
        if self.levers.sliced_heads and start % per_block == 0 and length % per_block == 0:
            steps = hidden.view(batch, length // per_block, per_block, width)
            obs = torch.cat([steps[:, :, : per_block - 2], steps[:, :, per_block - 1 :]], dim=2)
            action, q = steps[:, :, per_block - 1].contiguous(), steps[:, :, per_block - 2].contiguous()
            return obs.view(batch, -1, width), action, q
        layout = self._layout(start, length, hidden.device)
        return hidden[:, layout.obs_head], hidden[:, layout.action], hidden[:, layout.q]

    def hidden(
        self, tokens: torch.Tensor, tasks: torch.Tensor, kv_cache: KVCache | None = None
    ) -> torch.Tensor:
        """Final-LN hidden states (B, T, E) of `tokens` (B, T), no head: callers that need only some heads
        (the planner) apply those, to the positions they need. Reads no device value on the host."""
        batch, length = tokens.shape
        start = 0 if kv_cache is None else kv_cache.length
        if start + length > self.config.max_tokens:
            raise ValueError(
                f"{start} cached + {length} new tokens exceed the {self.config.max_tokens}-token window"
            )
        if tasks.shape != (batch,):
            raise ValueError(f"tasks must have shape ({batch},), got {tuple(tasks.shape)}")
        positions = (
            torch.arange(length, device=tokens.device) if kv_cache is None else kv_cache.positions(length)
        )
        return self.transformer(self._embed(tokens, tasks, positions), kv_cache)

    @torch.no_grad()
    def matmul_weights_to_(self, dtype: torch.dtype) -> JOWA:
        """Keep the weights autocast would cast for its matmuls (Linear, the Q ensemble's baddbmm) in
        `dtype`, in place; embeddings and norms stay float32. Under autocast the model then computes
        exactly what it computed before, without re-casting weights in every pass (which a captured
        CUDA graph would repeat on each replay). For evaluation only: the optimizer expects float32."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.to(dtype)
            elif isinstance(module, QEnsemble):
                for name in ("in_weight", "in_bias", "mid_weight", "mid_bias", "out_weight", "out_bias"):
                    getattr(module, name).data = getattr(module, name).data.to(dtype)
        return self

    def configure_optimizers(
        self,
        *,
        world_lr: float,
        critic_lr: float,
        weight_decay: float,
        betas: tuple[float, float],
        eps: float,
        fused: bool = False,
    ) -> torch.optim.AdamW:
        """AdamW with the reference's three groups (spec 4.5, gotcha 17), over trainable tensors only.

        (i) Linear weights: decayed, world lr; (ii) biases, LayerNorm and embedding weights: not decayed,
        world lr; (iii) the whole Q head, biases and norms included: decayed, critic lr. Frozen tensors are
        left out and so is a group left empty: with `q_head.requires_grad_(False)` (stage 1, world-model
        losses only) there is no critic group, and DDP needs no `find_unused_parameters`. `fused` selects
        PyTorch's single-kernel AdamW (CUDA).
        """
        decay, no_decay = [], []
        for module_name, module in self.named_modules():
            if module_name.startswith(("q_head", "q_target_head")):
                continue
            for name, parameter in module.named_parameters(recurse=False):
                if parameter.requires_grad:
                    is_linear_weight = isinstance(module, nn.Linear) and name == "weight"
                    (decay if is_linear_weight else no_decay).append(parameter)
        critic = [parameter for parameter in self.q_head.parameters() if parameter.requires_grad]
        groups = [
            {"name": "world_decay", "params": decay, "lr": world_lr, "weight_decay": weight_decay},
            {"name": "world_no_decay", "params": no_decay, "lr": world_lr, "weight_decay": 0.0},
            {"name": "critic", "params": critic, "lr": critic_lr, "weight_decay": weight_decay},
        ]
        groups = [group for group in groups if group["params"]]
        grouped = [id(parameter) for group in groups for parameter in group["params"]]
        trainable = {id(parameter) for parameter in self.parameters() if parameter.requires_grad}
        if len(grouped) != len(set(grouped)) or set(grouped) != trainable:
            raise RuntimeError(
                f"optimizer groups hold {len(grouped)} tensors ({len(set(grouped))} distinct) but the model "
                f"trains {len(trainable)}, {len(trainable - set(grouped))} of them in no group"
            )
        return torch.optim.AdamW(groups, betas=betas, eps=eps, fused=fused or None)


# Spec 2.8: the reference tokenizer module, which registers the frozen LPIPS VGG16, and its trainable part.
REFERENCE_TOKENIZER_PARAMETERS = 18_763_649
TOKENIZER_TRAINABLE_PARAMETERS = 4_047_489


def count_parameters(model: JOWA, tokenizer: nn.Module | None = None) -> dict[str, int]:
    """Parameter counts in the reference's naming convention and of what actually trains (spec 3.5).

    The paper's size names count every registered parameter: the JOWA module with its frozen target Q
    copy plus the tokenizer module with its frozen LPIPS VGG16. Without `tokenizer` the reference
    tokenizer's counts (spec 2.8) are used.
    """

    def count(module: nn.Module, trainable: bool = False) -> int:
        return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)

    jowa_total, jowa_trainable = count(model), count(model, trainable=True)
    if tokenizer is None:
        tokenizer_total, tokenizer_trainable = REFERENCE_TOKENIZER_PARAMETERS, TOKENIZER_TRAINABLE_PARAMETERS
    else:
        tokenizer_total, tokenizer_trainable = count(tokenizer), count(tokenizer, trainable=True)
    return {
        "jowa_module": jowa_total,
        "jowa_trainable": jowa_trainable,
        "q_head": count(model.q_head),
        "tokenizer_module": tokenizer_total,
        "tokenizer_trainable": tokenizer_trainable,
        "reference_name": jowa_total + tokenizer_total,
        "trainable_total": jowa_trainable + tokenizer_trainable,
    }
