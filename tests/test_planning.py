"""The planner on a tiny random JOWA (CPU, float32): beam search against exhaustive search, batched
against one context at a time, KV-cached imagination against recomputation, valid actions only."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from jowa.core import games
from jowa.models.transformer import KVCache
from jowa.models.world_action import JOWA, JOWAConfig
from jowa.planning.contexts import Contexts
from jowa.planning.mcts import C_BASE, C_INIT, MinMax, Node, backup, mcts, select_child
from jowa.planning.search import WorldModel, beam_search, greedy

ARCH = {"layers": 2, "heads": 2, "width": 32, "q_hidden": 32, "q_ensemble": 2}
VOCAB = 16


@pytest.fixture(scope="module")
def world() -> WorldModel:
    torch.manual_seed(0)
    model = JOWA(JOWAConfig.from_arch(ARCH, obs_vocab=VOCAB))
    with torch.no_grad():  # larger Q and reward logits than the initialisation gives: fewer near-ties
        for parameter in [*model.q_head.parameters(), *model.reward_head.parameters()]:
            parameter.mul_(8)
    model.update_target()
    return WorldModel(model)


def contexts(count: int, steps: int, game: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` random contexts of `steps` steps (valid actions of `game`) and their task ids."""
    generator = torch.Generator().manual_seed(seed)
    valid = torch.tensor(games.ACTION_MASKS[games.task_id(game)]).nonzero().squeeze(1)
    held = Contexts(count, 8, "cpu")
    for row in range(count):
        for _ in range(steps):
            held.observe([row], torch.randint(VOCAB, (1, 36), generator=generator))
            held.act([row], valid[torch.randint(len(valid), (1,), generator=generator)])
        held.observe([row], torch.randint(VOCAB, (1, 36), generator=generator))
    return held.batch(range(count), steps + 1), torch.full((count,), games.task_id(game))


def valid_set(game: str) -> list[int]:
    return [a for a, ok in enumerate(games.ACTION_MASKS[games.task_id(game)]) if ok]


@pytest.mark.parametrize(("game", "width"), [("Pong", 6), ("Atlantis", 4), ("Pong", 9)])
def test_beam_search_with_width_at_least_the_actions_is_exhaustive_search(
    world: WorldModel, game: str, width: int
) -> None:
    tokens, tasks = contexts(3, 5, game)
    gamma = 0.99
    result = beam_search(world, tokens, tasks, width=width, horizon=2, gamma=gamma)
    for row in range(len(tasks)):
        cache, _ = world.root(tokens[row : row + 1], tasks[row : row + 1])
        best_score, best_action = float("-inf"), None
        for first, second in itertools.product(valid_set(game), repeat=2):
            branch = cache.select(torch.tensor([0]))
            r1 = world.step(branch, torch.tensor([first]), tasks[:1]).rewards
            imagined = world.step(branch, torch.tensor([second]), tasks[:1])
            r2, q2 = imagined.rewards, imagined.q
            score = float(r1 + gamma * r2 + gamma**2 * q2.max())
            if score > best_score + 1e-6:
                best_score, best_action = score, first
        assert int(result.first_actions[row]) == best_action
        assert float(result.scores[row]) == pytest.approx(best_score, abs=1e-4)


def test_batched_planning_equals_one_context_at_a_time(world: WorldModel) -> None:
    tokens, tasks = contexts(5, 4, "SpaceInvaders", seed=1)
    batched = beam_search(world, tokens, tasks, width=2, horizon=2, gamma=0.99)
    single = [beam_search(world, tokens[i : i + 1], tasks[i : i + 1], width=2, horizon=2, gamma=0.99)
              for i in range(len(tasks))]  # fmt: skip
    assert batched.first_actions.tolist() == [int(s.first_actions) for s in single]
    # Scores near 15 from 8x-scaled logits carry ~2e-5 of float32 rounding that depends on the batch's
    # kernels (they differ from float64 by as much; in float64 batched and single scores are equal).
    torch.testing.assert_close(batched.scores, torch.cat([s.scores for s in single]), atol=1e-4, rtol=1e-6)
    assert greedy(world, tokens, tasks).tolist() == [
        int(greedy(world, tokens[i : i + 1], tasks[i : i + 1])) for i in range(len(tasks))
    ]


def test_kv_cached_imagination_equals_recomputing_from_scratch(world: WorldModel) -> None:
    tokens, tasks = contexts(4, 3, "Seaquest", seed=2)
    actions = torch.tensor(valid_set("Seaquest")[:4])
    cache, _ = world.root(tokens, tasks)
    step = world.step(cache, actions, tasks)
    rewards, frame, q = step.rewards, step.frames, step.q
    full = torch.cat([tokens, actions.unsqueeze(1), frame], dim=1)  # context, action, imagined frame
    output = world.model(full, tasks)
    # The action's position predicts the reward and the frame's first token; each frame token the next.
    assert (output.reward_logits[:, -1].argmax(-1) - 1).float().tolist() == rewards.tolist()
    predicted = output.obs_logits[:, -36:].argmax(-1)  # slot 36 of the action, then frame tokens 0..34
    assert torch.equal(predicted, frame)
    torch.testing.assert_close(world.q_values(output.q_logits, tasks), q, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("horizon", [0, 1, 2])
def test_invalid_actions_are_never_chosen(world: WorldModel, horizon: int) -> None:
    tokens, tasks = contexts(32, 2, "Pong", seed=3)
    allowed = set(valid_set("Pong"))
    chosen = beam_search(world, tokens, tasks, width=3, horizon=horizon, gamma=0.99).first_actions.tolist()
    assert set(chosen) <= allowed
    assert set(greedy(world, tokens, tasks).tolist()) <= allowed
    with torch.no_grad():
        q = world.q_values(world.model(tokens, tasks).q_logits, tasks)
    assert torch.isinf(q[:, [a for a in range(18) if a not in allowed]]).all()


def test_mcts_batched_equals_one_context_at_a_time_and_takes_valid_actions(world: WorldModel) -> None:
    tokens, tasks = contexts(6, 2, "Pong", seed=4)
    settings = {"simulations": 8, "horizon": 2, "temperature": 0.9, "gamma": 0.99}
    batched = mcts(world, tokens, tasks, **settings).tolist()
    single = [int(mcts(world, tokens[i : i + 1], tasks[i : i + 1], **settings)) for i in range(len(tasks))]
    assert batched == single and set(batched) <= set(valid_set("Pong"))


def test_mcts_backup_discounts_through_imagined_rewards_and_selection_follows_puct() -> None:
    root, child, grandchild = Node(-1, 1.0, 0), Node(3, 0.5, 1, reward=1.0), Node(2, 0.5, 2, reward=0.5)
    stats = MinMax()
    backup([root, child, grandchild], 2.0, stats, gamma=0.9)
    assert grandchild.value_sum == 2.0 and child.value_sum == pytest.approx(0.5 + 0.9 * 2.0)
    assert root.value_sum == pytest.approx(1.0 + 0.9 * (0.5 + 0.9 * 2.0)) and root.visits == 1
    assert (stats.low, stats.high) == (2.0, pytest.approx(1.0 + 0.9 * 2.3))
    # Unvisited children: the larger prior wins; a zero prior (an invalid action) never does.
    parent = Node(-1, 1.0, 0, visits=4)
    parent.children = [Node(0, 0.0, 1), Node(1, 0.3, 1), Node(2, 0.7, 1)]
    assert select_child(parent, MinMax(), 0.99).action == 2
    # A visited child's normalized value (r + gamma * mean) adds to its prior term, divided by 1 + visits.
    parent.children[2].visits, parent.children[2].value_sum = 3, 0.0
    parent.children[1].visits, parent.children[1].value_sum, parent.children[1].reward = 1, 1.0, 1.0
    stats = MinMax()
    stats.update(0.0), stats.update(2.0)
    scale = 2 * (math.log((4 + C_BASE + 1) / C_BASE) + C_INIT)
    assert select_child(parent, stats, 0.99).action == 1  # 0.3 s / 2 + 0.995 > 0.7 s / 4 + 0
    assert 0.3 * scale / 2 + (1 + 0.99) / 2 > 0.7 * scale / 4


def test_kv_caches_of_equal_length_join_and_unequal_ones_are_refused(world: WorldModel) -> None:
    tokens, tasks = contexts(2, 2, "Pong", seed=6)
    cache, _ = world.root(tokens, tasks)
    parts = [cache.select(torch.tensor([1])), cache.select(torch.tensor([0]))]
    joined = KVCache.cat(parts)
    assert joined.length == cache.length
    torch.testing.assert_close(joined.layers[0].keys, cache.layers[0].keys[[1, 0]])
    world.step(parts[0], torch.tensor([0]), tasks[:1])
    with pytest.raises(ValueError, match="different lengths"):
        KVCache.cat(parts)
