"""Training stores and the segment loader: exact rows, right padding, segments per phase, no half stores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from jowa.core import games
from jowa.core.errors import MissingInputError
from jowa.data.loader import SegmentPool
from jowa.data.store import StoreError, TrainingStore, segment_index, write_store
from jowa.models.losses import critic_losses, world_model_losses
from jowa.models.world_action import JOWA, JOWAConfig


def build(out: Path, episode_lengths: list[int], game: str, first_step: int = 0) -> TrainingStore:
    """A store whose step i has frame value, action and reward derived from `first_step + i`."""
    starts = np.concatenate([[0], np.cumsum(episode_lengths)])
    n = int(starts[-1])
    steps = first_step + np.arange(n)
    terminals = np.zeros(n, np.uint8)
    terminals[starts[1:] - 1] = 1
    with write_store(out, n) as store:
        frames = np.broadcast_to((steps % 251).astype(np.uint8)[:, None, None], (n, 84, 84))
        store.write_frames(frames[: n // 2], 0)  # in two blocks, as the extractor hands them over
        store.write_frames(frames[n // 2 :], n // 2)
        store.finish(
            actions=steps % 18,
            rewards=np.sign(np.sin(steps)).astype(np.float32),
            terminals=terminals,
            episode_starts=starts,
            meta={"game": game, "task_id": games.task_id(game)},
        )
    return TrainingStore.open(out)


def test_segment_index_by_hand() -> None:
    # episodes of 5, 1 and 8 steps; length 4, stride 2
    segments = segment_index(np.array([0, 5, 6, 14]), 4, 2)
    expected = [(0, 4), (2, 3), (4, 1), (5, 1), (6, 4), (8, 4), (10, 4), (12, 2)]
    assert [tuple(row) for row in segments.tolist()] == expected
    assert segment_index(np.array([0]), 8, 4).shape == (0, 2)


def test_store_round_trip_and_segments_per_phase(tmp_path: Path) -> None:
    store = build(tmp_path / "s", [5, 1, 8], "Pong")
    assert len(store) == 14 and store.meta["episodes"] == 3 and store.meta["format_version"] == 2
    assert store.frames[7, 10, 10] == 7 and store.actions[13] == 13
    assert not (tmp_path / "s" / "segments.npy").exists()  # segments are a phase's choice, not stored
    assert len(store.segments(8, 4)) == 2 + 1 + 2 and len(store.segments(8, 1)) == 14


def test_a_failed_or_unfinished_store_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="disk full"), write_store(tmp_path / "a", 10) as store:
        store.write_frames(np.zeros((10, 84, 84), np.uint8), 0)
        raise OSError("disk full")
    with pytest.raises(RuntimeError, match="never written"), write_store(tmp_path / "b", 10):
        pass
    with pytest.raises(ValueError, match="disagree"), write_store(tmp_path / "c", 10) as store:
        store.finish(
            actions=np.zeros(9),
            rewards=np.zeros(9),
            terminals=np.zeros(9),
            episode_starts=np.array([0, 9]),
            meta={},
        )
    assert list(tmp_path.iterdir()) == []


def test_open_names_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match="not a training store"):
        TrainingStore.open(tmp_path)
    build(tmp_path / "old", [3], "Pong")
    meta = json.loads((tmp_path / "old" / "meta.json").read_text())
    (tmp_path / "old" / "meta.json").write_text(json.dumps({**meta, "format_version": 1}))
    with pytest.raises(StoreError, match="store format 1, expected 2; delete the store"):
        TrainingStore.open(tmp_path / "old")


@pytest.fixture
def pool(tmp_path: Path) -> SegmentPool:
    pong = build(tmp_path / "pong", [5, 1, 8], "Pong")
    boxing = build(tmp_path / "boxing", [10], "Boxing", first_step=1000)
    tokens = [np.arange(n)[:, None] * 36 + np.arange(36) for n in (14, 10)]  # token = 36 * row + slot
    return SegmentPool(
        [pong, boxing], [t.astype(np.uint16) for t in tokens], length=8, stride=4, device="cpu"
    )


def test_pool_gathers_exact_rows_with_right_padding(pool: SegmentPool) -> None:
    # Pong's segments: rows (0, 5 valid), (4, 1), (5, 1), (6, 8), (10, 4); Boxing's (0, 8), (4, 6), (8, 2)
    assert len(pool) == 8
    batch = pool.batch(torch.tensor([1, 4, 6]))
    np.testing.assert_array_equal(batch.mask.sum(1), [1, 4, 6])
    assert batch.tasks.tolist() == [games.task_id("Pong")] * 2 + [games.task_id("Boxing")]
    # Pong row 4 is the last step of its first episode; row 10..13 the end of the third episode
    assert batch.obs_tokens[0, 0].tolist() == list(range(4 * 36, 5 * 36))
    assert batch.actions[1, :4].tolist() == [10, 11, 12, 13] and batch.ends[1, :4].tolist() == [0, 0, 0, 1]
    assert batch.ends[0, 0] == 1
    # Boxing starts at row 14 of the pool but row 0 of its own tokens; its steps count from 1000
    assert batch.obs_tokens[2, 0, 0] == 4 * 36 and batch.actions[2, 0] == 1004 % 18
    for field in (batch.obs_tokens, batch.actions, batch.rewards, batch.ends):
        assert not field[~batch.mask].any()  # padding is zero everywhere
    assert batch.tokens().shape == (3, 8 * 37)


def test_pool_feeds_the_losses(pool: SegmentPool) -> None:
    model = JOWA(
        JOWAConfig.from_arch({"layers": 1, "heads": 2, "width": 32, "q_hidden": 16, "q_ensemble": 1})
    )
    batch = pool.sample(4, torch.Generator().manual_seed(0))
    output = model(batch.tokens(), batch.tasks)
    losses = world_model_losses(output, batch, supervised_weight=0.1)
    losses |= critic_losses(output, batch, atoms=model.config.atoms(), gamma=0.99, cql_weight=0.1)
    sum(losses.values()).backward()
    assert all(torch.isfinite(value) for value in losses.values())


def test_pool_rejects_tokens_that_do_not_fit_the_store(tmp_path: Path) -> None:
    store = build(tmp_path / "s", [4], "Pong")
    with pytest.raises(StoreError, match="do not match its 4 steps"):
        SegmentPool([store], [np.zeros((3, 36), np.uint16)], length=8, stride=4, device="cpu")
