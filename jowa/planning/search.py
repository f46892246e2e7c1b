"""Acting with a JOWA model: greedy action choice and beam-search planning.

Everything is batched over episodes (and, in the planner, over beam candidates): one model call serves
every episode of a game at once, the world model steps imagined candidates through batched KV caches,
and finished episodes simply leave the batch. Decoding is greedy (spec 5.3): observation tokens and the
reward class are argmaxes; the predicted termination is ignored, as in the reference.

A planner takes contexts (spec 5.1) as tokens (B, G * 37 - 1): G steps of a frame's 36 tokens and the
action taken on it, the current step's action missing (`jowa.planning.contexts` keeps them). The beam
planner uses at most 8 - H steps so that H imagined steps fit in the model's 8-step window.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from jowa.models.losses import action_mask_table
from jowa.models.q_ensemble import ensemble_probabilities, expected_q
from jowa.models.transformer import KVCache
from jowa.models.world_action import JOWA


class WorldModel:
    """Batched, KV-cached steps of a JOWA model for acting and imagination (eval mode, no gradients).

    Each pass runs only the heads its position needs: the root and the last token of an imagined frame
    the Q head, the action the reward, termination and observation heads, frame tokens the observation
    head. `session()` is one no-grad autocast region; a planner holds one around its whole call, so that
    autocast casts the weights once per call, not once per pass. With `graphs` (CUDA only) the model's
    matmul weights are kept in bf16 (`JOWA.matmul_weights_to_`, the same numbers autocast computes) and
    each imagined step of a batch size, its 37 passes, is captured once as a CUDA graph over a
    persistent cache (`decode_cache`) and replayed after.
    """

    def __init__(self, model: JOWA, bf16: bool = False, graphs: bool = False) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.atoms = model.config.atoms(self.device)
        self.mask_table = action_mask_table(self.device)
        self.bf16 = bf16 and self.device.type == "cuda"
        self.graphs = graphs and self.device.type == "cuda"
        self.tokens_per_frame = model.config.tokens_per_block - 1
        if self.graphs and self.bf16:
            model.matmul_weights_to_(torch.bfloat16)
        self._decode_caches: dict[int, KVCache] = {}
        self._step_graphs: dict[int, StepGraph] = {}

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """No gradients and, in bf16, one autocast region (its weight cache off when weights are bf16)."""
        autocast = torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=not self.graphs
        )
        with torch.no_grad(), autocast:
            yield

    def valid_actions(self, tasks: torch.Tensor) -> torch.Tensor:
        """(B,) task ids -> (B, 18) bool: the game's minimal action set."""
        return self.mask_table[tasks].bool()

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
        with self.session():
            hidden = self.model.hidden(tokens, tasks, cache)
            return cache, self.q_values(self.model.q_head(hidden[:, -1:]), tasks)

    def decode_cache(self, source: KVCache, rows: torch.Tensor) -> KVCache:
        """A cache holding `source`'s rows `rows` (repeats allowed), to step: a new one, or with graphs the
        persistent one of that batch size, whose tensors a captured step reads (`source` may be it)."""
        if not self.graphs:
            return source.select(rows)
        if len(rows) not in self._decode_caches:
            self._decode_caches[len(rows)] = self.model.new_kv_cache()
        cache = self._decode_caches[len(rows)]
        cache.load(source, rows)
        return cache

    def step(self, cache: KVCache, actions: torch.Tensor, tasks: torch.Tensor) -> Step:
        """Imagine one step after each cached context: take `actions` (B,), decode the next frame.

        Feeds the action and the 36 frame tokens one at a time: 37 batched passes through the cache,
        replayed from a CUDA graph when `cache` is this model's persistent cache of its batch size.
        """
        rows = len(actions)
        if self.graphs and self._decode_caches.get(rows) is cache:
            if rows not in self._step_graphs:
                with self.session():
                    self._step_graphs[rows] = StepGraph(self, cache, actions, tasks)
            return self._step_graphs[rows](actions, tasks)
        with self.session():
            return self.imagine_step(cache, actions, tasks)

    def imagine_step(self, cache: KVCache, actions: torch.Tensor, tasks: torch.Tensor) -> Step:
        """The 37 passes of `step`, device work only (what a graph captures)."""
        model = self.model
        hidden = model.hidden(actions.unsqueeze(1), tasks, cache)
        rewards = model.reward_head(hidden).squeeze(1).argmax(dim=-1).float() - 1
        ends = model.end_head(hidden).squeeze(1).argmax(dim=-1).bool()
        token = model.observation_head(hidden).squeeze(1).argmax(dim=-1)
        frame = [token]
        for _ in range(self.tokens_per_frame - 1):
            token = (
                model.observation_head(model.hidden(token.unsqueeze(1), tasks, cache)).squeeze(1).argmax(-1)
            )
            frame.append(token)
        q_logits = model.q_head(model.hidden(token.unsqueeze(1), tasks, cache))
        return Step(rewards, ends, torch.stack(frame, dim=1), self.q_values(q_logits, tasks))


class StepGraph:
    """`WorldModel.imagine_step` on one persistent cache and batch size, captured once as a CUDA graph.

    Inputs are copied into static tensors, the cache's device position is what the passes read, and
    its host length is advanced here, since a replay runs no Python.
    """

    def __init__(self, world: WorldModel, cache: KVCache, actions: torch.Tensor, tasks: torch.Tensor) -> None:
        self.cache, self.steps = cache, world.tokens_per_frame + 1
        self.actions, self.tasks = actions.clone(), tasks.clone()
        length = cache.length
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capturing stream, as CUDA graphs require
            world.imagine_step(cache, self.actions, self.tasks)
        torch.cuda.current_stream().wait_stream(side)
        cache.length = length
        cache.position.fill_(length)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = world.imagine_step(cache, self.actions, self.tasks)
        cache.length = length  # capture ran the Python, not the kernels: nothing advanced yet

    def __call__(self, actions: torch.Tensor, tasks: torch.Tensor) -> Step:
        cached, window = self.cache.length, self.cache.window
        if cached + self.steps > window:  # a replay checks nothing itself
            raise ValueError(f"{cached} cached + {self.steps} new tokens exceed the {window}-token window")
        self.actions.copy_(actions)
        self.tasks.copy_(tasks)
        self.graph.replay()
        self.cache.length += self.steps
        out = self.output
        return Step(out.rewards.clone(), out.ends.clone(), out.frames.clone(), out.q.clone())


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
    """Spec 5.3 for a batch of contexts (B, L) of equal length, in one autocast region, with no host sync.

    Each depth expands every kept node by its top K actions by its own Q, steps all (node, action) pairs
    of all contexts in one batch, scores the children (sum of gamma^(i-1) r_i + gamma^d max Q) and keeps
    the best K per context. A game with fewer than K valid actions gets invalid children at score -inf,
    which are never kept over a valid one: the same plan as expanding min(K, valid actions), without
    reading the action count on the host. Depth d steps B K^min(d, 2) rows, so there are two batch sizes;
    the rows of each depth's cache are gathered by index from the kept nodes' rows of the one before.
    """
    with world.session():
        return _beam_search(world, tokens, tasks, width=width, horizon=horizon, gamma=gamma)


def _beam_search(
    world: WorldModel, tokens: torch.Tensor, tasks: torch.Tensor, *, width: int, horizon: int, gamma: float
) -> Plan:
    batch, device = len(tasks), tokens.device
    cache, q = world.root(tokens, tasks, cached=horizon > 0)
    empty = torch.zeros(batch, 1, 0, device=device)  # each kept node's path so far: none at the root
    frames = torch.zeros(batch, 1, 0, world.tokens_per_frame, dtype=torch.long, device=device)
    path = {"actions": empty.long(), "rewards": empty, "ends": empty.bool(), "frames": frames}
    node_q, node_return, scores = q.unsqueeze(1), q.new_zeros(batch, 1), q.max(dim=-1).values.unsqueeze(1)
    contexts = torch.arange(batch, device=device).unsqueeze(1)
    node_rows = contexts  # (B, nodes): each kept node's row in `cache`
    for depth in range(1, horizon + 1):
        nodes = node_q.shape[1]
        children = nodes * width
        action_q, actions = node_q.topk(width, dim=-1)  # (B, nodes, K), parent-major below
        actions, invalid = actions.flatten(1), action_q.flatten(1).isinf()
        parent_rows = node_rows.unsqueeze(2).expand(batch, nodes, width).flatten()
        cache = world.decode_cache(cache, parent_rows)
        step = world.step(cache, actions.flatten(), tasks.unsqueeze(1).expand(batch, children).flatten())
        rewards = step.rewards.view(batch, children)
        parent_return = node_return.unsqueeze(2).expand(batch, nodes, width).flatten(1)
        returns = (parent_return + gamma ** (depth - 1) * rewards).masked_fill(invalid, float("-inf"))
        child_q = step.q.view(batch, children, -1)
        child_scores = returns + gamma**depth * child_q.max(dim=-1).values
        keep = child_scores.topk(width, dim=-1).indices
        new = {"actions": actions, "rewards": rewards, "ends": step.ends.view(batch, children),
               "frames": step.frames.view(batch, children, -1)}  # fmt: skip
        path = {name: _take(_extend(path[name], width, new[name]), keep) for name in path}
        node_return, scores = returns.gather(1, keep), child_scores.gather(1, keep)
        node_q = _take(child_q, keep)
        node_rows = keep + contexts * children
    best = scores.argmax(dim=-1, keepdim=True)
    chosen = {name: _take(values, best).squeeze(1) for name, values in path.items()}
    return Plan(**chosen, q=_take(node_q, best).squeeze(1), scores=scores.gather(1, best).squeeze(1))


def greedy(world: WorldModel, tokens: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
    """No planning (spec 5.2): one pass without a cache, the Q head at the last position only, argmax."""
    _, q = world.root(tokens, tasks, cached=False)
    return q.argmax(dim=-1)
