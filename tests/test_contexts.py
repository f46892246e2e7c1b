"""The planner's contexts on the device (`jowa.planning.contexts`) against the host-side assembly they
replaced: the same token batches while episodes play and end, ε-random actions included, and saved
states (also in the host-side layout earlier versions wrote) that resume to the same batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from jowa.core.config import load_params
from jowa.models.tokenizer import Tokenizer
from jowa.models.world_action import JOWA
from jowa.planning import play as play_module
from jowa.planning.contexts import Contexts
from jowa.planning.search import WorldModel
from jowa.train.pretrain import model_config
from jowa.train.train_tokenizer import tokenizer_config

ROOT = Path(__file__).resolve().parents[1]


def host_batch(steps: list[tuple[list[int], int]], last: int) -> list[int]:
    """What the host-side contexts gave: the last `last` held steps, each frame's tokens and then its
    action, except the current (last) step, whose action is not taken yet."""
    kept = steps[-last:]
    tokens: list[int] = []
    for frame, action in kept[:-1]:
        tokens += [*frame, action]
    return tokens + kept[-1][0]


def test_a_context_is_the_last_steps_with_the_current_action_missing() -> None:
    contexts = Contexts(2, 3, "cpu")
    for step in range(5):
        contexts.observe([0], torch.full((1, 36), step))
        contexts.act([0], torch.tensor([10 + step]))
    contexts.observe([0], torch.full((1, 36), 5))
    tokens = contexts.batch([0], 3)[0]
    assert tokens.shape == (3 * 37 - 1,) and contexts.held == [3, 0]
    assert tokens[:37].tolist() == [3] * 36 + [13] and tokens[37:74].tolist() == [4] * 36 + [14]
    assert tokens[74:].tolist() == [5] * 36
    assert contexts.batch([0], 1)[0].tolist() == [5] * 36
    with pytest.raises(ValueError, match=r"episodes \[1\] hold fewer than 1 of at most 3 steps"):
        contexts.batch([0, 1], 1)


def test_play_gives_the_planner_the_batches_host_assembly_gives_as_episodes_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Real ALE (Berzerk ends quickly), a tiny random JOWA, ε = 0.5: every batch the planner got equals the
    host-side assembly of the frames the tokenizer encoded and the actions the episodes took."""
    params = load_params(ROOT / "config" / "smoke.yaml")
    torch.manual_seed(0)
    model = JOWA(model_config(params.models["tiny-s"], params.pretrain, params.tokenizer.arch.vocab_size, 36))
    tokenizer = Tokenizer(tokenizer_config(params.tokenizer)).eval()
    encoded: list[torch.Tensor] = []
    batches: list[torch.Tensor] = []
    encode, choose = tokenizer.encode, play_module.choose

    def recording_encode(frames: torch.Tensor) -> torch.Tensor:
        encoded.append(encode(frames).clone())
        return encoded[-1]

    def recording_choose(world: WorldModel, tokens: torch.Tensor, *args: object) -> torch.Tensor:
        batches.append(tokens.clone())
        return choose(world, tokens, *args)

    monkeypatch.setattr(tokenizer, "encode", recording_encode)
    monkeypatch.setattr(play_module, "choose", recording_choose)
    eval_params = params.eval.model_copy(update={"episodes": 3, "max_steps": 300, "epsilon": 0.5})
    episodes = play_module.play(WorldModel(model), tokenizer, "Berzerk", eval_params, None, progress=False)
    lengths = episodes.lengths
    assert len(set(lengths)) == 3 and episodes.truncated.count(False) >= 2  # they end one after another

    context = eval_params.greedy_context
    steps: list[list[tuple[list[int], int]]] = [[] for _ in lengths]
    assert len(encoded) == len(batches) == max(lengths)  # one group per step: equal lengths
    for t, (frames, batch) in enumerate(zip(encoded, batches, strict=True)):
        active = [i for i, length in enumerate(lengths) if length > t]
        assert len(frames) == len(batch) == len(active)
        for row, index in enumerate(active):
            steps[index].append((frames[row].tolist(), episodes.actions[index][t]))
            assert batch[row].tolist() == host_batch(steps[index], min(context, t + 1)), (t, index)
    assert batches[2].shape[1] == 3 * 37 - 1 and batches[-1].shape[1] == context * 37 - 1


def test_a_saved_state_resumes_to_the_same_batches_also_in_the_host_side_layout() -> None:
    """Episodes holding unequal steps (the `groups` case of play); the state round-trips, and a state in
    the layout the host-side contexts saved (a list of (frame tokens, action) per episode, the current
    step's action None) loads to the same batches."""
    rng = np.random.default_rng(0)
    lengths, capacity = [0, 1, 2, 5, 7], 4
    saved = [
        [(torch.from_numpy(rng.integers(0, 512, 36)), int(rng.integers(18))) for _ in range(length)]
        for length in lengths
    ]
    saved[3][-1] = (saved[3][-1][0], None)
    contexts = Contexts(len(lengths), capacity, "cpu")
    contexts.load_state_dict(saved)
    assert contexts.held == [0, 1, 2, 4, 4]
    as_host = [[(frame.tolist(), action or 0) for frame, action in episode] for episode in saved]
    for index, held in ((1, 1), (2, 2), (2, 1), (3, 4), (4, 3)):
        assert contexts.batch([index], held)[0].tolist() == host_batch(as_host[index], held)
    both = contexts.batch([3, 4], 4)
    assert [row.tolist() for row in both] == [host_batch(as_host[3], 4), host_batch(as_host[4], 4)]

    again = Contexts(len(lengths), capacity, "cpu")
    again.load_state_dict(contexts.state_dict())
    assert again.held == contexts.held and torch.equal(again.tokens, contexts.tokens)
    assert [len(steps) for steps in contexts.state_dict()] == [0, 1, 2, 4, 4]
    with pytest.raises(ValueError, match="a saved state of 4 contexts for 5 episodes"):
        again.load_state_dict(saved[:4])
