"""The reader against runs written by Dopamine's own 2019 replay buffer (tests/reference/dopamine_fixture).

Every real frame of the fixture encodes its step id, so what the reader yields can be checked against
the files themselves and against truth.json, which lists every step the agent ever added.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from jowa.data.dopamine.extract import read_episodes
from jowa.data.dopamine.format import (
    META_KINDS,
    STORE_KINDS,
    NpyGzReader,
    checkpoint_filename,
    list_suffixes,
    load_array,
)
from jowa.data.dopamine.replay import index_run
from jowa.data.episodes import ReplayFormatError
from jowa.data.generate import DopamineReplayWriter
from jowa.data.manifest import write_manifest
from jowa.data.subsample import build_store

FIXTURE = Path(__file__).resolve().parent / "reference" / "dopamine_fixture"
RUNS = ["Long/1", "Short/1", "Edge/1"]


def step_ids(frames: np.ndarray) -> list[int]:
    assert (frames[:, 0, 2] == 7).all(), "a padding or garbage row was yielded as a step"
    return (frames[:, 0, 0].astype(int) - 1 + 255 * frames[:, 0, 1].astype(int)).tolist()


def held_step_ids(replay_dir: Path) -> set[int]:
    """Step ids of every real frame in any file, stale copies included: what some file holds."""
    held: set[int] = set()
    for suffix in list_suffixes(replay_dir):
        with NpyGzReader(replay_dir / checkpoint_filename("observation", suffix)) as reader:
            obs = reader.read_all()
        held.update(step_ids(obs[obs[:, 0, 2] == 7]))
    return held


def truth_runs() -> dict:
    return json.loads((FIXTURE / "truth.json").read_text())["runs"]


def yielded(replay_dir: Path) -> list[tuple[bool, list[list]]]:
    out = []
    for episode, rows, frames in read_episodes(replay_dir):
        steps = [
            [i, int(a), float(r)]
            for i, a, r in zip(step_ids(frames), rows.actions, rows.rewards, strict=True)
        ]
        assert rows.terminals[:-1].sum() == 0
        assert rows.terminals[-1] == 1 or episode.truncated
        out.append((episode.truncated, steps))
    return out


@pytest.mark.parametrize("run", RUNS)
def test_reconstruction_matches_dopamine_truth(run: str) -> None:
    replay_dir = FIXTURE / run / "replay_logs"
    truth = truth_runs()[run]["episodes"]
    episodes = yielded(replay_dir)

    # every step some file holds appears exactly once, in time order
    ids = [s[0] for _, steps in episodes for s in steps]
    assert ids == sorted(held_step_ids(replay_dir))
    # whole episodes are exactly the writer's episodes, with their actions and rewards
    for truncated, steps in episodes:
        if truncated:
            assert any(_contains(t, steps) for t in truth)
        else:
            assert steps in truth
    # an episode is yielded whole exactly when all its steps are held and its start is known: it is the
    # run's first episode or the previous episode's terminal step is held too
    held = set(ids)
    expected_whole = [
        t
        for k, t in enumerate(truth)
        if all(s[0] in held for s in t) and (k == 0 or truth[k - 1][-1][0] in held)
    ]
    assert [steps for truncated, steps in episodes if not truncated] == expected_whole


def _contains(episode: list, steps: list) -> bool:
    return any(episode[k : k + len(steps)] == steps for k in range(len(episode) - len(steps) + 1))


def test_short_run_reports_the_rows_lost_before_the_first_file() -> None:
    index = index_run(FIXTURE / "Short/1/replay_logs")
    first_add_count = index.files[0].add_count
    assert index.gaps == [(0, first_add_count - index.capacity)]
    first = index.episodes[0]
    assert first.truncated and first.after_gap  # nothing says step 52 starts an episode
    assert sum(e.truncated for e in index.episodes) == 1


def test_partial_last_file_end_rows_follow_add_count() -> None:
    for run in RUNS:
        index = index_run(FIXTURE / run / "replay_logs")
        assert index.files[-1].end_row == truth_runs()[run]["final_add_count"]
        assert not index.gaps or run == "Short/1"


def copy_run(tmp_path: Path, run: str = "Long/1") -> Path:
    dest = tmp_path / run / "replay_logs"
    shutil.copytree(FIXTURE / run / "replay_logs", dest)
    return dest


def rewrite(path: Path, change: Callable[[np.ndarray], None]) -> None:
    """Load a replay array, change it in place, and write it back the way Dopamine does."""
    with gzip.open(path) as fh:
        array = np.load(fh)
    change(array)
    with gzip.open(path, "wb") as fh:
        np.save(fh, array)


def test_missing_suffix_becomes_a_gap_that_cuts_episodes(tmp_path: Path) -> None:
    replay_dir = copy_run(tmp_path)
    for kind in ("observation", "action", "reward", "terminal", "add_count", "invalid_range"):
        (replay_dir / checkpoint_filename(kind, 5)).unlink()
    index = index_run(replay_dir)
    assert index.gaps == [(199, 239)]
    cut = [e for e in index.episodes if e.truncated]
    assert [e.start_row + e.length for e in cut if not e.after_gap] == [199]  # cut before the gap
    assert any(e.after_gap for e in cut)  # resumed after the gap, start unknown
    ids = [i for _, _, frames in read_episodes(replay_dir) for i in step_ids(frames)]
    assert ids == sorted(held_step_ids(replay_dir))


def test_incomplete_suffix_names_the_missing_file(tmp_path: Path) -> None:
    replay_dir = copy_run(tmp_path)
    (replay_dir / checkpoint_filename("reward", 3)).unlink()
    with pytest.raises(
        ReplayFormatError, match=r"checkpoint 3 is incomplete, missing \$store\$_reward_ckpt\.3\.gz"
    ):
        index_run(replay_dir)


@pytest.mark.parametrize("kind", ["terminal", "observation"])
def test_truncated_gzip_names_the_file(tmp_path: Path, kind: str) -> None:
    replay_dir = copy_run(tmp_path)
    path = replay_dir / checkpoint_filename(kind, 2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReplayFormatError, match=str(path).replace("$", r"\$")):
        list(read_episodes(replay_dir))


def test_corrupt_gzip_names_the_file(tmp_path: Path) -> None:
    replay_dir = copy_run(tmp_path)
    path = replay_dir / checkpoint_filename("action", 4)
    data = bytearray(path.read_bytes())
    data[len(data) // 2 :] = b"\x00garbage" * (len(data) // 16 + 1)
    path.write_bytes(bytes(data[: len(data)]))
    with pytest.raises(ReplayFormatError, match=r"action_ckpt\.4\.gz"):
        index_run(replay_dir)


def test_non_zero_padding_row_is_an_error(tmp_path: Path) -> None:
    replay_dir = copy_run(tmp_path)

    def change(actions: np.ndarray) -> None:
        actions[0] = 3  # slot 0 of the first file is the run's first padding row

    rewrite(replay_dir / checkpoint_filename("action", 0), change)
    with pytest.raises(ReplayFormatError, match=r"padding rows from global row 0"):
        index_run(replay_dir)


def test_partial_file_from_another_run_is_an_error(tmp_path: Path) -> None:
    replay_dir = copy_run(tmp_path)  # suffix 11 is partial (cursor 7); its slots 7..38 are stale copies

    def change(actions: np.ndarray) -> None:
        actions[20] = (actions[20] + 1) % 6

    rewrite(replay_dir / checkpoint_filename("action", 11), change)
    with pytest.raises(
        ReplayFormatError, match=r"add_count_ckpt\.11\.gz: checkpoint 11 differs from checkpoint 10"
    ):
        index_run(replay_dir)


def test_missing_checkpoint_before_the_partial_file_places_it_a_wrap_later(tmp_path: Path) -> None:
    replay_dir = copy_run(tmp_path)
    for kind in ("observation", "action", "reward", "terminal", "add_count", "invalid_range"):
        (replay_dir / checkpoint_filename(kind, 10)).unlink()
    index = index_run(replay_dir)
    assert index.files[-1].end_row == truth_runs()["Long/1"]["final_add_count"]
    assert index.gaps == [(399, 407)]  # suffix 10 held rows 399..438; the partial file holds 407..446
    ids = [i for _, _, frames in read_episodes(replay_dir) for i in step_ids(frames)]
    assert ids == sorted(held_step_ids(replay_dir))


def test_full_checkpoint_add_count_must_precede_a_multiple_of_the_capacity(tmp_path: Path) -> None:
    replay_dir = copy_run(tmp_path)

    def change(add_count: np.ndarray) -> None:
        add_count[...] = 158

    rewrite(replay_dir / checkpoint_filename("add_count", 3), change)
    with pytest.raises(ReplayFormatError, match=r"add_count_ckpt\.3\.gz: add_count 158 is not one less than"):
        index_run(replay_dir)


_OPEN_COUNTS: list[Counter[str]] = []  # the counters of the `opened_files` blocks running now


def _count_open(event: str, args: tuple) -> None:
    if event == "open" and _OPEN_COUNTS and isinstance(args[0], str | os.PathLike):
        _OPEN_COUNTS[-1][os.fspath(args[0])] += 1


sys.addaudithook(_count_open)  # audit hooks cannot be removed: this one is idle outside `opened_files`


@contextmanager
def opened_files() -> Iterator[Counter[str]]:
    """How often each path is opened inside the block, from Python's `open` audit events: nothing replaced."""
    _OPEN_COUNTS.append(Counter())
    try:
        yield _OPEN_COUNTS[-1]
    finally:
        _OPEN_COUNTS.pop()


def test_subsampling_inflates_each_small_file_once(tmp_path: Path) -> None:
    replay_dir = tmp_path / "SpaceInvaders" / "1" / "replay_logs"
    writer = DopamineReplayWriter(replay_dir, capacity=60, compresslevel=1)
    rng = np.random.default_rng(0)
    for _ in range(40):
        length = int(rng.integers(1, 30))
        for t in range(length):
            writer.add(np.full((84, 84), 1, np.uint8), int(rng.integers(6)), 0.0, t == length - 1)
    writer.finish()
    write_manifest(replay_dir, tmp_path / "manifest.tsv")
    suffixes = sorted(list_suffixes(replay_dir))
    assert len(suffixes) > 5

    with opened_files() as opens:
        build_store(
            game="SpaceInvaders",
            replay_dirs={1: replay_dir},
            manifests={1: tmp_path / "manifest.tsv"},
            out=tmp_path / "store",
            transitions_per_game=200,
            seed=0,
            progress=False,
        )
    of_run = {Path(path).name: n for path, n in opens.items() if Path(path).parent == replay_dir}
    small = {checkpoint_filename(k, s) for k in (*STORE_KINDS[1:], META_KINDS[0]) for s in suffixes}
    assert {name: of_run.get(name, 0) for name in small} == dict.fromkeys(small, 1)
    frames = {name: n for name, n in of_run.items() if name.startswith("$store$_observation")}
    assert frames and set(frames.values()) == {1} and set(of_run) <= small | set(frames)


def test_action_outside_an_index_range_is_an_error(tmp_path: Path) -> None:
    replay_dir = copy_run(tmp_path)

    def change(actions: np.ndarray) -> None:
        actions[10] = 300

    rewrite(replay_dir / checkpoint_filename("action", 0), change)
    with pytest.raises(
        ReplayFormatError, match=r"action_ckpt\.0\.gz: action 300 at global row 10 is not an action"
    ):
        index_run(replay_dir)


def test_rewards_other_than_minus_one_zero_one_come_back_exactly(tmp_path: Path) -> None:
    replay_dir = copy_run(tmp_path)

    def change(rewards: np.ndarray) -> None:
        rewards[10] = 0.25  # global row 10: the 8th step of the first episode

    rewrite(replay_dir / checkpoint_filename("reward", 0), change)
    first, rows, _ = next(read_episodes(replay_dir))
    assert first.start_row == 3 and rows.rewards.dtype == np.float32 and rows.rewards[7] == 0.25


# A skipped log before the partial last file. At capacity 10 the first log (add_count 9) comes after the
# first episode's last step in slot 8. The episode after it ends so that the next one's padding runs over
# slot 8 of the next wrap: that wrap's log is skipped (Dopamine checks add_count only after each add()
# call), and the run ends one step later, so the final log lacks the rows written in slots 9, 0, ...
# right after the first log. `frame_ids` lists each episode's steps by the id its frame encodes (the
# fixture's encoding, see `step_ids`), None for a step on a black screen, all zero like padding.
BLACK = None


def write_episodes(replay_dir: Path, frame_ids: list[list[int | None]], noop: bool) -> list[int]:
    """Write episodes (the last one not ended, like a run stopped mid-episode); return each log's count."""
    writer = DopamineReplayWriter(replay_dir, capacity=10, compresslevel=1)
    for k, ids in enumerate(frame_ids):
        for t, step in enumerate(ids):
            frame = np.zeros((84, 84), np.uint8)
            if step is not BLACK:
                frame[0, :3] = (step % 255 + 1, step // 255, 7)
            action = 0 if noop or step is BLACK else 1 + step % 5
            writer.add(frame, action, 0.0, t == len(ids) - 1 and k < len(frame_ids) - 1)
    writer.finish()
    return [
        int(load_array(replay_dir / checkpoint_filename("add_count", s)))
        for s in sorted(list_suffixes(replay_dir))
    ]


def read_back(replay_dir: Path) -> list[tuple[bool, list[int]]]:
    return [(episode.truncated, step_ids(frames)) for episode, _, frames in read_episodes(replay_dir)]


@pytest.mark.parametrize("noop", [True, False], ids=["noop", "varied"])
@pytest.mark.parametrize("lost", [1, 2])
def test_rows_lost_that_are_only_padding_are_no_gap(tmp_path: Path, lost: int, noop: bool) -> None:
    """The rows lost are the first `lost` padding rows before the second episode's first step: the file
    shows the rest of that padding and the step after it, so both episodes are whole."""
    episodes = [list(range(6)), list(range(6, 9 + lost)), [20]]  # steps in rows 3-8, 12-(14+lost), 18+lost
    assert write_episodes(tmp_path, episodes, noop) == [9, lost - 1]  # the log at count 19 was skipped
    index = index_run(tmp_path)
    assert (index.files[0].end_row, index.files[1].first_row) == (9, 9 + lost)  # rows no file holds
    assert index.gaps == [] and index.files[1].end_row == 19 + lost
    assert [(e.truncated, e.after_gap) for e in index.episodes] == [(False, False)] * 2 + [(True, False)]
    assert read_back(tmp_path) == [(False, episodes[0]), (False, episodes[1]), (True, episodes[2])]


@pytest.mark.parametrize(
    ("episodes", "lost"),
    [
        ([list(range(7)), list(range(7, 10)), [20]], [9]),  # the first episode's terminal step
        ([list(range(7)), list(range(7, 11)), [20]], [9, 10]),  # that and a padding row
        # a step on a black screen, then two more: in every field they look like padding
        ([[*range(6), BLACK, BLACK, BLACK, *range(6, 10)], [20]], [9]),
    ],
    ids=["terminal-step", "terminal-step-and-padding", "black-screen-steps"],
)
def test_a_lost_step_beside_lost_padding_is_still_a_gap(tmp_path: Path, episodes: list, lost: list) -> None:
    """The same shape, but a step is lost too: a gap that cuts the episode before it and the one after."""
    write_episodes(tmp_path, episodes, noop=True)
    index = index_run(tmp_path)
    assert index.gaps == [(lost[0], lost[-1] + 1)]
    assert [(e.start_row, e.length, e.truncated) for e in index.episodes][0] == (3, 6, True)
    assert all(e.truncated for e in index.episodes) and index.episodes[1].after_gap
    assert read_back(tmp_path)[0] == (True, list(range(6)))


def test_padding_lost_up_to_the_step_is_a_gap_as_a_lost_wrap_looks_the_same(tmp_path: Path) -> None:
    """All three padding rows before an episode's first step lost look like a whole wrap lost, steps and
    all: two runs write the same files, so the reader reports the gap for both."""
    only_padding = [list(range(6)), list(range(10, 16)), [30]]  # steps in rows 3-8, 12-17, 21
    # rows 12-17 hold another episode, and the files' rows 22-27 are the tail of a longer one
    wrap_more = [list(range(6)), list(range(40, 46)), [50, *range(10, 16)], [30]]
    counts = [
        write_episodes(tmp_path / name, eps, noop=False)
        for name, eps in [("a", only_padding), ("b", wrap_more)]
    ]
    assert counts == [[9, 2], [9, 2]]
    for suffix in (0, 1):
        for kind in (*STORE_KINDS, *META_KINDS):
            name = checkpoint_filename(kind, suffix)
            assert np.array_equal(load_array(tmp_path / "a" / name), load_array(tmp_path / "b" / name))
    for name in ("a", "b"):
        index = index_run(tmp_path / name)
        assert index.gaps == [(9, 12)]
        assert read_back(tmp_path / name) == [
            (False, list(range(6))),
            (True, list(range(10, 16))),
            (True, [30]),
        ]


def test_a_wrap_lost_behind_what_could_be_lost_padding_is_a_gap(tmp_path: Path) -> None:
    """One-step episodes every four rows at capacity 19: two wraps' logs are skipped, and the partial last
    file is placed as if one were, two rows after the last full file's terminal. Its oldest rows are the
    padding and step of a later episode, not the rest of the padding after that terminal: a gap."""
    writer = DopamineReplayWriter(tmp_path, capacity=19, compresslevel=1)
    for step in range(24):
        frame = np.zeros((84, 84), np.uint8)
        frame[0, :3] = (step + 1, 0, 7)
        writer.add(frame, 0, 0.0, True)
    writer.finish()
    assert writer.add_count == 96
    index = index_run(tmp_path)
    assert [f.end_row for f in index.files] == [56, 77]  # 19 rows more than the placement says are lost
    assert index.gaps == [(0, 37), (56, 58)]
    assert read_back(tmp_path) == [(True, [9])] + [(False, [s]) for s in range(10, 14)] + [(True, [19])] + [
        (False, [s]) for s in range(20, 24)
    ]
