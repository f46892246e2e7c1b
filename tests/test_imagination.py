"""Imagined fine-tuning segments (tiny random JOWA, CPU): they line up as real segments do, stop at a
predicted termination, and the FIFO buffer keeps and restores them."""

from __future__ import annotations

import pytest
import torch

from jowa.core import games
from jowa.models.batch import Batch
from jowa.models.world_action import JOWA, JOWAConfig
from jowa.planning.search import WorldModel
from jowa.train.imagination import ImaginedBuffer, imagine, usable_prompts

ARCH = {"layers": 2, "heads": 2, "width": 32, "q_hidden": 32, "q_ensemble": 2}
VOCAB = 16
GAME = "Seaquest"


def world(seed: int = 0) -> WorldModel:
    torch.manual_seed(seed)
    return WorldModel(JOWA(JOWAConfig.from_arch(ARCH, obs_vocab=VOCAB)))


def prompts(rows: int, seed: int = 0) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    valid = torch.tensor(games.ACTION_MASKS[games.task_id(GAME)]).nonzero().squeeze(1)
    return Batch(
        obs_tokens=torch.randint(VOCAB, (rows, 8, 36), generator=generator),
        actions=valid[torch.randint(len(valid), (rows, 8), generator=generator)],
        rewards=torch.randint(-1, 2, (rows, 8), generator=generator).float(),
        ends=torch.zeros(rows, 8, dtype=torch.long),
        mask=torch.ones(rows, 8, dtype=torch.bool),
        tasks=torch.full((rows,), games.task_id(GAME)),
    )


@pytest.mark.parametrize("horizon", [1, 2, 3])
def test_imagined_segments_line_up_action_reward_and_next_observation_as_real_ones(horizon: int) -> None:
    wm, real = world(), prompts(3)
    with torch.no_grad():
        wm.model.end_head[-1].bias.copy_(torch.tensor([50.0, -50.0]))  # no predicted termination
    segment = imagine(wm, real, horizon=horizon, width=2, gamma=0.99)
    assert segment.mask.all() and not segment.ends.any()
    kept = 8 - horizon
    assert torch.equal(segment.obs_tokens[:, :kept], real.obs_tokens[:, :kept])
    assert torch.equal(segment.actions[:, : kept - 1], real.actions[:, : kept - 1])
    assert torch.equal(segment.rewards[:, : kept - 1], real.rewards[:, : kept - 1])
    with torch.no_grad():
        output = wm.model(segment.tokens(), segment.tasks)
    # In a real segment, step t's action position predicts r_t and the first token of frame t + 1,
    # and frame t + 1's tokens predict each other: the imagined steps must read the same way.
    rewards = output.reward_logits.argmax(-1).float() - 1  # (B, 8), one per action position
    assert torch.equal(rewards[:, kept - 1 : 7], segment.rewards[:, kept - 1 : 7])
    # 36 obs-head positions per step (slots 0..34 and the action's 36): frame t's tokens are predicted
    # by step t - 1's action position and frame t's own slots 0..34, positions 36 t - 1 .. 36 t + 34.
    predicted = output.obs_logits.argmax(-1)
    assert torch.equal(predicted[:, 36 * kept - 1 : 36 * 8 - 1], segment.obs_tokens[:, kept:].flatten(1))
    last_q = wm.q_values(output.q_logits, segment.tasks)  # the last frame's Q position
    assert torch.equal(segment.actions[:, -1], last_q.argmax(-1))
    valid = torch.tensor(games.ACTION_MASKS[games.task_id(GAME)]).bool()
    assert valid[segment.actions[segment.mask]].all()


def test_imagination_stops_at_a_predicted_termination() -> None:
    wm = world()
    with torch.no_grad():
        wm.model.end_head[-1].bias.copy_(torch.tensor([-50.0, 50.0]))  # every step predicts "episode over"
    segment = imagine(wm, prompts(2), horizon=2, width=2, gamma=0.99)
    assert segment.ends[:, 5].tolist() == [1, 1]  # the first imagined step ends the episode
    assert segment.mask[:, :6].all() and not segment.mask[:, 6:].any()
    assert not segment.obs_tokens[:, 6:].any() and not segment.actions[:, 6:].any()


def test_only_prompts_with_real_non_terminal_steps_are_used() -> None:
    batch = prompts(3)
    batch.mask[1, 5:] = False
    batch.ends[2, 3] = 1
    assert usable_prompts(batch, horizon=2).tolist() == [True, False, False]
    assert usable_prompts(batch, horizon=3).tolist() == [True, True, False]


def test_the_buffer_is_a_fifo_that_resumes_exactly() -> None:
    buffer = ImaginedBuffer(capacity=5)
    for seed in range(3):
        buffer.add(prompts(2, seed=seed))  # 6 segments into 5 slots: the first one is overwritten
    assert len(buffer) == 5 and buffer.cursor == 1
    assert torch.equal(buffer.segments.obs_tokens[0], prompts(2, seed=2).obs_tokens[1])
    restored = ImaginedBuffer(capacity=5)
    restored.load_state_dict(buffer.state_dict())
    one = buffer.sample(4, torch.Generator().manual_seed(1))
    two = restored.sample(4, torch.Generator().manual_seed(1))
    assert all(torch.equal(getattr(one, f), getattr(two, f)) for f in one.__dataclass_fields__)
    assert restored.cursor == 1 and len(restored) == 5
