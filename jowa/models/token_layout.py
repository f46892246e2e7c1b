"""Where each kind of token sits in a window of the world model's interleaved sequence (spec 3.1, 3.4).

Slot j of a 37-token step block: 0..35 observation tokens, 36 the action. The observation head reads every
slot except 35, the reward and termination heads slot 36, the Q heads slot 35.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class TokenLayout(NamedTuple):
    """Where each kind of token sits in a window of `length` tokens starting at absolute position `start`."""

    is_action: torch.Tensor  # (length,) bool, slot j == 36
    obs_head: torch.Tensor  # indices with slot j != 35
    action: torch.Tensor  # indices with slot j == 36
    q: torch.Tensor  # indices with slot j == 35

    @classmethod
    def build(cls, start: int, length: int, tokens_per_block: int, device: torch.device) -> TokenLayout:
        # Built on the CPU so that no boolean indexing waits for the GPU.
        slots = torch.arange(start, start + length, device="cpu") % tokens_per_block  # also in a meta model
        q_slot, action_slot = tokens_per_block - 2, tokens_per_block - 1
        layout = (
            slots == action_slot,
            torch.nonzero(slots != q_slot).squeeze(1),
            torch.nonzero(slots == action_slot).squeeze(1),
            torch.nonzero(slots == q_slot).squeeze(1),
        )
        return cls(*(tensor.to(device, non_blocking=True) for tensor in layout))
