"""Subsampling: from whole DQN-Replay runs to a per-game training store of whole episodes.

Differences from the reference's `downsample.py`, on purpose:
- runs are stitched in time order first (`jowa.data.dopamine.replay`), so an episode crossing a file
boundary is
  one episode, padding and stale rows are never steps, and episodes cut by a gap or by the run's end
  are skipped instead of being passed off as whole;
- episodes are drawn without replacement (the reference draws with replacement and stores duplicates)
  until the transition budget is reached, so every stored episode is distinct.
Run selection does match the reference: its legacy-RNG draw, seed 0, in game order, picks the same runs.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from jowa.core import games
from jowa.core.atomic import add_overwrite_argument, refuse_existing
from jowa.core.config import Game, RunId, SubsampleParams, argument_type, params_help, parse_section
from jowa.core.errors import JowaError, MissingInputError
from jowa.data.episodes import Episode
from jowa.data.runs import Run, open_run
from jowa.data.store import StoreWriter, write_store
from jowa.data.verify import verify_runs

log = logging.getLogger(__name__)


class SubsampleError(JowaError, ValueError):
    """The runs cannot give the store asked for: no whole episode in the window, or another game's actions."""


def pick_runs(
    game_order: Sequence[str], runs: Sequence[int], k: int, seed: int
) -> dict[str, tuple[int, ...]]:
    """The `k` runs of each game, drawn without replacement by one legacy-RNG stream in game order.

    This is the reference's procedure: with seed 0 and its 15 pretraining games it gives Assault {1, 3},
    Atlantis {1, 3}, BeamRider {2, 4}, ...
    """
    if k > len(runs):
        raise ValueError(f"cannot pick {k} runs per game from runs {list(runs)}")
    rng = np.random.RandomState(seed)
    pool = np.asarray(sorted(runs))
    return {game: tuple(sorted(int(r) for r in rng.choice(pool, k, replace=False))) for game in game_order}


@dataclass(frozen=True)
class Candidate:
    run: int
    episode: Episode


def eligible_episodes(runs: dict[int, Run], window: tuple[float, float] = (0.0, 1.0)) -> list[Candidate]:
    """Whole episodes whose first step lies in the [start, end) fraction of their run's checkpoints."""
    lo, hi = window
    out = []
    for run_id, run in sorted(runs.items()):
        for episode in run.whole_episodes():
            fraction = episode.position / run.num_checkpoints
            if lo <= fraction < hi or (hi >= 1.0 and fraction >= lo):
                out.append(Candidate(run_id, episode))
    return out


def select_episodes(
    candidates: list[Candidate], transitions: int, rng: np.random.Generator
) -> list[Candidate]:
    """Uniformly random episodes, without replacement, until `transitions` steps are reached; time-ordered."""
    order = rng.permutation(len(candidates))
    lengths = np.array([candidates[i].episode.length for i in order], dtype=np.int64)
    take = int(np.searchsorted(np.cumsum(lengths), transitions) + 1)
    chosen = [candidates[i] for i in order[:take]]
    return sorted(chosen, key=lambda c: (c.run, c.episode.start_row))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_store(
    *,
    game: str,
    replay_dirs: dict[int, Path],
    manifests: dict[int, Path],
    out: Path,
    transitions_per_game: int,
    seed: int,
    window: tuple[float, float] = (0.0, 1.0),
    window_name: str = "checkpoint window",
    extra_meta: dict[str, Any] | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Sample whole episodes of `game` from the given runs and write a training store at `out`, atomically.

    `transitions_per_game` is a minimum: episodes are drawn whole until it is reached. An existing
    store is refused unless `overwrite`. Every run's actions are checked against the game's action set
    before any frame is read; `window_name` names the window (its params key) in errors.
    """
    games.check_game(game)
    runs = {run: open_run(path) for run, path in sorted(replay_dirs.items())}
    check_actions(game, runs)
    candidates = eligible_episodes(runs, window)
    if not candidates:
        raise SubsampleError(
            f"{game}: no whole episode starts within {window_name} {list(window)} of run "
            f"{'; run '.join(_window_summary(i, run) for i, run in runs.items())}; "
            "expected at least one: widen the window or use longer runs"
        )
    rng = np.random.default_rng([seed, games.task_id(game)])
    chosen = select_episodes(candidates, transitions_per_game, rng)
    total = sum(c.episode.length for c in chosen)
    if total < transitions_per_game:
        log.warning(
            "%s: only %d steps of whole episodes available, %d asked for", game, total, transitions_per_game
        )

    by_run = {run: [c.episode for c in chosen if c.run == run] for run in runs}
    with write_store(out, total, overwrite=overwrite) as store:
        actions, rewards, terminals = _copy_episodes(game, by_run, runs, store, progress)
        episode_starts = np.concatenate([[0], np.cumsum([c.episode.length for c in chosen])])
        meta = store.finish(
            actions=actions,
            rewards=rewards,
            terminals=terminals,
            episode_starts=episode_starts,
            meta={
                "game": game,
                "task_id": games.task_id(game),
                "runs": sorted(replay_dirs),
                "source_layout": ",".join(sorted({r.layout for r in runs.values()})),
                "seed": seed,
                "checkpoint_window": list(window),
                "transitions_requested": transitions_per_game,
                "episodes_available": len(candidates),
                "episodes_per_run": {str(r): sum(c.run == r for c in chosen) for r in sorted(replay_dirs)},
                "truncated_skipped": sum(e.truncated for r in runs.values() for e in r.episodes),
                "gap_rows": {str(i): sum(b - a for a, b in r.gaps) for i, r in runs.items()},
                "source_manifests": {str(r): _sha256(p) for r, p in sorted(manifests.items())},
                **(extra_meta or {}),
            },
        )
    return meta


def check_actions(game: str, runs: dict[int, Run]) -> None:
    """Every stored action must index `game`'s minimal action set; checked from the runs' indexes."""
    num_actions = len(games.minimal_to_full(game))
    for run in runs.values():
        found = run.action_outside(num_actions)
        if found is not None:
            where, action = found
            raise SubsampleError(
                f"{where}: action {action} is outside {game}'s minimal action set of {num_actions} actions "
                f"(0 to {num_actions - 1}): is this run really {game}?"
            )


def _window_summary(run_id: int, run: Run) -> str:
    """Where a run's whole episodes start, for the error that none starts in the window."""
    starts = sorted({e.position for e in run.whole_episodes()})
    where = f"checkpoints {starts[0]} to {starts[-1]}" if starts else "no checkpoint"
    return f"{run_id} ({run.replay_dir}: {run.num_checkpoints} checkpoints, whole episodes start in {where})"


def _copy_episodes(
    game: str, by_run: dict[int, list[Episode]], runs: dict[int, Run], store: StoreWriter, progress: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames into the store; actions mapped to the full 18-way index, rewards clipped, terminals."""
    to_full = games.minimal_to_full(game)
    bar = tqdm(
        total=sum(run.bytes_to_read(by_run[i]) for i, run in runs.items()),
        unit="B",
        unit_scale=True,
        desc="reading observations",
        disable=not progress,
        file=sys.stderr,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    )
    parts, dest = [], 0
    with bar:
        for run_id, run in runs.items():
            if not by_run[run_id]:
                continue
            rows = run.extract(by_run[run_id], store.write_frames, dest_start=dest, on_bytes=bar.update)
            dest += len(rows.actions)
            parts.append((to_full[rows.actions], np.clip(rows.rewards, -1.0, 1.0), rows.terminals))
        bar.total = bar.n  # a DQN-Replay file is read only up to its last wanted row
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))


# ---------------------------------------------------------------------------- `jowa data subsample`


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """The inputs and output of a store-building command; `jowa data finetune-set` shares them."""
    parser.add_argument(
        "--game", type=argument_type(Game, "game"), required=True, help="DQN-Replay game name"
    )
    parser.add_argument(
        "--runs",
        type=argument_type(RunId, "run"),
        nargs="+",
        required=True,
        help="run ids (1 to 5) to draw from",
    )
    parser.add_argument(
        "--replay-dirs",
        type=Path,
        nargs="+",
        required=True,
        help="each run's replay_logs directory, in --runs order",
    )
    parser.add_argument(
        "--manifests", type=Path, nargs="+", required=True, help="each run's manifest TSV, in --runs order"
    )
    parser.add_argument("--out", type=Path, required=True, help="the store directory to create")
    add_overwrite_argument(parser)


def build_store_from_args(
    args: argparse.Namespace,
    *,
    transitions_per_game: int,
    seed: int,
    window: tuple[float, float] = (0.0, 1.0),
    window_name: str = "checkpoint window",
    extra_meta: dict[str, Any],
) -> None:
    """`build_store` from the arguments of `add_store_arguments`, checked; logs what was stored.

    Every run is verified against its manifest (sizes, md5s, format) before anything is read.
    """
    if not len(args.runs) == len(args.replay_dirs) == len(args.manifests):
        raise MissingInputError(
            f"--runs, --replay-dirs and --manifests must list the same number of items "
            f"({len(args.runs)}, {len(args.replay_dirs)}, {len(args.manifests)})"
        )
    for path in args.manifests:
        if not path.is_file():
            raise MissingInputError(f"{path}: manifest missing; download or generate the run first")
    refuse_existing(args.out, overwrite=args.overwrite)
    verify_runs(zip(args.replay_dirs, args.manifests, strict=True))
    meta = build_store(
        game=args.game,
        replay_dirs=dict(zip(args.runs, args.replay_dirs, strict=True)),
        manifests=dict(zip(args.runs, args.manifests, strict=True)),
        out=args.out,
        transitions_per_game=transitions_per_game,
        seed=seed,
        window=window,
        window_name=window_name,
        extra_meta=extra_meta,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    extra = meta["transitions"] - transitions_per_game
    more = f", {extra} more than the {transitions_per_game} asked for (whole episodes)" if extra > 0 else ""
    log.info("%s: %d transitions in %d episodes%s", args.out, meta["transitions"], meta["episodes"], more)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", required=True, help=params_help(SubsampleParams, "subsample"))
    add_store_arguments(parser)


def main(args: argparse.Namespace) -> None:
    params = parse_section(args.params, SubsampleParams, "subsample")
    build_store_from_args(
        args,
        transitions_per_game=params.transitions_per_game,
        seed=params.seed,
        extra_meta={"split": "pretrain"},
    )
