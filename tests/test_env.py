"""The evaluation protocols on real ALE: preprocessing against the raw emulator, settings, caps, seeds."""

from __future__ import annotations

import ale_py
import cv2
import numpy as np
import pytest

from jowa.core import env as evaluation_env
from jowa.core import games
from jowa.core.env import PROTOCOLS, Protocol, UnknownProtocolError, make_env, replay_env
from jowa.core.errors import JowaError
from jowa.core.games import UnknownGameError


def raw_ale(game: str, *, sticky: float, random_seed: int) -> ale_py.ALEInterface:
    """A bare emulator with the same ROM and settings as the env under test."""
    ale = ale_py.ALEInterface()
    ale.setLoggerMode(ale_py.LoggerMode.Error)
    ale.setFloat("repeat_action_probability", sticky)
    ale.setInt("random_seed", random_seed)
    ale.setInt("max_num_frames_per_episode", 0)
    ale.loadROM(ale_py.roms.get_rom_path(games.ale_rom_id(game)))
    return ale


def pooled(screens: list[np.ndarray]) -> np.ndarray:
    """Dopamine's recipe: max of the last two grayscale frames, area-resized to 84x84."""
    return cv2.resize(np.maximum(*screens), (84, 84), interpolation=cv2.INTER_AREA)


def rollout(env, actions: list[int], seed: int | None = None) -> list[np.ndarray]:
    obs, _ = env.reset(seed=seed)
    frames = [obs]
    for action in actions:
        obs, *_ = env.step(action)
        frames.append(obs)
    return frames


def test_jowa_observations_and_rewards_equal_raw_emulator_recipe() -> None:
    game, steps = "Breakout", 150
    env = make_env(game, "jowa", seed=5)
    obs, _ = env.reset()
    ale = raw_ale(game, sticky=0.0, random_seed=env.unwrapped.ale.getInt("random_seed"))
    ale.reset_game()
    screens = [ale.getScreenGrayscale(), np.zeros((210, 160), np.uint8)]
    assert obs.dtype == np.uint8 and obs.shape == (84, 84)
    np.testing.assert_array_equal(obs, pooled(screens))
    valid = np.flatnonzero(games.action_mask(game))  # full-set indices: NOOP, FIRE, RIGHT, LEFT
    rng = np.random.default_rng(0)
    seen, rewards = {obs.tobytes()}, []
    for _ in range(steps):
        action = int(rng.choice(valid))
        obs, reward, terminated, truncated, _ = env.step(action)
        expected_reward = 0
        for frame in range(4):
            expected_reward += ale.act(ale_py.Action(action))  # the full-set index is ALE's action id
            if frame >= 2:
                ale.getScreenGrayscale(screens[frame - 2])
        np.testing.assert_array_equal(obs, pooled(screens))
        assert reward == expected_reward and terminated == ale.game_over() and not truncated
        seen.add(obs.tobytes())
        rewards.append(reward)
    assert len(seen) > steps // 2  # the screen really changes
    assert sum(rewards) > 0  # and rewards were compared, not just zeros
    env.close()


@pytest.mark.parametrize(("name", "sticky", "cap"), [("jowa", 0.0, 108_000), ("standard", 0.25, 27_000)])
def test_protocol_settings_reach_ale(name: str, sticky: float, cap: int) -> None:
    env = make_env("Pong", name)
    ale = env.unwrapped.ale
    assert ale.getFloat("repeat_action_probability") == sticky
    assert ale.getInt("max_num_frames_per_episode") == 0  # no ALE frame limit: only the step cap ends it
    assert env.spec.max_episode_steps == cap
    # ale-py's full action order is the project's 18-action order, so index a means the same everywhere
    assert env.action_space.n == 18 == games.ACTION_MASKS.shape[1]
    assert env.unwrapped.get_action_meanings() == list(games.FULL_ACTIONS)
    assert [a.name for a in ale_py.Action] == list(games.FULL_ACTIONS)
    env.reset(seed=0)
    before = ale.getEpisodeFrameNumber()
    env.unwrapped.step(0)  # the inner env advances one frame: frame skip is the wrapper's alone
    assert ale.getEpisodeFrameNumber() == before + 1
    env.step(0)
    assert ale.getEpisodeFrameNumber() == before + 5
    env.close()


def test_generation_env_keeps_dqn_replay_settings() -> None:
    env = replay_env("Pong", 0.25)
    ale = env.unwrapped.ale
    assert ale.getFloat("repeat_action_probability") == 0.25
    assert ale.getInt("max_num_frames_per_episode") == 108_000  # ALE's own limit = 27 000 steps
    assert env.action_space.n == len(games.MINIMAL_ACTIONS["Pong"])
    assert env.spec.max_episode_steps is None
    env.close()


def test_episode_truncated_at_cap() -> None:
    env = make_env("Pong", "jowa", max_steps=50)
    env.reset(seed=0)
    for t in range(1, 51):
        _, _, terminated, truncated, _ = env.step(0)
        assert not terminated
        assert truncated == (t == 50)
    env.close()


def test_custom_protocol_object() -> None:
    env = make_env("Pong", Protocol("mine", sticky_actions=0.1, max_steps=7))
    assert env.unwrapped.ale.getFloat("repeat_action_probability") == pytest.approx(0.1)
    assert env.spec.max_episode_steps == 7
    env.close()


def test_seeds_under_sticky_actions() -> None:
    # Alternating RIGHT/LEFT: each sticky repeat shifts the paddle, so seeds show in the screen.
    actions = [3, 4] * 40
    runs = {seed: rollout(make_env("Breakout", "standard", seed=seed), actions) for seed in (1, 2)}
    again = rollout(make_env("Breakout", "standard", seed=1), actions)
    via_reset = rollout(make_env("Breakout", "standard"), actions, seed=1)
    for frames in (again, via_reset):
        assert all(np.array_equal(a, b) for a, b in zip(runs[1], frames, strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(runs[1], runs[2], strict=True))


def steps(env, actions: list[int]) -> list[tuple]:
    return [(obs.tobytes(), *rest) for obs, *rest, _ in map(env.step, actions)]


@pytest.mark.parametrize("protocol", ["standard", "jowa"])
def test_a_saved_env_state_continues_exactly_sticky_draws_and_truncation_included(protocol: str) -> None:
    """What an evaluation resumes from: a fresh env (made with another seed) restored to a saved state
    steps as the original, to the cap. Under sticky actions, restoring the emulator alone does not: its
    RNG and the action ALE repeats live outside the plain state."""
    env = make_env("Breakout", protocol, seed=1, max_steps=60)
    env.reset(seed=1)
    history = evaluation_env.EnvHistory(env)
    for action in [3, 4] * 20:
        env.step(action)
        history.record(action)
    saved = evaluation_env.env_state(env, history)
    ale_only = {**saved, "ale": env.unwrapped.ale.cloneState().serialize(), "replay": []}
    later = [3, 4] * 10 + [1]
    original = steps(env, later)
    assert original[-2][3] and not original[-3][3]  # truncated at the cap, step 60
    runs = []
    for state in (saved, ale_only):
        other = make_env("Breakout", protocol, seed=2, max_steps=60)
        other.reset(seed=2)
        evaluation_env.restore_env_state(other, evaluation_env.EnvHistory(other), state)
        runs.append(steps(other, later[:-1]))
    assert runs[0] == original[:-1]
    assert (runs[1] == original[:-1]) == (protocol == "jowa")


def test_protocol_table() -> None:
    assert PROTOCOLS["jowa"] == Protocol("jowa", sticky_actions=0.0, max_steps=108_000)
    assert PROTOCOLS["standard"] == Protocol("standard", sticky_actions=0.25, max_steps=27_000)


def test_bad_names_and_values() -> None:
    with pytest.raises(UnknownGameError, match="NoSuchGame"):
        make_env("NoSuchGame", "jowa")
    with pytest.raises(UnknownProtocolError, match=r"'dopamine'.*'jowa', 'standard'") as info:
        make_env("Pong", "dopamine")
    assert isinstance(info.value, JowaError)
    with pytest.raises(ValueError, match="max_steps"):
        make_env("Pong", "jowa", max_steps=0)
    with pytest.raises(ValueError, match="sticky"):
        replay_env("Pong", 1.5)
