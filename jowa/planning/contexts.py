"""The planner's contexts of every episode of an evaluation, kept on the model's device (spec 5.1).

Each episode keeps its last `capacity` steps, each a frame's 36 tokens and the action taken on it; the
current step's action is missing, so a context of G steps is G * 37 - 1 tokens whose positions restart
at 0. All episodes share one tensor (episodes, capacity, 37), right-aligned: an episode's newest step is
its last row, and observing a frame shifts that episode's steps down by one. A batch of contexts is then
an index and a view on the device and the chosen actions are written in place, so that an agent step
moves nothing between host and device but its frames up and its actions down (`jowa.planning.play`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: A saved context: its steps, oldest first, as (36 frame tokens, action; None for a missing one).
SavedContext = list[tuple[torch.Tensor, int | None]]


def upload(values: Sequence[int], device: torch.device) -> torch.Tensor:
    """A small long tensor on `device`; to a GPU through pinned memory without waiting for the copy
    (the caching host allocator keeps the pinned block until the copy is done)."""
    host = torch.tensor(values, dtype=torch.long)
    return host.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else host.to(device)


class Contexts:
    """The last `capacity` steps of each of `episodes` episodes, as model tokens on `device`."""

    def __init__(
        self, episodes: int, capacity: int, device: torch.device | str, tokens_per_frame: int = 36
    ) -> None:
        self.capacity, self.device = capacity, torch.device(device)
        self.tokens = torch.zeros(episodes, capacity, tokens_per_frame + 1, dtype=torch.long, device=device)
        self.held = [0] * episodes  # steps each episode holds: fewer than `capacity` early on
        self._indices: dict[tuple[int, ...], torch.Tensor] = {}

    def rows(self, episodes: Sequence[int]) -> torch.Tensor | slice:
        """`episodes` as an index into `tokens`: every episode in order as a slice (no gather); any other
        set as a device tensor, uploaded the first time (a set changes only when an episode ends)."""
        key = tuple(episodes)
        if key == tuple(range(len(self.held))):
            return slice(None)
        if key not in self._indices:
            self._indices[key] = upload(key, self.device)
        return self._indices[key]

    def observe(self, episodes: Sequence[int], frames: torch.Tensor) -> None:
        """Each episode's new step: frame tokens `frames` (len(episodes), 36) on the device, no action yet."""
        index = self.rows(episodes)
        step = torch.cat([frames, frames.new_zeros(len(frames), 1)], dim=1)  # action slot, filled by `act`
        self.tokens[index] = torch.cat([self.tokens[index, 1:], step.unsqueeze(1)], dim=1)
        for episode in episodes:
            self.held[episode] = min(self.held[episode] + 1, self.capacity)

    def act(self, episodes: Sequence[int], actions: torch.Tensor) -> None:
        """The actions (len(episodes),), on the device, taken on the episodes' current frames."""
        self.tokens[self.rows(episodes), -1, -1] = actions

    def replace_action(self, episode: int, action: int) -> None:
        """Overwrite one episode's current action with a host value (an ε-random one): a fill, no copy."""
        self.tokens[episode, -1, -1].fill_(action)

    def batch(self, episodes: Sequence[int], steps: int) -> torch.Tensor:
        """The episodes' last `steps` steps as model tokens (len(episodes), steps * 37 - 1), ending with the
        current frame; each episode must hold `steps` steps."""
        short = [episode for episode in episodes if self.held[episode] < steps]
        if short or not 1 <= steps <= self.capacity:
            raise ValueError(f"episodes {short} hold fewer than {steps} of at most {self.capacity} steps")
        window = self.tokens[self.rows(episodes), self.capacity - steps :]
        return window.flatten(1)[:, :-1].contiguous()

    def state_dict(self) -> list[SavedContext]:
        """Each episode's held steps on the host, the layout the host-side contexts of earlier versions
        saved, so that an evaluation state saved before this module resumes."""
        tokens = self.tokens.cpu()
        return [
            [(step[:-1], int(step[-1])) for step in tokens[episode, self.capacity - held :]]
            for episode, held in enumerate(self.held)
        ]

    def load_state_dict(self, saved: Sequence[SavedContext]) -> None:
        if len(saved) != len(self.held):
            raise ValueError(f"a saved state of {len(saved)} contexts for {len(self.held)} episodes")
        host = torch.zeros_like(self.tokens, device="cpu")
        for episode, steps in enumerate(saved):
            kept = steps[max(0, len(steps) - self.capacity) :]
            self.held[episode] = len(kept)
            for row, (frame, action) in enumerate(kept, start=self.capacity - len(kept)):
                host[episode, row, :-1] = frame
                host[episode, row, -1] = 0 if action is None else action
        self.tokens.copy_(host)
