"""The training batch: what the segment loader yields and what the losses read.

A batch holds B segments of T steps. Step t of a segment is a frame's K observation tokens followed by
the action taken on it; `interleave` lays them out as the model reads them (K + 1 tokens per step, the
action last), the one place that layout is built: the loader and the planner both call it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


def interleave(obs_tokens: Tensor, actions: Tensor) -> Tensor:
    """(B, T, K) observation tokens and (B, T) actions -> (B, T * (K + 1)) model tokens, action last."""
    if obs_tokens.shape[:2] != actions.shape:
        raise ValueError(f"obs_tokens {tuple(obs_tokens.shape)} and actions {tuple(actions.shape)} disagree")
    steps = torch.cat([obs_tokens, actions.unsqueeze(-1).to(obs_tokens.dtype)], dim=-1)
    return steps.flatten(start_dim=1)


@dataclass(frozen=True)
class Batch:
    """B training segments of T steps; padded steps hold zeros and are False in `mask`."""

    obs_tokens: Tensor  # (B, T, K) int64 token ids of each step's frame
    actions: Tensor  # (B, T) int64 full 18-action index of the action taken on that frame
    rewards: Tensor  # (B, T) float32, clipped to [-1, 1]
    ends: Tensor  # (B, T) int64, 1 on an episode's last step
    mask: Tensor  # (B, T) bool, True on real steps
    tasks: Tensor  # (B,) int64 task ids (the game's index in jowa.core.games.GAMES)

    def tokens(self) -> Tensor:
        """The model's input, (B, T * (K + 1))."""
        return interleave(self.obs_tokens, self.actions)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        moved = {f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)}
        return Batch(**moved)
