"""Writer -> reader round trips: what the Dopamine-layout writer stores, the reader gives back.

The writer reproduces Dopamine's files exactly (test_generate.py) and the reader reproduces Dopamine's
truth (test_replay.py); here the two meet on many more shapes of runs than the fixture has: tiny
capacities, episodes of one step, skipped logs, and a real ALE game.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jowa.data.extract import read_episodes
from jowa.data.generate import DopamineReplayWriter, generate_run
from jowa.data.replay import index_run


def encoded(step: int) -> np.ndarray:
    frame = np.zeros((84, 84), np.uint8)
    frame[0, :3] = (step % 256, step // 256, 9)
    return frame


def decoded(frames: np.ndarray) -> list[int]:
    assert (frames[:, 0, 2] == 9).all(), "a padding or stale row came back as a step"
    return (frames[:, 0, 0].astype(int) + 256 * frames[:, 0, 1].astype(int)).tolist()


@pytest.mark.parametrize(
    ("capacity", "max_len", "seed"),
    [(16, 1, 0), (9, 1, 1), (16, 3, 0), (16, 12, 1), (25, 6, 2), (11, 2, 5), (64, 40, 3), (8, 5, 4)],
)
def test_written_episodes_come_back(tmp_path: Path, capacity: int, max_len: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    writer = DopamineReplayWriter(tmp_path, capacity=capacity)
    episodes, step = [], 0
    while step < 600:
        length = int(rng.integers(1, max_len + 1))
        episodes.append(list(range(step, step + length)))
        for t in range(length):
            writer.add(encoded(step), int(rng.integers(0, 18)), 0.0, t == length - 1)
            step += 1
    writer.finish()

    held = set()
    for ep, _, frames in read_episodes(tmp_path):
        ids = decoded(frames)
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # in order, nothing in between
        held.update(ids)
        if not ep.truncated:
            assert ids in episodes  # a whole episode is exactly one the writer wrote
        else:
            assert any(set(ids) <= set(e) for e in episodes)
    index = index_run(tmp_path)
    lost = {s for e in episodes for s in e} - held
    # steps are lost exactly when a gap is reported, or the run's start is unknown (every log before the
    # first file was skipped, so nothing tells how many rows came before)
    assert bool(lost) == bool(index.gaps or index.start_unknown)
    if not (index.gaps or index.start_unknown):
        assert all(not ep.truncated for ep in index.episodes)


def test_real_ale_run_reads_back_whole(tmp_path: Path) -> None:
    replay_dir = tmp_path / "Pong" / "1" / "replay_logs"
    summary = generate_run(
        "Pong", replay_dir, steps_per_run=900, capacity=300, sticky_actions=0.25, max_episode_steps=150,
        seed=5, progress=False,
    )  # fmt: skip
    index = index_run(replay_dir)
    assert not index.gaps and len(index.files) == len(summary["suffixes"])
    read = list(read_episodes(replay_dir))
    assert len(read) == summary["episodes"]
    assert sum(ep.length for ep, _, _ in read) == summary["steps"]
    for ep, rows, frames in read:
        assert not ep.truncated and rows.terminals[-1] == 1 and rows.terminals[:-1].sum() == 0
        assert frames.reshape(len(frames), -1).any(axis=1).all()  # padding rows are never steps
        assert set(np.unique(rows.rewards)) <= {-1.0, 0.0, 1.0} and rows.actions.max() < 6
