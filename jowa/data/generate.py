"""Generate DQN-Replay-format runs by playing real Atari games, written exactly as the original writer did.

The public DQN-Replay bucket is no longer readable, so the pipeline needs a way to make runs of its own
that every downstream step (reader, converter, sampler) can consume unchanged. Two parts:

* `DopamineReplayWriter` re-implements what wrote DQN-Replay: Dopamine's 2019 `OutOfGraphReplayBuffer.add`
  (circular buffer, 3 zero pad rows before each episode) plus batch_rl's `OutOfGraphLoggedReplayBuffer`
  logging rule (log after an `add()` that leaves `add_count % C == C-1`, and a final partial log). It is
  checked array-for-array against files written by Dopamine's own code (tests/test_generate.py).
* `generate_run` plays a game with ale-py through gymnasium with Dopamine's preprocessing
  (`jowa.core.env.replay_env`) and a uniform random policy, and writes one run directory atomically.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from jowa.core import games
from jowa.core.atomic import add_overwrite_argument, atomic_dir, refuse_existing
from jowa.core.config import GenerateParams, add_run_arguments, params_help, parse_section
from jowa.core.env import replay_env
from jowa.data.dopamine.format import (
    FILES_PER_SUFFIX,
    STACK_SIZE,
    STORE_KINDS,
    STORE_SPECS,
    UPDATE_HORIZON,
    checkpoint_filename,
    write_array,
)
from jowa.data.manifest import write_manifest

#: gzip level for generated files. Measured on 2000-frame observation arrays of random Pong, SpaceInvaders
#: and Seaquest: level 6 deflates 24k-31k frames/s, while play yields ~1.5k steps/s, so writing a file
#: costs ~5% of the time spent filling it, and its files are 30-50% smaller than level 1's (which is only
#: ~2x faster). Dopamine's level 9 gains <15% more but runs at 3k-6k frames/s: up to half the play time.
GENERATE_COMPRESSLEVEL = 6

log = logging.getLogger(__name__)


class DopamineReplayWriter:
    """Dopamine's circular replay buffer with batch_rl's logging rule, writing DQN-Replay files.

    Rows go to slot `add_count % capacity`. Before the first row of each episode (buffer empty, or the
    slot before the cursor is terminal) three all-zero pad rows are added, as Dopamine did so that the
    first frame stack is `[0, 0, 0, o_0]`. After each whole `add()` call, if `add_count % C == C - 1` the
    buffer is logged under the next suffix. Because one call may add four rows, a wrap whose `C - 1`
    point falls on a pad row is never logged; that is what the 2019 code did, so it is reproduced.

    Arrays are zero-filled (Dopamine used `np.empty`), so never-written slots hold zeros here.
    """

    def __init__(
        self, log_dir: Path | str, capacity: int = 1_000_000, *, compresslevel: int = GENERATE_COMPRESSLEVEL
    ):
        if capacity < STACK_SIZE + UPDATE_HORIZON:
            raise ValueError(f"capacity {capacity} cannot hold stack_size + update_horizon rows")
        self.log_dir = Path(log_dir)
        self.capacity = capacity
        self.compresslevel = compresslevel
        self.add_count = 0
        self.log_count = 0
        self.suffixes: list[int] = []
        self._finished = False
        self._store = {
            kind: np.zeros((capacity, *shape), dtype) for kind, (dtype, shape) in STORE_SPECS.items()
        }

    def cursor(self) -> int:
        """The slot the next row goes to."""
        return self.add_count % self.capacity

    def add(self, observation: np.ndarray, action: int, reward: float, terminal: bool) -> int | None:
        """Add one agent step (plus pads if it starts an episode); return the suffix logged, if any."""
        if self._finished:
            raise RuntimeError("add() after finish(): the final buffer has already been logged")
        observation = np.asarray(observation)
        expected = STORE_SPECS["observation"][1]
        if observation.shape != expected:
            raise ValueError(f"observation shape {observation.shape}, expected {expected}")
        if self._starts_episode():
            for _ in range(STACK_SIZE - 1):
                self._add_row(0, 0, 0.0, 0)
        self._add_row(observation, action, reward, terminal)
        if self.add_count % self.capacity == self.capacity - 1:
            return self._log(self.add_count)
        return None

    def finish(self) -> int:
        """batch_rl's `log_final_buffer`: log with `add_count` set to the cursor; return its suffix."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        return self._log(self.cursor())

    def _starts_episode(self) -> bool:
        # Dopamine's test: empty buffer, or the slot before the cursor (C-1 at cursor 0) is terminal.
        return self.add_count == 0 or self._store["terminal"][self.cursor() - 1] == 1

    def _add_row(self, observation: Any, action: int, reward: float, terminal: bool | int) -> None:
        slot = self.cursor()
        self._store["observation"][slot] = observation
        self._store["action"][slot] = action
        self._store["reward"][slot] = reward
        self._store["terminal"][slot] = terminal
        self.add_count += 1

    def _log(self, logged_add_count: int) -> int:
        """Write the six files of the next suffix; `logged_add_count` is what `add_count` holds then."""
        suffix = self.log_count
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for kind in STORE_KINDS:
            self._write(kind, suffix, self._store[kind])
        self._write("add_count", suffix, np.array(logged_add_count, dtype=np.int64))
        self._write("invalid_range", suffix, invalid_range(logged_add_count % self.capacity, self.capacity))
        self.log_count += 1
        self.suffixes.append(suffix)
        return suffix

    def _write(self, kind: str, suffix: int, array: np.ndarray) -> None:
        write_array(self.log_dir / checkpoint_filename(kind, suffix), array, compresslevel=self.compresslevel)


def invalid_range(cursor: int, capacity: int) -> np.ndarray:
    """Slots around the cursor that Dopamine never samples: `(cursor - update_horizon + i) % C`."""
    span = STACK_SIZE + UPDATE_HORIZON
    return np.array([(cursor - UPDATE_HORIZON + i) % capacity for i in range(span)], dtype=np.int64)


# --------------------------------------------------------------------------------------------- playing


def play_episode(
    env: Any,
    writer: DopamineReplayWriter,
    rng: np.random.Generator,
    *,
    max_episode_steps: int,
    reset_seed: int | None,
    on_step: Callable[[], object] | None = None,
) -> int:
    """Play one episode with a uniform random policy, storing rows as Dopamine's runner did.

    Row t is `(o_t, a_t, clip(r_t), terminal_t)`: the observation the action was chosen on. Game over,
    ALE truncation and the step cap all end the episode with terminal = 1 (Dopamine could not tell them
    apart), and the last observation is never stored. Returns the number of agent steps played.
    """
    n_actions = int(env.action_space.n)
    observation, _ = env.reset(seed=reset_seed)
    for t in range(1, max_episode_steps + 1):
        action = int(rng.integers(n_actions))
        next_observation, reward, terminated, truncated, _ = env.step(action)
        ended = bool(terminated or truncated or t == max_episode_steps)
        writer.add(observation, action, float(np.clip(reward, -1.0, 1.0)), ended)
        if on_step is not None:
            on_step()
        if ended:
            return t
        observation = next_observation
    raise AssertionError("unreachable: the last step always ends the episode")


def run_seed(seed: int, game: str, run: int) -> int:
    """A distinct, reproducible seed for each generated (game, run), from params.yaml's base seed."""
    return int(np.random.SeedSequence([seed, games.task_id(game), run]).generate_state(1)[0])


def generate_run(
    game: str,
    out_dir: Path,
    *,
    steps_per_run: int,
    capacity: int,
    sticky_actions: float,
    max_episode_steps: int,
    seed: int,
    progress: bool,
    overwrite: bool = False,
) -> dict:
    """Play `game` at random and write a DQN-Replay run directory (`.../{Game}/{run}/replay_logs`).

    Plays until at least `steps_per_run` agent steps are stored and the running episode has ended
    (Dopamine's runner finishes the episode in progress), then logs the final partial buffer.
    Deterministic given `seed` (the run's own, see `run_seed`): it seeds the first env reset (ALE's
    sticky-action RNG included) and the action RNG. The run is built in a temporary sibling and renamed
    into place at the end; an existing `out_dir` is refused unless `overwrite`. Settings are the
    `data.generate` section's, validated there.
    """
    out_dir = Path(out_dir)
    refuse_existing(out_dir, overwrite=overwrite)
    env = replay_env(game, sticky_actions)  # before touching the disk: an unknown game creates nothing
    started = time.perf_counter()
    try:
        with atomic_dir(out_dir, overwrite=overwrite) as tmp:
            writer = DopamineReplayWriter(tmp, capacity)
            played, episodes = _play_steps(
                env, writer, steps_per_run, seed, max_episode_steps, progress, game
            )
            writer.finish()
    finally:
        env.close()
    elapsed = time.perf_counter() - started
    return {
        "game": game,
        "out_dir": str(out_dir),
        "steps": played,
        "episodes": episodes,
        "suffixes": list(writer.suffixes),
        "files": len(writer.suffixes) * FILES_PER_SUFFIX,
        "add_count": writer.add_count,
        "capacity": capacity,
        "seed": seed,
        "sticky_actions": sticky_actions,
        "max_episode_steps": max_episode_steps,
        "seconds": round(elapsed, 3),
        "steps_per_s": round(played / elapsed, 1) if elapsed > 0 else None,
    }


def _play_steps(
    env: Any,
    writer: DopamineReplayWriter,
    steps: int,
    seed: int,
    max_episode_steps: int,
    progress: bool,
    game: str,
) -> tuple[int, int]:
    """Play whole episodes until `steps` agent steps are stored; return (steps played, episodes)."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    played = episodes = 0
    with tqdm(total=steps, disable=not progress, unit="step", desc=f"generate {game}") as bar:
        while played < steps:
            reset_seed = seed if episodes == 0 else None  # reseeding later resets would replay episode 1
            played += play_episode(
                env,
                writer,
                rng,
                max_episode_steps=max_episode_steps,
                reset_seed=reset_seed,
                on_step=bar.update,
            )
            episodes += 1
    return played, episodes


# ------------------------------------------------------------------------------ `jowa data generate`


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", required=True, help=params_help(GenerateParams, "data.generate"))
    add_run_arguments(parser)
    add_overwrite_argument(parser)


def main(args: argparse.Namespace) -> None:
    params = parse_section(args.params, GenerateParams, "data.generate")
    refuse_existing(args.out, args.manifest, overwrite=args.overwrite)
    if args.overwrite:  # the manifest says "complete": it must not outlive the run it described
        args.manifest.unlink(missing_ok=True)
    summary = generate_run(
        args.game,
        args.out,
        steps_per_run=params.steps_per_run,
        capacity=params.capacity,
        sticky_actions=params.sticky_actions,
        max_episode_steps=params.max_episode_steps,
        seed=run_seed(params.seed, args.game, args.run),
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    write_manifest(args.out, args.manifest)
    log.info("generated %s", summary)
