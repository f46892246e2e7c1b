"""JOWA training losses: world-model cross-entropies, C51 one-step TD and the CQL penalty (spec 4.2-4.3).

Both read a `jowa.models.batch.Batch` of segments (B, T steps): observation tokens, actions in the full
18-action set, rewards, terminal flags, the real-step mask and task ids. Padded steps never contribute.
The critic sees the ensemble as one mixture distribution (gotcha 5), bootstraps from the frozen target
head on the same pass's detached features (gotcha 6), masks the game's invalid actions in the target
argmax but not in the CQL logsumexp (gotcha 7).
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from jowa.core.games import ACTION_MASKS
from jowa.models.batch import Batch
from jowa.models.linear_cross_entropy import chunked_linear_cross_entropy
from jowa.models.q_ensemble import ensemble_probabilities, expected_q
from jowa.models.world_action import JOWAOutput

IGNORE = -100


@cache
def action_mask_table(device: torch.device) -> torch.Tensor:
    """The (60, 18) action-mask table on `device`, copied there once. A compiled step should get it as
    an argument: traced, it would be rebuilt from the Python list on every call."""
    return torch.tensor(ACTION_MASKS, device=device)


def task_action_masks(tasks: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) task ids -> (B, 18) valid-action masks of the games GAMES[task], as the reference looks them up.

    The task ids are those the model sees: for held-out games remapped to a pretraining game's id, that
    is the other game's mask (spec 1.7). `table` is `action_mask_table(device)`, looked up if not given.
    """
    return (action_mask_table(tasks.device) if table is None else table)[tasks]


def world_model_losses(
    output: JOWAOutput,
    batch: Batch,
    *,
    supervised_weight: float,
    obs_layer: nn.Linear | None = None,
    obs_chunk: int = 0,
) -> dict[str, torch.Tensor]:
    """Next-observation-token, reward-sign and termination cross-entropies, each times `supervised_weight`.

    Logit i of the 288 observation-head outputs predicts observation token i+1 of the flattened 8x36
    tokens, so every token but the first is a target; targets in padded steps are ignored. The weight
    is 1 while only the world model trains and 0.1 (0.5 when fine-tuning) once the critic trains.
    An output without obs_logits (`JOWA.forward(..., obs_logits=False)`) has its observation loss
    computed from obs_features through `obs_layer`, the head's last Linear, `obs_chunk` rows at a time.
    """
    padded = ~batch.mask
    obs_targets = batch.obs_tokens.long().masked_fill(padded.unsqueeze(-1), IGNORE).flatten(start_dim=1)
    reward_targets = (batch.rewards.sign().long() + 1).masked_fill(padded, IGNORE)
    end_targets = batch.ends.long().masked_fill(padded, IGNORE)
    losses = {
        "loss_obs": _observation_loss(output, obs_targets[:, 1:], obs_layer, obs_chunk),
        "loss_rewards": _cross_entropy(output.reward_logits, reward_targets),
        "loss_ends": _cross_entropy(output.end_logits, end_targets),
    }
    return {name: supervised_weight * loss for name, loss in losses.items()}


def _observation_loss(
    output: JOWAOutput, targets: torch.Tensor, layer: nn.Linear | None, chunk: int
) -> torch.Tensor:
    """The next-token loss of positions 0..286 against `targets` (B, 287), from logits or, chunked, from
    the head's last-layer input."""
    if output.obs_logits is not None:
        return _cross_entropy(output.obs_logits[:, :-1], targets)
    if output.obs_features is None or layer is None or chunk < 1:
        raise ValueError("an output without obs_logits needs obs_features, the head's last layer and a chunk")
    # All 288 positions, the last one's target ignored: the features stay a view, not a sliced copy.
    features = output.obs_features.flatten(end_dim=1)
    return chunked_linear_cross_entropy(
        features, layer.weight, layer.bias, F.pad(targets, (0, 1), value=IGNORE).flatten(),
        chunk_rows=chunk, ignore_index=IGNORE,
    )  # fmt: skip


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the targets that are not IGNORE; logits (..., C), targets (...)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)


def project_distribution(
    next_probabilities: torch.Tensor, rewards: torch.Tensor, discounts: torch.Tensor, atoms: torch.Tensor
) -> torch.Tensor:
    """C51 projection of r + discount * z onto the support `atoms` (uniformly spaced).

    next_probabilities (..., Z), rewards and discounts (...) -> (..., Z). Atom z_k carries p_k to its
    two neighbours on the support in proportion 1 - distance / spacing, after clipping to the support.
    A discount of 0 (terminal step) puts all mass on the two atoms around r.
    """
    spacing = atoms[1] - atoms[0]
    shifted = (rewards.unsqueeze(-1) + discounts.unsqueeze(-1) * atoms).clamp(atoms[0], atoms[-1])
    weights = (1 - (shifted.unsqueeze(-2) - atoms.unsqueeze(-1)).abs() / spacing).clamp(min=0)  # (..., j, k)
    return (weights * next_probabilities.unsqueeze(-2)).sum(dim=-1)


def critic_losses(
    output: JOWAOutput,
    batch: Batch,
    *,
    atoms: torch.Tensor,
    gamma: float,
    cql_weight: float,
    mask_table: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """One-step C51 TD loss on the ensemble-mixture distribution and the CQL penalty.

    Each row's valid actions are its game's minimal set, looked up by its task id. TD targets exist for
    real steps followed by a real step in the same row (bootstrap from the next step's Q position through
    the target head, argmax over valid actions) and for terminal steps (all mass on r); the last real
    step of a row that was cut without a terminal has none. `mask_table`: see `task_action_masks`.
    """
    actions, rewards, mask_padding = batch.actions, batch.rewards, batch.mask
    action_mask = task_action_masks(batch.tasks, mask_table)
    num_actions = action_mask.shape[-1]
    online = ensemble_probabilities(output.q_logits, num_actions)  # (B, S, A, Z)
    taken = online.gather(2, actions[..., None, None].expand(-1, -1, 1, online.shape[-1])).squeeze(2)

    with torch.no_grad():
        target = ensemble_probabilities(output.q_target_logits, num_actions)
        next_q = expected_q(target, atoms).masked_fill(~action_mask.unsqueeze(1), float("-inf"))
        best = target.gather(2, next_q.argmax(dim=-1)[..., None, None].expand(-1, -1, 1, target.shape[-1]))
        best = best.squeeze(2)
        # Step t bootstraps from the target distribution at step t+1. A terminal step gets a uniform
        # placeholder, which its zero discount projects onto r alone; the last step's is never used.
        uniform = torch.full_like(best[:, :1], 1.0 / best.shape[-1])
        terminal = batch.ends.bool() & mask_padding
        next_distribution = torch.where(
            terminal.unsqueeze(-1), uniform, torch.cat([best[:, 1:], uniform], dim=1)
        )
        discounts = gamma * (~terminal).to(rewards.dtype)
        projected = project_distribution(next_distribution, rewards, discounts, atoms)
        has_target = (mask_padding & F.pad(mask_padding[:, 1:], (0, 1), value=False)) | terminal

    td = -(projected * torch.log(taken + 1e-8)).sum(dim=-1)
    q = expected_q(online, atoms)  # (B, S, A)
    dataset_q = q.gather(2, actions.unsqueeze(-1)).squeeze(-1)
    # Logsumexp over all actions, invalid ones included, as the reference does (gotcha 7).
    penalty = _masked_mean(q.logsumexp(dim=-1) - dataset_q, mask_padding)
    return {"loss_td_error": _masked_mean(td, has_target), "loss_cql_penalty": cql_weight * penalty}


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is True (0 where none is), as a weighted sum: boolean indexing
    would wait for the GPU and give torch.compile a data-dependent shape on every step."""
    return (values * mask).sum() / mask.sum().clamp(min=1)
