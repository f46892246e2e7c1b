"""Token-only training stores of any size, for measuring the pool's memory at scales no disk here holds.

A real store directory (`meta.json` and the per-step arrays `TrainingStore.open` reads) whose frames
file is a sparse array that is never written: the world model's pool reads actions, rewards, terminals,
episode starts and a token array, never frames. Used by the pool-memory test and benchmark.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from jowa.core.games import PRETRAIN_GAMES, task_id
from jowa.data.store import FORMAT_VERSION, TrainingStore


def write_token_store(
    directory: Path, steps: int, game_index: int, *, vocab: int = 1024, seed: int = 0
) -> tuple[Path, Path]:
    """(store directory, token .npy) of `steps` random steps of pretraining game `game_index`, token
    ids below `vocab`."""
    rng = np.random.default_rng(seed + game_index)
    directory.mkdir(parents=True, exist_ok=True)
    ends = np.cumsum(rng.integers(500, 5000, size=steps // 500 + 1))
    starts = np.concatenate([[0], ends[ends < steps], [steps]]).astype(np.int64)
    terminals = np.zeros(steps, np.uint8)
    terminals[starts[1:] - 1] = 1
    np.lib.format.open_memmap(directory / "frames.npy", mode="w+", dtype=np.uint8, shape=(steps, 84, 84))
    np.save(directory / "actions.npy", rng.integers(0, 18, steps, dtype=np.uint8))
    np.save(directory / "rewards.npy", rng.integers(-1, 2, steps).astype(np.float32))
    np.save(directory / "terminals.npy", terminals)
    np.save(directory / "episode_starts.npy", starts)
    game = PRETRAIN_GAMES[game_index % len(PRETRAIN_GAMES)]
    meta = {"format_version": FORMAT_VERSION, "game": game, "task_id": task_id(game), "transitions": steps}
    (directory / "meta.json").write_text(json.dumps(meta))
    tokens = directory.with_name(directory.name + ".tokens.npy")
    out = np.lib.format.open_memmap(tokens, mode="w+", dtype=np.uint16, shape=(steps, 36))
    for start in range(0, steps, 1 << 20):
        rows = min(1 << 20, steps - start)
        out[start : start + rows] = rng.integers(0, vocab, (rows, 36), dtype=np.uint16)
    out.flush()
    del out
    TrainingStore.open(directory)  # the layout is a real store's
    return directory, tokens
