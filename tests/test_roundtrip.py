"""Writer -> reader round trips: what the Dopamine-layout writer stores, the reader gives back.

The writer reproduces Dopamine's files exactly (test_generate.py) and the reader reproduces Dopamine's
truth (test_replay.py); here the two meet on many more shapes of runs than the fixture has: tiny
capacities, episodes of one step, skipped logs, runs that never logged a full file, and a real ALE game.
What the reader must give back is worked out from the writer's side: which global row each step went
to and which rows each logged file holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from jowa.data.dopamine.extract import read_episodes
from jowa.data.dopamine.format import checkpoint_filename, list_suffixes, load_array
from jowa.data.dopamine.replay import RunIndex, index_run
from jowa.data.generate import DopamineReplayWriter, generate_run


def encoded(step: int) -> np.ndarray:
    frame = np.zeros((84, 84), np.uint8)
    frame[0, :3] = (step % 256, step // 256, 9)
    return frame


def decoded(frames: np.ndarray) -> list[int]:
    assert (frames[:, 0, 2] == 9).all(), "a padding or stale row came back as a step"
    return (frames[:, 0, 0].astype(int) + 256 * frames[:, 0, 1].astype(int)).tolist()


def noop(step: int) -> int:
    """Action 0 with reward 0: in the small arrays such a step differs from padding by nothing."""
    return 0


def varied(step: int) -> int:
    return 1 + step % 17


@dataclass
class Written:
    """What the writer stored: each episode's steps and their global rows, and the rows files hold."""

    capacity: int
    steps: list[list[int]]  # step ids, per episode
    rows: list[list[int]]  # the global row of each step, per episode
    held_rows: set[int]  # rows some file holds: a log at count T holds rows [T - C, T)
    add_count: int

    def seen_padding(self) -> set[int]:
        """Rows no file holds that the reader can know to be padding, no step: a run of lost rows that are
        all padding, between a held terminal and the rest of that padding in a file (only a log skipped
        before the partial last file loses so few rows, and no file is deleted here). Lost padding up to
        its step, or the run's first padding, shows nothing of itself: a whole wrap more lost looks the
        same, so that is a gap (or an unknown start), like lost steps."""
        steps = {r for ep_rows in self.rows for r in ep_rows}
        terminals = {ep_rows[-1] for ep_rows in self.rows}
        lost = np.array(sorted(set(range(self.add_count)) - self.held_rows), int)
        seen: set[int] = set()
        for run in np.split(lost, np.flatnonzero(np.diff(lost) > 1) + 1) if lost.size else []:
            before, after = int(run[0]) - 1, int(run[-1]) + 1
            if (
                steps.isdisjoint(run.tolist())
                and before in self.held_rows & terminals
                and after in self.held_rows - steps
            ):
                seen.update(run.tolist())
        return seen


def write_run(
    replay_dir: Path, capacity: int, lengths: list[int], action: Callable[[int], int] = varied
) -> Written:
    writer = DopamineReplayWriter(replay_dir, capacity=capacity, compresslevel=1)
    steps, rows, logged_at, step = [], [], [], 0
    for length in lengths:
        steps.append(list(range(step, step + length)))
        rows.append([])
        for t in range(length):
            if writer.add(encoded(step), action(step), 0.0, t == length - 1) is not None:
                logged_at.append(writer.add_count)
            rows[-1].append(writer.add_count - 1)
            step += 1
    writer.finish()
    logged_at.append(writer.add_count)
    held = {r for count in logged_at for r in range(max(0, count - capacity), count)}
    return Written(capacity, steps, rows, held, writer.add_count)


def check_round_trip(replay_dir: Path, written: Written) -> RunIndex:
    """The reader gives back exactly what the files hold, whole episodes exactly, and says what is lost."""
    index = index_run(replay_dir)
    read = list(read_episodes(replay_dir))
    held_steps = sorted(
        s for ep_steps, ep_rows in zip(written.steps, written.rows, strict=True)
        for s, r in zip(ep_steps, ep_rows, strict=True) if r in written.held_rows
    )  # fmt: skip
    # every step some file holds comes back exactly once, in time order, and nothing else does
    assert [s for _, _, frames in read for s in decoded(frames)] == held_steps

    # the run's start is unknown only if rows before the first file were lost, or if its only file holds
    # exactly C rows (a buffer filled exactly without reaching a log looks like one that wrapped)
    suffixes = list_suffixes(replay_dir)
    only_full = len(suffixes) == 1 and index.files[0].add_count == 0
    if index.start_unknown:
        assert 0 not in written.held_rows or only_full
    # an episode comes back whole exactly when every row from the previous episode's terminal (the run's
    # start, for the first) to its own terminal is held, or is lost padding the reader can see to be
    # padding (`seen_padding`), and then it is exactly what was written
    accounted = written.held_rows | written.seen_padding()
    expected_whole = [
        ep_steps
        for k, (ep_steps, ep_rows) in enumerate(zip(written.steps, written.rows, strict=True))
        if (k > 0 or not index.start_unknown)
        and accounted.issuperset(range(written.rows[k - 1][-1] if k else 0, ep_rows[-1] + 1))
    ]
    assert [decoded(frames) for ep, _, frames in read if not ep.truncated] == expected_whole

    # rows other than seen padding are lost exactly when a gap or an unknown start is reported, and the
    # last file is placed at the writer's count (up to whole wraps lost in a gap, which no file can tell)
    lost = len(accounted) < written.add_count
    assert bool(index.gaps or index.start_unknown) == (lost or only_full)
    if not (index.gaps or index.start_unknown):
        assert index.files[-1].end_row == written.add_count
    assert (written.add_count - index.files[-1].end_row) % written.capacity == 0
    return index


@pytest.mark.parametrize(
    ("capacity", "max_len", "seed"),
    [(16, 1, 0), (9, 1, 1), (16, 3, 0), (16, 12, 1), (25, 6, 2), (11, 2, 5), (64, 40, 3), (8, 5, 4)],
)
def test_written_episodes_come_back(tmp_path: Path, capacity: int, max_len: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = [int(n) for n in rng.integers(1, max_len + 1, 600)]
    lengths = lengths[: int(np.searchsorted(np.cumsum(lengths), 600)) + 1]
    check_round_trip(tmp_path, write_run(tmp_path, capacity, lengths, lambda s: int(rng.integers(0, 18))))


# Runs whose placement hinges on the row in slot C-2: the step that triggered the last full log, or
# padding left by a skipped log (an episode's first add() adds three padding rows and a step, and can
# jump over the C-1 count that triggers a log). Each once with no-op steps, which the small arrays do
# not tell from padding, and once with varied actions. `add_counts` pins the shape each case covers.
SEAM_SHAPES = {
    # never logged a full file; its last wrap left a one-step episode in slot C-1, padding before it
    "one-step-episode-in-slot-C-1-of-an-unlogged-run": (8, [1, 1, 1], [4]),
    # never logged a full file; its oldest rows are padding whose episode starts in slot 0
    "episode-starting-across-the-wrap-of-an-unlogged-run": (7, [1, 4], [4]),
    # never logged a full file; a one-step episode in slot 0, after padding in slots C-2 and C-1
    "one-step-episode-in-slot-0-of-an-unlogged-run": (7, [1, 1, 1], [5]),
    # a log skipped before the partial last file, whose oldest rows lie inside the padding at the seam
    "skipped-log-then-partial-file-starting-in-padding": (5, [3, 2], [4, 1]),
    # the same with one-step episodes, two wraps lost
    "skipped-logs-then-partial-file-with-one-step-episodes": (6, [6, 4, 1, 1, 1], [5, 4]),
    "skipped-log-then-one-step-episodes-in-the-partial-file": (7, [8, 1, 1], [6, 5]),
}


def logged_add_counts(path: Path) -> list[int]:
    """The add_count each checkpoint of the run logged, oldest first."""
    return [int(load_array(path / checkpoint_filename("add_count", s))) for s in sorted(list_suffixes(path))]


@pytest.mark.parametrize("action", [noop, varied], ids=["noop", "varied"])
@pytest.mark.parametrize(("capacity", "lengths", "add_counts"), SEAM_SHAPES.values(), ids=SEAM_SHAPES.keys())
def test_runs_placed_by_the_seam_come_back(
    tmp_path: Path, capacity: int, lengths: list[int], add_counts: list[int], action: Callable
) -> None:
    written = write_run(tmp_path, capacity, lengths, action)
    assert logged_add_counts(tmp_path) == add_counts
    index = check_round_trip(tmp_path, written)
    assert index.start_unknown == (len(add_counts) == 1) and len(index.gaps) == 1


# Runs whose log skipped before the partial last file lost only one or two padding rows after a terminal
# (the file then shows the rest of that padding and the step after it): no gap there, and the episodes on
# both sides come back whole. Once with no-op steps, which only the frames tell from padding.
LOST_PADDING_SHAPES = {
    "one-step-episodes-lose-one-padding-row": (7, [1] * 7, [20, 0]),
    "two-padding-rows-lost-after-a-one-step-episode": (7, [1, 1, 2, 1, 2], [13, 1]),
    "one-padding-row-lost-after-two-full-files": (10, [2, 2, 1, 2, 1, 1, 1], [9, 19, 1]),
    "one-padding-row-lost-among-short-episodes": (17, [2, 2, 2, 1, 2, 2, 1, 2, 1, 2, 1], [33, 0]),
}


@pytest.mark.parametrize("action", [noop, varied], ids=["noop", "varied"])
@pytest.mark.parametrize(
    ("capacity", "lengths", "add_counts"), LOST_PADDING_SHAPES.values(), ids=LOST_PADDING_SHAPES.keys()
)
def test_runs_that_lost_only_padding_come_back_whole_around_it(
    tmp_path: Path, capacity: int, lengths: list[int], add_counts: list[int], action: Callable
) -> None:
    written = write_run(tmp_path, capacity, lengths, action)
    assert logged_add_counts(tmp_path) == add_counts
    index = check_round_trip(tmp_path, written)
    last_full, partial = index.files[-2:]
    assert 0 < partial.first_row - last_full.end_row < 3  # rows no file holds: lost padding
    assert all(stop <= last_full.end_row for _, stop in index.gaps)  # no gap before the partial file


def fuzz_shape(rng: np.random.Generator) -> tuple[int, list[int], Callable[[int], int]]:
    """A small run: capacity, episode lengths (one-step episodes in every mix) and an action pattern."""
    capacity = int(rng.integers(5, 25))
    mix = rng.integers(4)
    count = int(rng.integers(2, 40))
    if mix == 0:  # one-step episodes only
        lengths = [1] * count
    elif mix == 1:  # one or two steps
        lengths = [int(n) for n in rng.integers(1, 3, count)]
    elif mix == 2:  # one-step episodes among episodes longer than a wrap
        lengths = [
            1 if rng.random() < 0.3 else int(rng.integers(2, 3 * capacity)) for _ in range(count // 3 + 2)
        ]
    else:  # anything up to a little over a wrap
        lengths = [int(n) for n in rng.integers(1, capacity + 5, count // 2 + 2)]
    action = noop if rng.random() < 0.5 else varied
    return capacity, lengths, action


def test_seeded_fuzz_over_many_shapes(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    for k in range(120):
        capacity, lengths, action = fuzz_shape(rng)
        replay_dir = tmp_path / str(k)
        try:
            check_round_trip(replay_dir, write_run(replay_dir, capacity, lengths, action))
        except AssertionError as exc:
            raise AssertionError(
                f"shape {k}: capacity {capacity}, {action.__name__}, lengths {lengths}"
            ) from exc


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
