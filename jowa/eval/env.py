"""Atari environments as the DQN-Replay agents saw them, shared by data generation and evaluation."""

from __future__ import annotations

from typing import Any

from jowa import games
from jowa.errors import JowaError


def make_env(game: str, sticky_actions: float) -> Any:
    """`ALE/{game}-v5` with Dopamine's preprocessing; uint8 84x84 grayscale observations.

    gymnasium's `AtariPreprocessing` (read in the installed gymnasium 1.4.0) does what Dopamine's
    `atari_lib.AtariPreprocessing` did: each step repeats the action for `frame_skip=4` emulator frames
    summing rewards, grabs `ale.getScreenGrayscale` on the last two of them, takes their pixel-wise
    `np.maximum`, and resizes to 84x84 with `cv2.INTER_AREA` as uint8; it stops early at game over (that
    frame is never stored). With `noop_max=0` its reset grabs one frame and zero-fills the other buffer,
    as Dopamine's reset did. Life loss does not end episodes, as in dqn.gin. Sticky actions are applied
    by ALE per emulator frame (`repeat_action_probability`), like gym's v0 envs used by Dopamine.
    ALE's own 108 000-frame limit equals params.yaml's 27 000-step cap. The inner env's `obs_type` only
    sets what it returns per frame, which the wrapper ignores; grayscale is ~10% faster than RGB.
    """
    import ale_py
    import gymnasium

    gymnasium.register_envs(ale_py)
    env_id = games.gym_env_id(game)  # an unknown name fails here, with a suggestion
    try:
        env = gymnasium.make(
            env_id,
            frameskip=1,
            repeat_action_probability=sticky_actions,
            full_action_space=False,
            obs_type="grayscale",  # AtariPreprocessing reads ALE's screen itself; skips an RGB copy a frame
        )
    except gymnasium.error.Error as exc:
        raise JowaError(f"the installed ale-py has no environment {env_id} ({exc}); upgrade ale-py") from exc
    return gymnasium.wrappers.AtariPreprocessing(
        env, noop_max=0, frame_skip=4, screen_size=84, terminal_on_life_loss=False, grayscale_obs=True
    )
