"""JOWA losses: the reference fixture's values, the C51 projection by hand, and what the masks exclude."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from jowa.core.games import task_id
from jowa.models.batch import Batch
from jowa.models.losses import critic_losses, project_distribution, task_action_masks, world_model_losses
from jowa.models.world_action import JOWA, JOWAConfig, JOWAOutput
from jowa.weights.checkpoints import from_reference

FIXTURE = Path(__file__).resolve().parent / "reference" / "tiny_fixture"
TINY_ARCH = {"layers": 2, "heads": 2, "width": 64, "q_hidden": 32, "q_ensemble": 2, "q_dropout": 0.0}
ATOMS = JOWAConfig.from_arch(TINY_ARCH).atoms()  # 51 atoms on [-10, 30], spacing 0.8
ALL_VALID = task_id("Alien")  # a game whose minimal action set is all 18 actions
ASSAULT = task_id("Assault")  # 7 valid actions; 5 (DOWN) is not one of them


@pytest.fixture(autouse=True)
def seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def fixture_run() -> tuple[JOWA, dict[str, torch.Tensor], JOWAOutput, dict]:
    model = from_reference(dict(np.load(FIXTURE / "tiny_jowa_state.npz")), TINY_ARCH).eval()
    io = {name: torch.from_numpy(value) for name, value in np.load(FIXTURE / "tiny_io.npz").items()}
    expected = json.loads((FIXTURE / "tiny_fixture.json").read_text())
    with torch.no_grad():
        output = model(io["tokens"], io["tasks"])
    return model, io, output, expected


def fixture_batch(io: dict[str, torch.Tensor], tasks: torch.Tensor | None = None) -> Batch:
    return Batch(
        obs_tokens=io["obs_tokens"],
        actions=io["actions"],
        rewards=io["rewards"],
        ends=io["ends"],
        mask=io["mask_padding"],
        tasks=io["tasks"] if tasks is None else tasks,
    )


def world_losses(io: dict[str, torch.Tensor], output: JOWAOutput, weight: float) -> dict[str, torch.Tensor]:
    return world_model_losses(output, fixture_batch(io), supervised_weight=weight)


def test_batch_tokens_are_the_reference_layout(fixture_run) -> None:
    """Observation tokens then the action, step after step: the reference model's input, exactly."""
    _, io, _, _ = fixture_run
    assert torch.equal(fixture_batch(io).tokens(), io["tokens"])


def test_fixture_world_only_losses(fixture_run) -> None:
    _, io, output, expected = fixture_run
    losses = world_losses(io, output, 1.0)
    for name, value in expected["losses_world_only"].items():
        assert losses[name].item() == pytest.approx(value, rel=1e-4)


def test_fixture_losses_with_critic(fixture_run) -> None:
    _, io, output, expected = fixture_run
    config = expected["critic_train"]
    losses = world_losses(io, output, config["supervised_weight"])
    losses |= critic_losses(
        output, fixture_batch(io), atoms=ATOMS, gamma=config["gamma"], cql_weight=config["cql_weight"]
    )
    assert set(losses) == set(expected["losses_with_critic"])
    for name, value in expected["losses_with_critic"].items():
        assert losses[name].item() == pytest.approx(value, rel=1e-4)


def test_fixture_was_made_with_each_games_action_mask(fixture_run) -> None:
    """Tasks 3, 49, 14, 37 (Assault, SpaceInvaders, Carnival, Phoenix); all-valid masks miss the TD value."""
    _, io, output, expected = fixture_run
    masks = task_action_masks(io["tasks"])
    assert masks.sum(dim=1).tolist() == [7, 6, 6, 8]
    config = expected["critic_train"]
    all_valid = critic_losses(
        output,
        fixture_batch(io, tasks=torch.full_like(io["tasks"], ALL_VALID)),
        atoms=ATOMS,
        gamma=config["gamma"],
        cql_weight=config["cql_weight"],
    )["loss_td_error"].item()
    assert abs(all_valid / expected["losses_with_critic"]["loss_td_error"] - 1) > 1e-4


def test_terminal_transition_projects_onto_the_two_atoms_around_r() -> None:
    next_probabilities = torch.softmax(torch.randn(51), dim=0)
    projected = project_distribution(next_probabilities, torch.tensor(1.0), torch.tensor(0.0), ATOMS)
    expected = torch.zeros(51)
    expected[13], expected[14] = 0.25, 0.75  # z_13 = 0.4, z_14 = 1.2
    torch.testing.assert_close(projected, expected)


def test_projection_shifts_scales_and_clips() -> None:
    one_hot = torch.zeros(51)
    one_hot[25] = 1.0  # z_25 = 10
    half = project_distribution(one_hot, torch.tensor(0.0), torch.tensor(0.5), ATOMS)  # 5 = z_18.75
    assert (half[18].item(), half[19].item()) == pytest.approx((0.25, 0.75), abs=1e-5)
    shifted = project_distribution(one_hot, torch.tensor(0.8), torch.tensor(1.0), ATOMS)
    assert shifted[26].item() == pytest.approx(1.0, abs=1e-5)
    clipped = project_distribution(torch.full((51,), 1 / 51), torch.tensor(100.0), torch.tensor(0.99), ATOMS)
    assert clipped[-1].item() == pytest.approx(1.0, abs=1e-5)


def test_projection_conserves_probability() -> None:
    probabilities = torch.softmax(torch.randn(5, 8, 51), dim=-1)
    projected = project_distribution(probabilities, 3 * torch.randn(5, 8), torch.rand(5, 8), ATOMS)
    torch.testing.assert_close(projected.sum(dim=-1), torch.ones(5, 8))


def one_hot_logits(atom_of_action: dict[int, int], steps: int = 3) -> torch.Tensor:
    """(1 member, 1 row, steps, 18*51) logits whose distributions sit on one atom per action (atom 0 else)."""
    logits = torch.full((1, 1, steps, 18, 51), -1e4)
    logits[..., 0] = 1e4
    for action, atom in atom_of_action.items():
        logits[..., action, :] = -1e4
        logits[..., action, atom] = 1e4
    return logits.view(1, 1, steps, 18 * 51)


def critic(
    online: torch.Tensor,
    target: torch.Tensor,
    ends: tuple[int, ...] = (0, 0, 0),
    valid: tuple[bool, ...] = (True, True, True),
    task: int = ALL_VALID,
    reward: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Critic losses of one row of len(ends) steps, dataset action 12 throughout, gamma 0.99, CQL weight 1."""
    steps = len(ends)
    output = JOWAOutput(torch.empty(0), torch.empty(0), torch.empty(0), online, target)
    batch = Batch(
        obs_tokens=torch.zeros(1, steps, 36, dtype=torch.long),
        actions=torch.full((1, steps), 12),
        rewards=torch.full((1, steps), reward),
        ends=torch.tensor([ends]),
        mask=torch.tensor([valid]),
        tasks=torch.tensor([task]),
    )
    return critic_losses(output, batch, atoms=ATOMS, gamma=0.99, cql_weight=1.0)


def random_logits(steps: int = 3) -> torch.Tensor:
    return torch.randn(1, 1, steps, 18 * 51)


def test_td_value_of_a_non_terminal_step_by_hand() -> None:
    """r = 0, every next action on z_25 = 10: the target 9.9 = z_24.875 is 0.125 on z_24, 0.875 on z_25."""
    online = random_logits(2)
    next_values = one_hot_logits({action: 25 for action in range(18)}, steps=2)
    losses = critic(online, next_values, ends=(0, 0), valid=(True, True))
    taken = online.view(2, 18, 51)[0, 12].softmax(dim=0)
    by_hand = -(0.125 * torch.log(taken[24] + 1e-8) + 0.875 * torch.log(taken[25] + 1e-8))
    assert losses["loss_td_error"].item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_td_value_of_a_terminal_step_by_hand() -> None:
    """A terminal step with r = 1: the target is 0.25 on z_13, 0.75 on z_14, whatever the target head says."""
    online = random_logits(1)
    losses = critic(online, random_logits(1), ends=(1,), valid=(True,), reward=1.0)
    taken = online.view(18, 51)[12].softmax(dim=0)
    by_hand = -(0.25 * torch.log(taken[13] + 1e-8) + 0.75 * torch.log(taken[14] + 1e-8))
    assert losses["loss_td_error"].item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_target_argmax_ignores_invalid_actions() -> None:
    # Action 5 (DOWN, invalid in Assault) has the highest value, action 0 the best valid one.
    online = random_logits()
    assert not task_action_masks(torch.tensor([ASSAULT]))[0, 5]
    masked = critic(online, one_hot_logits({5: 50, 0: 30, 1: 20}), task=ASSAULT)["loss_td_error"]
    best_valid = critic(online, one_hot_logits({0: 30, 1: 20}), task=ASSAULT)["loss_td_error"]
    unmasked = critic(online, one_hot_logits({5: 50, 0: 30, 1: 20}))["loss_td_error"]
    assert masked.item() == pytest.approx(best_valid.item())
    assert unmasked.item() != pytest.approx(masked.item())


def changed_at(logits: torch.Tensor, step: int) -> torch.Tensor:
    changed = logits.clone()
    changed[:, :, step] = torch.randn(18 * 51)
    return changed


@pytest.mark.parametrize(
    ("ends", "valid", "without_target", "with_target"),
    [
        ((0, 0, 0), (True, True, True), 2, 1),  # a row cut without a terminal: its last step has no target
        ((0, 1, 0), (True, True, False), 2, 1),  # a terminal step has a target; the padding after it none
        ((0, 0, 0), (False, True, True), 0, 1),  # left padding
    ],
)
def test_td_loss_counts_only_real_steps_with_a_successor_or_a_terminal(
    ends: tuple[int, ...], valid: tuple[bool, ...], without_target: int, with_target: int
) -> None:
    online, target = random_logits(), random_logits()
    td = critic(online, target, ends, valid)["loss_td_error"].item()
    assert critic(changed_at(online, without_target), target, ends, valid)["loss_td_error"].item() == td
    assert critic(changed_at(online, with_target), target, ends, valid)["loss_td_error"].item() != td
    # The target head is read only at successors of bootstrapping steps, never at the first step, and
    # not after a terminal.
    assert critic(online, changed_at(target, 0), ends, valid)["loss_td_error"].item() == td
    if ends[1]:
        assert critic(online, changed_at(target, 2), ends, valid)["loss_td_error"].item() == td


def test_cql_penalty_by_hand_and_over_all_18_actions() -> None:
    """Q = z of each action's atom: action 12 on z_25 = 10, the rest on z_0 = -10 (or 5 on z_50 = 30)."""
    low = critic(one_hot_logits({12: 25}), one_hot_logits({}), task=ASSAULT)["loss_cql_penalty"]
    q = ATOMS[torch.tensor([0] * 17 + [25])]
    assert low.item() == pytest.approx((torch.logsumexp(q, 0) - 10).item(), rel=1e-5)
    # Action 5 is invalid in Assault, yet its value enters the logsumexp (spec gotcha 7).
    high = critic(one_hot_logits({12: 25, 5: 50}), one_hot_logits({}), task=ASSAULT)["loss_cql_penalty"]
    assert high.item() == pytest.approx(
        (torch.logsumexp(torch.cat([q, ATOMS[-1:]]), 0) - 10).item(), rel=1e-5
    )


def test_cql_penalty_averages_over_real_steps() -> None:
    online = random_logits()
    both = critic(online, random_logits(), valid=(True, True, False))["loss_cql_penalty"]
    each = [
        critic(online[:, :, step : step + 1], random_logits(1), (0,), (True,))["loss_cql_penalty"]
        for step in (0, 1)
    ]
    assert both.item() == pytest.approx((each[0] + each[1]).item() / 2, rel=1e-5)


def test_world_losses_ignore_padded_steps() -> None:
    obs_tokens = torch.randint(0, 2048, (2, 8, 36))
    rewards, ends = torch.randn(2, 8).round(), torch.zeros(2, 8, dtype=torch.long)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0, 6:] = False
    mask[1, :2] = False
    output = JOWAOutput(torch.randn(2, 288, 2048), torch.randn(2, 8, 3), torch.randn(2, 8, 2), None, None)
    actions, tasks = torch.zeros(2, 8, dtype=torch.long), torch.tensor([3, 49])
    before = world_model_losses(
        output, Batch(obs_tokens, actions, rewards, ends, mask, tasks), supervised_weight=1.0
    )
    changed_tokens, changed_rewards = obs_tokens.clone(), rewards.clone()
    changed_tokens[~mask] = 7
    changed_rewards[~mask] = 5.0
    changed = JOWAOutput(
        output.obs_logits, output.reward_logits.clone(), output.end_logits.clone(), None, None
    )
    changed.reward_logits[~mask] = 100.0
    changed.end_logits[~mask] = -100.0
    after = world_model_losses(
        changed, Batch(changed_tokens, actions, changed_rewards, ends, mask, tasks), supervised_weight=0.5
    )
    for name, value in before.items():
        assert after[name].item() == pytest.approx(0.5 * value.item())
    # Row 0 predicts its tokens 1..215 (steps 0-5), row 1 its tokens 72..287 (steps 2-7), each from the
    # logit one position earlier.
    by_hand = torch.nn.functional.cross_entropy(
        torch.cat([output.obs_logits[0, :215], output.obs_logits[1, 71:287]]),
        torch.cat([obs_tokens[0, :6].flatten()[1:], obs_tokens[1, 2:].flatten()]),
    )
    assert before["loss_obs"].item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_critic_gradients_reach_the_backbone_but_not_the_target() -> None:
    model = JOWA(JOWAConfig.from_arch(TINY_ARCH)).train()
    tokens, tasks = torch.randint(0, 18, (2, 296)), torch.tensor([3, 49])
    actions, valid = tokens.view(2, 8, 37)[:, :, 36], torch.ones(2, 8, dtype=torch.bool)
    output = model(tokens, tasks)
    batch = Batch(
        tokens.view(2, 8, 37)[:, :, :36], actions, torch.zeros(2, 8), torch.zeros(2, 8), valid, tasks
    )
    losses = critic_losses(output, batch, atoms=ATOMS, gamma=0.99, cql_weight=0.1)
    sum(losses.values()).backward()
    assert model.transformer.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.q_head.in_weight.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in model.q_target_head.parameters())
