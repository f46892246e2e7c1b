"""MCTS planning (spec 5.4), the alternative to beam search, batched over episodes.

pUCT with c_base 19652 and c_init 1.25; priors softmax(Q / T) over the game's valid actions (invalid
ones prior 0, never selected); a child's value term is its min-max-normalized r + gamma * mean value
once visited, 0 before. Each simulation descends every episode's tree by the highest score until a
node not yet stepped or the horizon; the world model then steps all those nodes of all episodes in
one batched call per tree depth (their parents' KV caches joined), with greedy decoding. The leaf value
is max_a Q of the new frame; the backup adds it to every node on the path, discounting through the
imagined rewards, and updates the episode's min-max statistics with each node's mean. The action is
the root child with the highest mean value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from jowa.models.transformer import KVCache
from jowa.planning.search import WorldModel

C_BASE, C_INIT, MIN_PRIOR = 19652.0, 1.25, 1e-12


@dataclass(eq=False)
class Node:
    action: int
    prior: float
    depth: int
    reward: float = 0.0
    cache: KVCache | None = None  # the parent's context + this action + the imagined frame
    leaf_value: float = 0.0  # max_a Q of this node's frame
    children: list[Node] = field(default_factory=list)
    visits: int = 0
    value_sum: float = 0.0

    @property
    def stepped(self) -> bool:
        return self.cache is not None

    def mean(self) -> float:
        return self.value_sum / self.visits if self.visits else 0.0

    def expand(self, q: torch.Tensor, temperature: float) -> None:
        """Children for every action, with priors softmax(Q / T) (invalid actions: -inf Q, prior 0)."""
        priors = torch.softmax(q.float() / temperature, dim=-1).tolist()
        self.children = [Node(a, p, self.depth + 1) for a, p in enumerate(priors)]


class MinMax:
    """The range of mean values seen in one tree, to normalize value terms to [0, 1]."""

    def __init__(self) -> None:
        self.low, self.high = math.inf, -math.inf

    def update(self, value: float) -> None:
        self.low, self.high = min(self.low, value), max(self.high, value)

    def normalize(self, value: float) -> float:
        return (value - self.low) / (self.high - self.low) if self.high > self.low else value


def select_child(node: Node, stats: MinMax, gamma: float) -> Node:
    scale = math.sqrt(node.visits) * (math.log((node.visits + C_BASE + 1) / C_BASE) + C_INIT)

    def score(child: Node) -> float:
        if child.prior < MIN_PRIOR:
            return -math.inf
        value = stats.normalize(child.reward + gamma * child.mean()) if child.visits else 0.0
        return child.prior * scale / (1 + child.visits) + value

    return max(node.children, key=score)


def backup(path: list[Node], value: float, stats: MinMax, gamma: float) -> None:
    for node in reversed(path):
        node.value_sum += value
        node.visits += 1
        stats.update(node.mean())
        value = node.reward + gamma * value


def mcts(
    world: WorldModel, tokens: torch.Tensor, tasks: torch.Tensor, *, simulations: int, horizon: int,
    temperature: float, gamma: float,
) -> torch.Tensor:  # fmt: skip
    """Actions (B,) for contexts (B, L) of equal length."""
    cache, q = world.root(tokens, tasks)
    roots, stats = [], [MinMax() for _ in range(len(tasks))]
    for row in range(len(tasks)):
        root = Node(action=-1, prior=1.0, depth=0, cache=cache.select(torch.tensor([row], device=q.device)))
        root.expand(q[row], temperature)
        roots.append(root)
    for _ in range(simulations):
        paths = []
        for row, root in enumerate(roots):
            path = [root]
            while path[-1].stepped and path[-1].depth < horizon:
                path.append(select_child(path[-1], stats[row], gamma))
            paths.append(path)
        by_depth: dict[int, list[int]] = {}
        for row, path in enumerate(paths):
            if not path[-1].stepped:
                by_depth.setdefault(path[-1].depth, []).append(row)
        for rows in by_depth.values():
            parents = KVCache.cat([paths[row][-2].cache for row in rows])
            actions = torch.tensor([paths[row][-1].action for row in rows], device=q.device)
            step = world.step(parents, actions, tasks[rows])
            values = step.q.max(dim=-1).values.tolist()
            for i, (row, reward) in enumerate(zip(rows, step.rewards.tolist(), strict=True)):
                leaf = paths[row][-1]
                leaf.reward, leaf.leaf_value = reward, values[i]
                leaf.cache = parents.select(torch.tensor([i], device=q.device))
                if leaf.depth < horizon:
                    leaf.expand(step.q[i], temperature)
        for row, path in enumerate(paths):
            leaf = path[-1]
            value = leaf.leaf_value if leaf is not roots[row] else float(q[row].max())
            backup(path, value, stats[row], gamma)
    chosen = []
    for root in roots:
        visited = [child for child in root.children if child.visits]
        chosen.append(max(visited, key=Node.mean).action)
    return torch.tensor(chosen, device=q.device)
