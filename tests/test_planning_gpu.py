"""The planner on CUDA (`pytest -m gpu`; skipped without a GPU): the CPU equalities again, with CUDA graphs
on, graphs against eager passes, no host sync inside a planner call, and one per agent step of play."""

from __future__ import annotations

import copy
import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_planning import contexts, valid_set

from jowa.core import games
from jowa.core.config import load_params
from jowa.models.tokenizer import Tokenizer
from jowa.models.world_action import JOWA, JOWAConfig
from jowa.planning.params import PlannerSettings
from jowa.planning.play import Episodes, FrameUpload, _agent_step
from jowa.planning.search import WorldModel, beam_search, greedy
from jowa.train.train_tokenizer import tokenizer_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

ARCH = {"layers": 2, "heads": 2, "width": 32, "q_hidden": 32, "q_ensemble": 2}
VOCAB = 16
ROOT = Path(__file__).resolve().parents[1]


def tiny_model() -> JOWA:
    torch.manual_seed(0)
    model = JOWA(JOWAConfig.from_arch(ARCH, obs_vocab=VOCAB))
    with torch.no_grad():  # larger Q and reward logits than the initialisation gives: fewer near-ties
        for parameter in [*model.q_head.parameters(), *model.reward_head.parameters()]:
            parameter.mul_(8)
    model.update_target()
    return model.cuda()


def on_gpu(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [tensor.cuda() for tensor in tensors]


@pytest.mark.parametrize("bf16", [False, True])
def test_graphed_planning_equals_eager_planning(bf16: bool) -> None:
    model = tiny_model()
    eager, graphed = WorldModel(copy.deepcopy(model), bf16=bf16), WorldModel(model, bf16=bf16, graphs=True)
    for steps, seed in ((4, 1), (4, 2), (2, 3)):  # the second call replays; the third has a shorter context
        tokens, tasks = on_gpu(*contexts(5, steps, "SpaceInvaders", seed=seed))
        plans = [
            beam_search(world, tokens, tasks, width=2, horizon=2, gamma=0.99) for world in (eager, graphed)
        ]
        assert torch.equal(plans[0].actions, plans[1].actions)
        assert torch.equal(plans[0].frames, plans[1].frames)
        torch.testing.assert_close(plans[0].scores, plans[1].scores, atol=1e-5, rtol=1e-5)
    assert sorted(graphed._step_graphs) == [5 * 2, 5 * 4]  # one graph per batch size (depth), reused


def test_graphed_batched_planning_equals_one_context_at_a_time() -> None:
    world = WorldModel(tiny_model(), graphs=True)
    tokens, tasks = on_gpu(*contexts(5, 4, "SpaceInvaders", seed=1))
    batched = beam_search(world, tokens, tasks, width=2, horizon=2, gamma=0.99)
    single = [beam_search(world, tokens[i : i + 1], tasks[i : i + 1], width=2, horizon=2, gamma=0.99)
              for i in range(len(tasks))]  # fmt: skip
    assert batched.first_actions.tolist() == [int(s.first_actions) for s in single]
    torch.testing.assert_close(batched.scores, torch.cat([s.scores for s in single]), atol=1e-4, rtol=1e-6)
    assert greedy(world, tokens, tasks).tolist() == [
        int(greedy(world, tokens[i : i + 1], tasks[i : i + 1])) for i in range(len(tasks))
    ]


def test_graphed_beam_search_with_width_at_least_the_actions_is_exhaustive_search() -> None:
    world, game, gamma = WorldModel(tiny_model(), graphs=True), "Pong", 0.99
    tokens, tasks = on_gpu(*contexts(3, 5, game))
    result = beam_search(world, tokens, tasks, width=6, horizon=2, gamma=gamma)
    for row in range(len(tasks)):
        cache, _ = world.root(tokens[row : row + 1], tasks[row : row + 1])
        best_score, best_action = float("-inf"), None
        for first, second in itertools.product(valid_set(game), repeat=2):
            branch = cache.select(torch.tensor([0], device="cuda"))
            r1 = world.step(branch, torch.tensor([first], device="cuda"), tasks[:1]).rewards
            imagined = world.step(branch, torch.tensor([second], device="cuda"), tasks[:1])
            score = float(r1 + gamma * imagined.rewards + gamma**2 * imagined.q.max())
            if score > best_score + 1e-6:
                best_score, best_action = score, first
        assert int(result.first_actions[row]) == best_action
        assert float(result.scores[row]) == pytest.approx(best_score, abs=1e-4)


@pytest.mark.parametrize("graphs", [False, True])
def test_a_planner_call_makes_no_host_sync(graphs: bool) -> None:
    world = WorldModel(tiny_model(), bf16=True, graphs=graphs)
    tokens, tasks = on_gpu(*contexts(4, 4, "Seaquest", seed=5))
    beam_search(world, tokens, tasks, width=2, horizon=2, gamma=0.99)  # captures the graph
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        plan = beam_search(world, tokens, tasks, width=2, horizon=2, gamma=0.99)
        actions = greedy(world, tokens, tasks)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert set(plan.first_actions.tolist()) | set(actions.tolist()) <= set(valid_set("Seaquest"))


@pytest.mark.parametrize("planner", ["greedy", "beam"])
def test_an_agent_step_waits_for_the_device_once(planner: str) -> None:
    """Frames up from pinned memory, tokens, contexts and batches on the device, ε applied on the host: the
    one synchronizing call of an agent step is the chosen actions' copy to the host (the `.tolist()`).
    `set_sync_debug_mode` warns on every synchronizing call, blocking uploads from pageable memory too."""
    params = load_params(ROOT / "config" / "smoke.yaml")
    torch.manual_seed(0)
    model = JOWA(JOWAConfig.from_arch(ARCH, obs_vocab=params.tokenizer.arch.vocab_size)).cuda()
    world = WorldModel(model, bf16=True, graphs=True)
    tokenizer = Tokenizer(tokenizer_config(params.tokenizer)).cuda().eval()
    settings = PlannerSettings(beam_width=2, horizon=2, context=4) if planner == "beam" else None
    context = params.eval.greedy_context if settings is None else settings.context
    steps = context if settings is None else min(context, 8 - settings.horizon)
    eval_params = params.eval.model_copy(update={"episodes": 3, "epsilon": 0.5})
    episodes = Episodes("Pong", eval_params, context, world.device)
    upload = FrameUpload(3, episodes.frames[0].shape, world.device)
    task = games.task_id("Pong")
    valid, rng = np.flatnonzero(games.ACTION_MASKS[task]), np.random.default_rng(0)

    def agent_step() -> int:
        return _agent_step(world, tokenizer, episodes, upload, steps, task, valid, rng, eval_params, settings,
                           None)  # fmt: skip

    agent_step()  # the first kernels, the graph captures
    torch.cuda.synchronize()
    syncs = []
    for _ in range(3):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                assert agent_step() == 3
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs.append(sum("synchronizing CUDA operation" in str(warning.message) for warning in caught))
    assert syncs == [1, 1, 1]
    assert episodes.lengths == [4, 4, 4] and episodes.contexts.held == [min(4, context)] * 3
