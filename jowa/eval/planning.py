"""Acting with a JOWA model: the agent's rolling context, greedy action choice and beam-search planning.

Everything is batched over episodes (and, in the planner, over beam candidates): one model call serves
every episode of a game at once, the world model steps imagined candidates through batched KV caches,
and finished episodes simply leave the batch. Decoding is greedy (spec 5.3): observation tokens and the
reward class are argmaxes; the predicted termination is ignored, as in the reference.

Context (spec 5.1): each episode keeps its last `context` steps, each a frame's 36 tokens and the action
taken on it; the current step's action is missing, so a context of G steps is G * 37 - 1 tokens whose
positions restart at 0. The beam planner uses at most 8 - H steps so that H imagined steps fit in the
model's 8-step window.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch

from jowa.models.losses import action_mask_table
from jowa.models.transformer import KVCache
from jowa.models.world_action import JOWA, JOWAOutput, ensemble_probabilities, expected_q


class Context:
    """One episode's last steps: (36 frame tokens, action or None for the current step)."""

    def __init__(self, capacity: int) -> None:
        self.steps: deque[tuple[torch.Tensor, int | None]] = deque(maxlen=capacity)

    def observe(self, frame_tokens: torch.Tensor) -> None:
        self.steps.append((frame_tokens, None))

    def act(self, action: int) -> None:
        tokens, _ = self.steps[-1]
        self.steps[-1] = (tokens, action)

    def tokens(self, steps: int) -> torch.Tensor:
        """The last `steps` steps (fewer early on) as model tokens, ending with the current frame."""
        kept = list(self.steps)[-steps:]
        parts = []
        for tokens, action in kept[:-1]:
            parts += [tokens, tokens.new_tensor([action])]
        parts.append(kept[-1][0])
        return torch.cat(parts)


class WorldModel:
    """Batched, KV-cached steps of a JOWA model for acting and imagination (eval mode, no gradients)."""

    def __init__(self, model: JOWA, bf16: bool = False) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.atoms = model.config.atoms(self.device)
        self.mask_table = action_mask_table(self.device)
        self.bf16 = bf16 and self.device.type == "cuda"
        self.tokens_per_frame = model.config.tokens_per_block - 1

    def valid_actions(self, tasks: torch.Tensor) -> torch.Tensor:
        """(B,) task ids -> (B, 18) bool: the game's minimal action set."""
        return self.mask_table[tasks].bool()

    def _run(self, tokens: torch.Tensor, tasks: torch.Tensor, cache: KVCache | None) -> JOWAOutput:
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.model(tokens, tasks, cache)

    def q_values(self, q_logits: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        """Expected Q of the ensemble mixture at the last Q position, invalid actions at -inf (spec 5.2)."""
        probabilities = ensemble_probabilities(q_logits[:, :, -1:].float(), self.mask_table.shape[1])
        q = expected_q(probabilities[:, 0], self.atoms)
        return q.masked_fill(~self.valid_actions(tasks), float("-inf"))

    def root(
        self, tokens: torch.Tensor, tasks: torch.Tensor, cached: bool = True
    ) -> tuple[KVCache | None, torch.Tensor]:
        """Run contexts (B, L) ending with a frame's last token: (their KV cache, Q-values (B, 18))."""
        cache = self.model.new_kv_cache() if cached else None
        output = self._run(tokens, tasks, cache)
        return cache, self.q_values(output.q_logits, tasks)

    def step(self, cache: KVCache, actions: torch.Tensor, tasks: torch.Tensor) -> Step:
        """Imagine one step after each cached context: take `actions` (B,), decode the next frame.

        Feeds the action and the 36 frame tokens one at a time: 37 batched passes through the cache.
        """
        output = self._run(actions.unsqueeze(1), tasks, cache)
        rewards = output.reward_logits[:, -1].argmax(dim=-1).float() - 1
        ends = output.end_logits[:, -1].argmax(dim=-1).bool()
        token = output.obs_logits[:, -1].argmax(dim=-1)
        frame = [token]
        for _ in range(self.tokens_per_frame - 1):
            token = self._run(token.unsqueeze(1), tasks, cache).obs_logits[:, -1].argmax(dim=-1)
            frame.append(token)
        q_logits = self._run(token.unsqueeze(1), tasks, cache).q_logits
        return Step(rewards, ends, torch.stack(frame, dim=1), self.q_values(q_logits, tasks))


@dataclass(frozen=True)
class Step:
    """One imagined step of a batch: what taking an action led to, decoded greedily."""

    rewards: torch.Tensor  # (B,) in {-1, 0, 1}
    ends: torch.Tensor  # (B,) bool, the predicted termination (the planner ignores it, spec 5.3)
    frames: torch.Tensor  # (B, 36) tokens of the next frame
    q: torch.Tensor  # (B, 18) its Q-values, invalid actions at -inf


@dataclass(frozen=True)
class Plan:
    """The best imagined path of each context: H actions and what they led to."""

    actions: torch.Tensor  # (B, H)
    rewards: torch.Tensor  # (B, H)
    ends: torch.Tensor  # (B, H) bool
    frames: torch.Tensor  # (B, H, 36)
    q: torch.Tensor  # (B, 18) Q-values of the path's last frame (the root's when H = 0)
    scores: torch.Tensor  # (B,) discounted imagined rewards + gamma^H max Q

    @property
    def first_actions(self) -> torch.Tensor:
        """The action to take now: the path's first (greedy on the root when H = 0)."""
        return self.actions[:, 0] if self.actions.shape[1] else self.q.argmax(dim=-1)


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values (B, C, ...) at index (B, k) along dim 1 -> (B, k, ...)."""
    shape = (*index.shape, *[1] * (values.dim() - 2))
    return values.gather(1, index.view(shape).expand(*index.shape, *values.shape[2:]))


def _extend(path: torch.Tensor, expand: int, new: torch.Tensor) -> torch.Tensor:
    """Parents' paths (B, n, d, ...) repeated for each of their `expand` children, plus the children's
    new step (B, n * expand, ...) -> (B, n * expand, d + 1, ...)."""
    batch, nodes = path.shape[:2]
    repeated = path.unsqueeze(2).expand(batch, nodes, expand, *path.shape[2:]).flatten(1, 2)
    return torch.cat([repeated, new.unsqueeze(2)], dim=2)


def beam_search(
    world: WorldModel, tokens: torch.Tensor, tasks: torch.Tensor, *, width: int, horizon: int, gamma: float
) -> Plan:
    """Spec 5.3 for a batch of contexts (B, L) of equal length, all of one game's action set.

    Each depth expands every kept node by its top K' = min(K, valid actions) actions by its own Q, steps
    all (node, action) pairs of all contexts in one batch, scores the children (sum of gamma^(i-1) r_i
    + gamma^d max Q) and keeps the best K per context.
    """
    batch, device = len(tasks), tokens.device
    cache, q = world.root(tokens, tasks)
    empty = torch.zeros(batch, 1, 0, device=device)  # each kept node's path so far: none at the root
    frames = torch.zeros(batch, 1, 0, world.tokens_per_frame, dtype=torch.long, device=device)
    path = {"actions": empty.long(), "rewards": empty, "ends": empty.bool(), "frames": frames}
    node_q, node_return, scores = q.unsqueeze(1), q.new_zeros(batch, 1), q.max(dim=-1).values.unsqueeze(1)
    expand = min(width, int(world.valid_actions(tasks[:1]).sum()))
    for depth in range(1, horizon + 1):
        nodes = node_q.shape[1]
        actions = node_q.topk(expand, dim=-1).indices.flatten(1)  # (B, nodes * K'), parent-major
        cache = cache.select(torch.arange(batch * nodes, device=device).repeat_interleave(expand))
        step = world.step(cache, actions.flatten(), tasks.repeat_interleave(nodes * expand))
        rewards = step.rewards.view(batch, -1)
        returns = node_return.repeat_interleave(expand, dim=1) + gamma ** (depth - 1) * rewards
        child_scores = returns + gamma**depth * step.q.max(dim=-1).values.view(batch, -1)
        keep = child_scores.topk(min(width, nodes * expand), dim=-1).indices
        new = {"actions": actions, "rewards": rewards, "ends": step.ends.view(batch, -1),
               "frames": step.frames.view(batch, nodes * expand, -1)}  # fmt: skip
        path = {name: _take(_extend(path[name], expand, new[name]), keep) for name in path}
        node_return, scores = returns.gather(1, keep), child_scores.gather(1, keep)
        node_q = _take(step.q.view(batch, nodes * expand, -1), keep)
        if depth < horizon:
            offsets = torch.arange(batch, device=device).unsqueeze(1) * nodes * expand
            cache = cache.select((keep + offsets).flatten())
    best = scores.argmax(dim=-1, keepdim=True)
    chosen = {name: _take(values, best).squeeze(1) for name, values in path.items()}
    return Plan(**chosen, q=_take(node_q, best).squeeze(1), scores=scores.gather(1, best).squeeze(1))


def greedy(world: WorldModel, tokens: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
    """No planning (spec 5.2): one full forward pass, argmax of the masked expected Q."""
    _, q = world.root(tokens, tasks, cached=False)
    return q.argmax(dim=-1)
