"""Imagined segments for fine-tuning's critic (spec 5.5 and 6), at the token level.

Each step after `imagination.after`, a second batch of real segments is drawn; those whose first
8 - H steps are real and not terminal become prompts. From each prompt's last real frame the same beam
search the evaluation uses (`jowa.planning.search.beam_search`, the model in eval mode) imagines H steps.
The imagined segment is the prompt's frames, actions and rewards, then the plan's: step t's action is
the one taken on step t's frame and its reward what that action earned, exactly as in real segments.
Imagined tokens stay tokens (the reference decodes them to pixels and re-encodes them, lossy, and
concatenates them unscaled; gotcha 25). Its last step's action is the greedy one on the last imagined
frame, with no reward target (a row cut without a terminal has no TD target there). A predicted
termination ends the segment on that step (the rest is padding); the reference imagines past it and
shifts the prompt's actions by one step (gotcha 14). Segments go into a FIFO buffer (capacity
buffer_factor x the set's segments) from which `imagined_batch` are drawn per step.
"""

from __future__ import annotations

import torch

from jowa.models.batch import Batch, interleave
from jowa.models.world_action import JOWA
from jowa.planning.search import WorldModel, beam_search
from jowa.train.params import ImaginationParams


def imagine(world: WorldModel, prompts: Batch, *, horizon: int, width: int, gamma: float) -> Batch:
    """Segments of the prompts' length: their first length - horizon steps, then `horizon` imagined."""
    real = prompts.actions.shape[1] - horizon
    tokens = interleave(prompts.obs_tokens[:, :real], prompts.actions[:, :real])[:, :-1]
    plan = beam_search(world, tokens, prompts.tasks, width=width, horizon=horizon, gamma=gamma)
    rows = len(prompts.tasks)
    obs = torch.cat([prompts.obs_tokens[:, :real], plan.frames.to(prompts.obs_tokens.dtype)], dim=1)
    last_action = plan.q.argmax(dim=-1, keepdim=True)
    actions = torch.cat([prompts.actions[:, : real - 1], plan.actions, last_action], dim=1)
    zero = plan.rewards.new_zeros(rows, 1)
    rewards = torch.cat([prompts.rewards[:, : real - 1], plan.rewards, zero], dim=1)
    ends = torch.cat([prompts.ends[:, : real - 1], plan.ends.long(), zero.long()], dim=1)
    # Steps after the first predicted termination are padding.
    mask = (ends.cumsum(dim=1) - ends) == 0
    return Batch(
        obs_tokens=obs * mask.unsqueeze(-1), actions=actions * mask, rewards=rewards * mask,
        ends=ends * mask, mask=mask, tasks=prompts.tasks,
    )  # fmt: skip


def usable_prompts(batch: Batch, horizon: int) -> torch.Tensor:
    """Rows whose first length - horizon steps are all real and none of them ends its episode."""
    real = batch.actions.shape[1] - horizon
    return batch.mask[:, :real].all(dim=1) & (batch.ends[:, :real] == 0).all(dim=1)


class ImaginedBuffer:
    """A FIFO ring of imagined segments on the training device; part of the resumable run state."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.segments: Batch | None = None
        self.filled = 0
        self.cursor = 0

    def __len__(self) -> int:
        return self.filled

    def add(self, segments: Batch) -> None:
        if self.segments is None:
            self.segments = Batch(**{
                name: getattr(segments, name).new_zeros((self.capacity, *getattr(segments, name).shape[1:]))
                for name in segments.__dataclass_fields__
            })  # fmt: skip
        slots = (self.cursor + torch.arange(len(segments.tasks))) % self.capacity
        for name in segments.__dataclass_fields__:
            getattr(self.segments, name)[slots.to(segments.tasks.device)] = getattr(segments, name)
        self.cursor = int(slots[-1] + 1) % self.capacity if len(slots) else self.cursor
        self.filled = min(self.capacity, self.filled + len(segments.tasks))

    def sample(self, count: int, generator: torch.Generator) -> Batch:
        assert self.segments is not None and self.filled, "sample from an empty buffer"
        index = torch.randint(self.filled, (count,), generator=generator).to(self.segments.tasks.device)
        return Batch(
            **{name: getattr(self.segments, name)[index] for name in self.segments.__dataclass_fields__}
        )

    def state_dict(self) -> dict:
        fields = {} if self.segments is None else {
            name: getattr(self.segments, name)[: self.filled] for name in self.segments.__dataclass_fields__
        }  # fmt: skip
        return {"fields": fields, "filled": self.filled, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.segments, self.filled, self.cursor = None, 0, 0
        if state["fields"]:
            self.add(Batch(**state["fields"]))
        self.filled, self.cursor = state["filled"], state["cursor"]


def imagined_segments(
    model: JOWA, prompts: Batch, buffer: ImaginedBuffer, settings: ImaginationParams, *, gamma: float,
    count: int, generator: torch.Generator, bf16: bool,
) -> Batch | None:  # fmt: skip
    """Imagine from the usable `prompts` into `buffer` (model briefly in eval mode), then draw `count`."""
    usable = usable_prompts(prompts, settings.horizon)
    if usable.any():
        chosen = Batch(**{name: getattr(prompts, name)[usable] for name in prompts.__dataclass_fields__})
        world = WorldModel(model, bf16=bf16)
        buffer.add(imagine(world, chosen, horizon=settings.horizon, width=settings.beam_width, gamma=gamma))
        model.train()
    return buffer.sample(count, generator) if len(buffer) else None
