"""Atari environments: the evaluation protocols, and the env DQN-Replay's agents saw (data generation).

Both go through one builder, `_build`: `ALE/{game}-v5` with `frameskip=1` and an explicit sticky-action
probability (the v5 defaults, sticky 0.25 and ALE-side frame skip 4 without max-pool, would silently change
the protocol; spec gotcha 26), wrapped in gymnasium's `AtariPreprocessing`. Read in the installed
gymnasium 1.4.0, that wrapper does what Dopamine's `atari_lib.AtariPreprocessing` and JOWA's
`atari_env_wrapper.py` do: each step repeats the action for 4 emulator frames summing rewards, grabs
`ale.getScreenGrayscale` on the last two, takes their pixel-wise `np.maximum` and resizes to 84x84 with
`cv2.INTER_AREA` as uint8; it stops early at game over (that frame is never used). With `noop_max=0` its
reset grabs one frame and zero-fills the other buffer, as Dopamine's reset did. Life loss does not end
episodes. Sticky actions are applied by ALE per emulator frame (`repeat_action_probability`).

Evaluation steps a plain list of `make_env` environments, not a vector env. Read in ale-py 0.12.1
(`vector_env.py`, and `src/ale/vector/preprocessed_env.cpp` at tag v0.12.1), `AtariVectorEnv` with
`stack_num=1, noop_max=0, use_fire_reset=False, reward_clipping=False, episodic_life=False,
full_action_space=True, maxpool=True, grayscale=True` preprocesses the same way (grayscale palette, max of
the last two of 4 frames, INTER_AREA, zeroed second buffer at reset), but it is not provably the same env:
its `max_num_frames_per_episode` is counted in emulator frames by its own counter, and at the cap it stops
before grabbing the step's last frame, so a truncated episode's final observation differs; an int seed
goes straight to ALE's `random_seed` (`AtariEnv` derives it through `np.random.SeedSequence`), so sticky
streams differ from `make_env`'s for the same seed; it auto-resets (an extra reset step per episode end)
and returns (n, 1, 84, 84). Emulation is cheap next to the model's forward and planning passes, so the
vector env would buy little; gymnasium's `SyncVectorEnv` is just such a list, and `AsyncVectorEnv` adds
processes that 2-core machines cannot use.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jowa.core import games
from jowa.core.errors import JowaError

if TYPE_CHECKING:
    import gymnasium  # imported lazily at run time: ALE is only needed when an env is made

#: Agent steps per evaluation episode in the JOWA paper (`eval/eval.sh`: max_steps=108000); with frame
#: skip 4 this is 432 000 emulator frames, 4x the usual 108k-frame (30-minute) cap.
JOWA_MAX_STEPS = 108_000
#: The usual cap (Machado et al. 2018, Dopamine): 108 000 emulator frames = 27 000 agent steps.
STANDARD_MAX_STEPS = 27_000
FRAME_SKIP = 4


class UnknownProtocolError(JowaError, ValueError):
    """A protocol name that is not in PROTOCOLS."""


@dataclass(frozen=True)
class Protocol:
    """An evaluation protocol: what differs between the paper's evaluation and the standard one."""

    name: str
    sticky_actions: float  # ALE's repeat_action_probability, drawn per emulator frame
    max_steps: int  # agent steps before an episode is truncated


PROTOCOLS: dict[str, Protocol] = {
    # JOWA's evaluation: v4-style, no sticky actions, no no-op starts, 108k agent-step cap.
    "jowa": Protocol("jowa", sticky_actions=0.0, max_steps=JOWA_MAX_STEPS),
    # Machado et al. 2018: sticky actions 0.25, 108k-frame cap.
    "standard": Protocol("standard", sticky_actions=0.25, max_steps=STANDARD_MAX_STEPS),
}


def get_protocol(protocol: Protocol | str) -> Protocol:
    """`protocol` itself, or the named one; an unknown name fails naming the choices."""
    if isinstance(protocol, Protocol):
        return protocol
    if isinstance(protocol, str) and protocol in PROTOCOLS:
        return PROTOCOLS[protocol]
    raise UnknownProtocolError(
        f"unknown evaluation protocol {protocol!r}; expected one of: " + ", ".join(map(repr, PROTOCOLS))
    )


def make_env(
    game: str, protocol: Protocol | str, seed: int | None = None, *, max_steps: int | None = None
) -> gymnasium.Env:
    """An evaluation env under `protocol` with uint8 (84, 84) observations.

    The action space is ALE's full 18-action set, whose order (`ale_py.Action` 0..17, returned by
    `getLegalActionSet`) is `jowa.core.games.FULL_ACTIONS`, so an action index is the same for the env, the
    model and `games.ACTION_MASKS`. An episode ends with `truncated=True` after `max_steps` agent steps
    (default: the protocol's cap); ALE's own per-episode frame limit is switched off so that it can never
    cut an episode first. `seed` seeds ALE (its RNG draws the sticky actions) as `reset(seed=seed)`
    would, so the first plain `reset()` starts the same episode every time.
    """
    game = games.check_game(game)  # an unknown name fails here, with a suggestion
    chosen = get_protocol(protocol)
    cap = chosen.max_steps if max_steps is None else max_steps
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ValueError(f"max_steps must be a positive int, got {cap!r}")
    env = _build(game, sticky_actions=chosen.sticky_actions, full_action_space=True, max_steps=cap)
    if seed is not None:
        env.unwrapped.seed_game(seed)  # what AtariEnv.reset(seed=) does, minus the reset
        env.unwrapped.load_game()  # ALE applies random_seed when it loads the ROM
        env.action_space.seed(seed)
    return env


#: Agent steps an env replays when its state is restored under sticky actions (see `EnvHistory`).
REPLAYED_STEPS = 4
#: Frames of an action that make a fresh ALE repeat it next (each takes it with probability 1 - sticky).
PRIMING_FRAMES = 64


class EnvHistory:
    """The last steps of a `make_env` env under sticky actions: (action, ALE state with RNG after it).

    Under sticky actions ALE repeats the action it last applied, which its saved state leaves out (it
    lives in ALE's StellaEnvironment, not in ALEState). A restored env gets it back by replaying the last
    `REPLAYED_STEPS` steps from the state before them, its RNG included, after priming ALE with the action
    that led there: the replay applies what the original applied unless every sticky draw of those steps
    repeated (0.25 ** 16 = 2e-10). Without sticky actions ALE applies each action as given and nothing is
    kept. Cloning costs about 0.1 ms a step, next to about 1 ms for the step itself.
    """

    def __init__(self, env: gymnasium.Env) -> None:
        self.env = env
        self.sticky = env.unwrapped.ale.getFloat("repeat_action_probability") > 0
        self.steps: deque[tuple[int, Any]] = deque(maxlen=REPLAYED_STEPS + 1)
        self.record(0)  # after reset: ALE's soft reset leaves NOOP (0) as the action it repeats

    def record(self, action: int) -> None:
        """Call after each step with its action."""
        if self.sticky:
            self.steps.append((action, self.env.unwrapped.ale.cloneState(include_rng=True)))


def env_state(env: gymnasium.Env, history: EnvHistory) -> dict[str, Any]:
    """Everything a `make_env` environment's next steps depend on, as plain picklable values.

    ALE's state is cloned with its RNG (`include_rng=True`: the sticky-action draws), with `history`'s
    steps to replay under sticky actions. Beside the emulator, the wrappers hold state of their own:
    `AtariPreprocessing` its two max-pool frames, lives and game-over flag, `TimeLimit` the steps taken
    (the truncation count), `AtariEnv` and the action space their numpy generators.
    """
    pre, limit = _wrapper(env, "AtariPreprocessing"), _wrapper(env, "TimeLimit")
    return {
        "ale": env.unwrapped.ale.cloneState(include_rng=True).serialize(),
        "replay": [(action, state.serialize()) for action, state in history.steps],
        "max_pool": [buffer.copy() for buffer in pre.obs_buffer],
        "lives": pre.lives,
        "game_over": pre.game_over,
        "elapsed_steps": limit._elapsed_steps,
        "np_random": env.unwrapped.np_random.bit_generator.state,
        "action_space": env.action_space.np_random.bit_generator.state,
    }


def restore_env_state(env: gymnasium.Env, history: EnvHistory, state: dict[str, Any]) -> None:
    """Put a reset `make_env` env of the same game and protocol (and its `history`) into `env_state`'s
    state; a replay that does not arrive at the saved emulator state fails."""
    import ale_py

    pre, limit = _wrapper(env, "AtariPreprocessing"), _wrapper(env, "TimeLimit")
    ale = env.unwrapped.ale
    replay = [(action, ale_py.ALEState(saved)) for action, saved in state["replay"]]
    if replay:
        legal = ale.getLegalActionSet()  # the full action set: index = our action
        for _ in range(PRIMING_FRAMES):
            ale.act(legal[replay[0][0]])
        ale.restoreState(replay[0][1])
        for action, _ in replay[1:]:
            pre.step(action)  # the wrapper's frames, draws and early stop, as when it was played
        if ale.cloneState(include_rng=True).serialize() != state["ale"]:
            raise JowaError("replaying an environment's last steps did not reach its saved state")
    else:
        ale.restoreState(ale_py.ALEState(state["ale"]))
    history.steps.clear()
    history.steps.extend(replay)
    for buffer, saved in zip(pre.obs_buffer, state["max_pool"], strict=True):
        buffer[...] = saved
    pre.lives, pre.game_over = state["lives"], state["game_over"]
    limit._elapsed_steps = state["elapsed_steps"]
    env.unwrapped.np_random.bit_generator.state = state["np_random"]
    env.action_space.np_random.bit_generator.state = state["action_space"]


def _wrapper(env: gymnasium.Env, name: str) -> Any:
    """The wrapper of class `name` in `env`'s chain (`make_env` builds the chain, so it is there)."""
    layer: Any = env
    while type(layer).__name__ != name:
        layer = layer.env
    return layer


def replay_env(game: str, sticky_actions: float) -> gymnasium.Env:
    """The env DQN-Replay's agents saw, for data generation: the game's minimal action set and ALE's own
    108 000-frame limit (= 27 000 steps), unchanged so that generated runs stay byte-identical."""
    game = games.check_game(game)
    if not 0.0 <= sticky_actions <= 1.0:
        raise ValueError(f"sticky-action probability must be in [0, 1], got {sticky_actions!r}")
    return _build(game, sticky_actions=sticky_actions, full_action_space=False, max_steps=None)


def _build(
    game: str, *, sticky_actions: float, full_action_space: bool, max_steps: int | None
) -> gymnasium.Env:
    """`ALE/{game}-v5` at frame skip 1 under Dopamine's preprocessing; `max_steps=None` keeps ALE's limit."""
    import ale_py
    import gymnasium

    gymnasium.register_envs(ale_py)
    env_id = games.gym_env_id(game)
    # The v5 default of 108 000 frames stays for data generation; 0 means no limit (ALE's Settings).
    frame_limit = {} if max_steps is None else {"max_num_frames_per_episode": 0}
    try:
        env = gymnasium.make(
            env_id,
            frameskip=1,
            repeat_action_probability=sticky_actions,
            full_action_space=full_action_space,
            obs_type="grayscale",  # AtariPreprocessing reads ALE's screen itself; skips an RGB copy a frame
            **frame_limit,
        )
    except gymnasium.error.Error as exc:
        raise JowaError(f"the installed ale-py has no environment {env_id} ({exc}); upgrade ale-py") from exc
    env = gymnasium.wrappers.AtariPreprocessing(
        env,
        noop_max=0,
        frame_skip=FRAME_SKIP,
        screen_size=84,
        terminal_on_life_loss=False,
        grayscale_obs=True,
    )
    if max_steps is not None:
        env = gymnasium.wrappers.TimeLimit(env, max_episode_steps=max_steps)
    return env
