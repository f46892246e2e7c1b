"""The generator against Dopamine's own files, and on real ALE games.

The fixture (tests/reference/dopamine_fixture) was written by Dopamine's 2019 replay buffer with
batch_rl's logging rule; truth.json lists every step the agent added. Feeding those steps through
`DopamineReplayWriter` must give back the same files, array for array, including skipped logs.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from jowa.core.env import replay_env
from jowa.core.errors import OutputExistsError
from jowa.core.games import UnknownGameError
from jowa.data.dopamine.format import (
    ALL_KINDS,
    STORE_KINDS,
    STORE_SPECS,
    checkpoint_filename,
    list_suffixes,
    load_array,
)
from jowa.data.generate import DopamineReplayWriter, generate_run, run_seed
from jowa.data.manifest import write_manifest
from jowa.data.subsample import build_store

FIXTURE = Path(__file__).resolve().parent / "reference" / "dopamine_fixture"
RUNS = ["Long/1", "Short/1", "Edge/1"]

GAME = "SpaceInvaders"  # short random episodes (~450 steps): many episode starts in a small run
CAPACITY = 500
STEPS = 1500


# ------------------------------------------------------------------------------------ Dopamine fixture


def fixture_frame(step_id: int) -> np.ndarray:
    """A fixture frame: rows 1-83 hold id % 251; row 0 is [id % 255 + 1, id // 255, 7, 0, ...].

    truth.json only documents row 0 (id in pixels 0-1, marker 7 in pixel 2); the body was read off the
    files: every one of the fixture's 597 real frames equals this.
    """
    frame = np.full((84, 84), step_id % 251, np.uint8)
    frame[0] = 0
    frame[0, :3] = (step_id % 255 + 1, step_id // 255, 7)
    return frame


def replay_truth(run: dict, log_dir: Path) -> dict[int, int]:
    """Feed truth.json's steps to a writer; return each suffix's true row count when it was logged."""
    writer = DopamineReplayWriter(log_dir, capacity=run["capacity"])
    rows_at_log: dict[int, int] = {}
    for episode in run["episodes"]:
        for i, (step_id, action, reward) in enumerate(episode):
            suffix = writer.add(fixture_frame(step_id), action, reward, i == len(episode) - 1)
            if suffix is not None:
                rows_at_log[suffix] = writer.add_count
    rows_at_log[writer.finish()] = writer.add_count
    assert writer.add_count == run["final_add_count"]
    return rows_at_log


def truth(run: str) -> dict:
    return json.loads((FIXTURE / "truth.json").read_text())["runs"][run]


@pytest.mark.parametrize("run", RUNS)
def test_writer_reproduces_dopamine_files(run: str, tmp_path: Path) -> None:
    info = truth(run)
    rows_at_log = replay_truth(info, tmp_path)
    ref_dir = FIXTURE / run / "replay_logs"
    assert sorted(list_suffixes(tmp_path)) == sorted(list_suffixes(ref_dir)) == sorted(rows_at_log)
    assert len(rows_at_log) == info["files_written"]
    for suffix, rows in rows_at_log.items():
        assert list_suffixes(tmp_path)[suffix] == set(ALL_KINDS)
        unwritten = np.arange(rows, info["capacity"])  # slots no add had reached yet (first wrap only)
        for kind in ALL_KINDS:
            ours = load_array(tmp_path / checkpoint_filename(kind, suffix))
            ref = load_array(ref_dir / checkpoint_filename(kind, suffix))
            where = f"{run} {kind} ckpt.{suffix}"
            assert (ours.dtype, ours.shape) == (ref.dtype, ref.shape), where
            if kind in STORE_KINDS and unwritten.size:
                # Dopamine allocated with np.empty: compare only written slots; ours are zero-filled.
                assert not ours[unwritten].any(), where
                ours, ref = np.delete(ours, unwritten, axis=0), np.delete(ref, unwritten, axis=0)
            np.testing.assert_array_equal(ours, ref, err_msg=where)


def test_fixture_unwritten_slots_are_np_empty_leftovers(tmp_path: Path) -> None:
    """Only the first files of Long and Edge have a never-written slot (39); Edge's reward there is the
    float32 with bit pattern 5 (7e-45), left over from np.empty: no writer can reproduce that value."""
    found = {}
    for run in RUNS:
        info = truth(run)
        for suffix, rows in replay_truth(info, tmp_path / run).items():
            if rows < info["capacity"]:
                found[run, suffix] = {
                    kind: load_array(FIXTURE / run / "replay_logs" / checkpoint_filename(kind, suffix))[rows:]
                    for kind in STORE_KINDS
                }
    assert sorted(found) == [("Edge/1", 0), ("Long/1", 0)]
    assert all(len(a) == 1 and not a.any() for a in found["Long/1", 0].values())
    edge = found["Edge/1", 0]
    assert edge["reward"].view(np.int32).tolist() == [5]
    assert not (edge["observation"].any() or edge["action"].any() or edge["terminal"].any())


def test_pad_row_on_the_log_point_skips_that_log(tmp_path: Path) -> None:
    """Dopamine checks `add_count % C == C-1` once per add(); pads can jump over it."""
    writer = DopamineReplayWriter(tmp_path, capacity=10)
    frame = np.ones((84, 84), np.uint8)
    for i in range(4):  # rows 0-2 pads, 3-6 real: add_count 7
        assert writer.add(frame, 1, 0.0, i == 3) is None
    assert writer.add(frame, 1, 0.0, False) is None  # pads 7, 8, 9 then row 10: add_count 9 skipped
    assert writer.add_count == 11 and not list(tmp_path.iterdir())
    for _ in range(7):
        writer.add(frame, 1, 0.0, False)
    assert writer.add(frame, 1, 0.0, False) == 0  # add_count 19: first file, one wrap lost
    assert int(load_array(tmp_path / checkpoint_filename("add_count", 0))) == 19
    assert writer.finish() == 1
    assert int(load_array(tmp_path / checkpoint_filename("add_count", 1))) == 19 % 10
    assert load_array(tmp_path / checkpoint_filename("invalid_range", 1)).tolist() == [8, 9, 0, 1, 2]


# ------------------------------------------------------------------------------------- real ALE runs


def play(game: str, out: Path, steps: int, *, seed: int, progress: bool) -> dict:
    """A generated run with DQN-Replay's sticky actions and episodes capped at 27 000 steps."""
    return generate_run(
        game, out, steps_per_run=steps, capacity=CAPACITY, sticky_actions=0.25, max_episode_steps=27_000,
        seed=seed, progress=progress,
    )  # fmt: skip


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("gen") / GAME / "1" / "replay_logs"
    summary = play(GAME, out, STEPS, seed=0, progress=False)
    return out, summary


def stored(path: Path, kind: str, suffix: int) -> np.ndarray:
    dtype, row_shape = STORE_SPECS[kind]
    return load_array(path / checkpoint_filename(kind, suffix), dtype, (CAPACITY, *row_shape))


def time_ordered(out: Path, suffix: int, rows: int) -> dict[str, np.ndarray]:
    """The last min(rows, C) rows the buffer held when `suffix` was logged, oldest first."""
    arrays = {kind: stored(out, kind, suffix) for kind in STORE_KINDS}
    if rows < CAPACITY:
        return {kind: a[:rows] for kind, a in arrays.items()}
    return {kind: np.roll(a, -(rows % CAPACITY), axis=0) for kind, a in arrays.items()}


def test_summary_and_file_set(generated: tuple[Path, dict]) -> None:
    out, summary = generated
    suffixes = summary["suffixes"]
    assert suffixes == list(range(len(suffixes))) and len(suffixes) >= 2
    assert summary["files"] == 6 * len(suffixes)
    assert {k: summary[k] for k in ("game", "capacity", "seed", "sticky_actions")} == {
        "game": GAME,
        "capacity": CAPACITY,
        "seed": 0,
        "sticky_actions": 0.25,
    }
    assert summary["steps"] >= STEPS
    assert summary["add_count"] == summary["steps"] + 3 * summary["episodes"]
    assert list_suffixes(out) == {s: set(ALL_KINDS) for s in suffixes}
    assert len(list(out.iterdir())) == summary["files"]
    assert [p.name for p in out.parent.iterdir()] == ["replay_logs"]  # no staging directory left


def test_add_count_and_invalid_range(generated: tuple[Path, dict]) -> None:
    out, summary = generated
    *full, final = summary["suffixes"]
    counts = [int(load_array(out / checkpoint_filename("add_count", s), np.int64, ())) for s in full]
    assert all(c % CAPACITY == CAPACITY - 1 for c in counts) and counts == sorted(counts)
    for s in full:
        got = load_array(out / checkpoint_filename("invalid_range", s), np.int64, (5,))
        assert got.tolist() == [CAPACITY - 2, CAPACITY - 1, 0, 1, 2]
    cursor = summary["add_count"] % CAPACITY
    assert int(load_array(out / checkpoint_filename("add_count", final))) == cursor
    got = load_array(out / checkpoint_filename("invalid_range", final), np.int64, (5,))
    assert got.tolist() == [(cursor - 1 + i) % CAPACITY for i in range(5)]


def test_rows_follow_dopamine_episode_layout(generated: tuple[Path, dict]) -> None:
    out, summary = generated
    n_actions = replay_env(GAME, 0.25).action_space.n
    *full, final = summary["suffixes"]
    logged = {s: int(load_array(out / checkpoint_filename("add_count", s))) for s in full}
    logged[final] = summary["add_count"]
    for suffix, rows in logged.items():
        r = time_ordered(out, suffix, rows)
        first_global = rows - len(r["terminal"])
        pad = ~r["observation"].reshape(len(r["terminal"]), -1).any(axis=1)
        # a pad row is all zero; a real row always shows some of the game screen
        assert not (r["action"][pad].any() or r["reward"][pad].any() or r["terminal"][pad].any())
        # pads are exactly the 3 rows after each terminal (and the first 3 rows of the run)
        terminals = np.flatnonzero(r["terminal"])
        expected_pad = np.zeros_like(pad)
        if first_global == 0:
            expected_pad[:3] = True
        for t in terminals:
            expected_pad[t + 1 : t + 4] = True
        # a window that starts mid-run may open inside a pad run: check from its first episode start on
        head = 0 if first_global == 0 else (terminals[0] + 1 if terminals.size else len(pad))
        assert (pad[head:] == expected_pad[head:]).all()
        real = ~pad
        assert np.isin(r["reward"][real], [-1.0, 0.0, 1.0]).all()
        assert ((r["action"][real] >= 0) & (r["action"][real] < n_actions)).all()
        assert len({f.tobytes() for f in r["observation"][real]}) > 20  # the screen changes
        assert r["observation"][real].std() > 1.0
    assert any(time_ordered(out, s, rows)["reward"].any() for s, rows in logged.items())
    last = time_ordered(out, final, summary["add_count"])
    assert last["terminal"][-1] == 1  # the run ends with a finished episode
    assert last["reward"].min() >= -1 and last["reward"].max() <= 1


def decompressed(directory: Path) -> dict[str, bytes]:
    return {p.name: gzip.decompress(p.read_bytes()) for p in sorted(directory.iterdir())}


def test_same_seed_same_files_other_seed_differs(generated: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = generated
    again = tmp_path / "again" / "replay_logs"
    play(GAME, again, STEPS, seed=0, progress=False)
    assert decompressed(again) == decompressed(out)
    other = tmp_path / "other" / "replay_logs"
    play(GAME, other, STEPS // 4, seed=1, progress=True)
    mine, theirs = decompressed(out), decompressed(other)
    for kind in ("observation", "action"):
        name = checkpoint_filename(kind, 0)
        assert mine[name] != theirs[name]


def md5s(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_generated_files_manifests_and_store_hashes_are_byte_stable(tmp_path: Path) -> None:
    """The same run made twice (another process, path and second) gives the same compressed bytes.

    A gzip header may hold a file name and a time; ours hold neither, so the md5s in the manifests,
    the manifests themselves and the `source_manifests` a store records do not change either.
    """
    params = {"capacity": CAPACITY, "max_episode_steps": 27_000, "seed": 0, "steps_per_run": 1000,
              "sticky_actions": 0.25}  # fmt: skip
    first, second = tmp_path / "a" / GAME / "1", tmp_path / "elsewhere" / GAME / "1"
    subprocess.run(
        ["jowa", "-q", "data", "generate", "--params", json.dumps(params), "--game", GAME, "--run", "1",
         "--out", str(first / "replay_logs"), "--manifest", str(first / "manifest.tsv")],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    time.sleep(1.1)  # gzip's header time has a one-second resolution
    settings = {k: v for k, v in params.items() if k not in ("seed", "steps_per_run")}
    generate_run(GAME, second / "replay_logs", steps_per_run=params["steps_per_run"],
                 seed=run_seed(params["seed"], GAME, 1), progress=False, **settings)  # fmt: skip
    write_manifest(second / "replay_logs", second / "manifest.tsv")
    ours = md5s(first / "replay_logs")
    assert len(ours) >= 12 and ours == md5s(second / "replay_logs")
    assert (first / "manifest.tsv").read_bytes() == (second / "manifest.tsv").read_bytes()
    metas = [
        build_store(
            game=GAME,
            replay_dirs={1: run / "replay_logs"},
            manifests={1: run / "manifest.tsv"},
            out=run / "store",
            transitions_per_game=200,
            seed=0,
            progress=False,
        )
        for run in (first, second)
    ]
    assert metas[0]["source_manifests"] == metas[1]["source_manifests"]
    assert metas[0] == metas[1]


def test_preprocessing_matches_dopamine_recipe() -> None:
    """AtariPreprocessing equals Dopamine's recipe: max of the last 2 of 4 grayscale frames, INTER_AREA."""
    seed, steps = 3, 120
    wrapped = replay_env("Pong", 0.25)
    reference = replay_env("Pong", 0.25).env  # the same inner env, preprocessed by hand below
    obs, _ = wrapped.reset(seed=seed)
    reference.reset(seed=seed)
    screens = [np.zeros((210, 160), np.uint8), np.zeros((210, 160), np.uint8)]
    reference.unwrapped.ale.getScreenGrayscale(screens[0])
    expected = cv2.resize(np.maximum(*screens), (84, 84), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(obs, expected)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        action = int(rng.integers(reference.action_space.n))
        obs, *_ = wrapped.step(action)
        for frame in range(4):
            reference.step(action)
            if frame >= 2:
                reference.unwrapped.ale.getScreenGrayscale(screens[frame - 2])
        expected = cv2.resize(np.maximum(*screens), (84, 84), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(obs, expected)
    wrapped.close()
    reference.close()


# -------------------------------------------------------------------------------------------- failures


def test_unknown_game_leaves_nothing_behind(tmp_path: Path) -> None:
    out = tmp_path / "NoSuchGame" / "1" / "replay_logs"
    with pytest.raises(UnknownGameError, match="NoSuchGame"):
        play("NoSuchGame", out, 10, seed=0, progress=False)
    assert not any(tmp_path.iterdir())


def test_failure_mid_run_removes_staging_and_created_parents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_finish(self: DopamineReplayWriter) -> int:
        raise OSError("disk full")

    monkeypatch.setattr(DopamineReplayWriter, "finish", broken_finish)
    (tmp_path / GAME).mkdir()  # an existing game directory stays; the run directory created here goes
    out = tmp_path / GAME / "2" / "replay_logs"
    with pytest.raises(OSError, match="disk full"):
        play(GAME, out, 50, seed=0, progress=False)
    assert [p.name for p in tmp_path.rglob("*")] == [GAME]


def test_existing_output_is_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / GAME / "1" / "replay_logs"
    out.mkdir(parents=True)
    (out / "keep").write_text("x")
    with pytest.raises(OutputExistsError, match="already exists; delete it, or pass --overwrite"):
        play(GAME, out, 10, seed=0, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep"]
