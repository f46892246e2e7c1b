"""Subsampling and fine-tuning sets: whole distinct episodes, exact rows, segments, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from jowa.cli import main as jowa_main
from jowa.core import games
from jowa.data.dopamine.extract import read_episodes
from jowa.data.dopamine.replay import index_run
from jowa.data.generate import DopamineReplayWriter
from jowa.data.manifest import write_manifest
from jowa.data.store import TrainingStore, segment_mask
from jowa.data.subsample import SubsampleError, build_store, pick_runs

GAME = "SpaceInvaders"  # 6 minimal actions
CAPACITY = 120


def frame(step: int, run: int) -> np.ndarray:
    """A frame that says which run and step it is."""
    f = np.full((84, 84), run, np.uint8)
    f[0, :3] = (step % 256, step // 256, 200)
    return f


def decode(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    assert (frames[:, 0, 2] == 200).all(), "a padding row was stored as a step"
    return frames[:, 0, 0].astype(int) + 256 * frames[:, 0, 1].astype(int), frames[:, 5, 5].astype(int)


def write_run(root: Path, run: int, steps: int, seed: int) -> dict[int, tuple[int, float, bool]]:
    """A run of random-length episodes in the Dopamine layout; returns step -> (action, reward, terminal)."""
    rng = np.random.default_rng(seed)
    replay_dir = root / GAME / str(run) / "replay_logs"
    replay_dir.mkdir(parents=True)
    writer = DopamineReplayWriter(replay_dir, capacity=CAPACITY)
    truth, step = {}, 0
    while step < steps:
        length = int(rng.integers(5, 40))
        for t in range(length):
            action, reward = int(rng.integers(0, 6)), float(rng.choice([-1.0, 0.0, 1.0]))
            writer.add(frame(step, run), action, reward, t == length - 1)
            truth[step] = (action, reward, t == length - 1)
            step += 1
    writer.finish()
    write_manifest(replay_dir, root / "manifests" / GAME / f"{run}.tsv")
    return truth


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, dict]]:
    root = tmp_path_factory.mktemp("replay")
    return root, {run: write_run(root, run, 700, seed=run) for run in (1, 2)}


def make_store(root: Path, out: Path, seed: int = 0, transitions: int = 400, **kw) -> TrainingStore:
    build_store(
        game=GAME,
        replay_dirs={r: root / GAME / str(r) / "replay_logs" for r in (1, 2)},
        manifests={r: root / "manifests" / GAME / f"{r}.tsv" for r in (1, 2)},
        out=out,
        transitions_per_game=transitions,
        seed=seed,
        progress=False,
        **kw,
    )
    return TrainingStore.open(out)


def test_store_holds_whole_distinct_episodes_with_exact_rows(runs, tmp_path: Path) -> None:
    root, truth = runs
    store = make_store(root, tmp_path / "store")
    starts = store.episode_starts
    assert 400 <= len(store) < 400 + 40  # stops at the first episode that reaches the budget
    steps, run_of = decode(np.asarray(store.frames))
    seen = set()
    to_full = games.minimal_to_full(GAME)
    for e in range(len(starts) - 1):
        sl = slice(starts[e], starts[e + 1])
        ids, run = steps[sl], run_of[sl]
        assert (np.diff(ids) == 1).all() and len(set(run)) == 1  # consecutive steps of one run
        assert store.terminals[sl][-1] == 1 and store.terminals[sl][:-1].sum() == 0
        r = int(run[0])
        # a whole episode of the written run: it starts at the run's start or right after a terminal step,
        # and ends on the written run's terminal step
        assert ids[0] == 0 or truth[r][int(ids[0]) - 1][2]
        assert truth[r][int(ids[-1])][2]
        for i, step in enumerate(ids):
            action, reward, _ = truth[r][int(step)]
            assert store.actions[sl][i] == to_full[action]  # 18-way full index
            assert store.rewards[sl][i] == reward
            assert (r, int(step)) not in seen
            seen.add((r, int(step)))
    assert store.meta["transitions"] == len(store) and store.meta["runs"] == [1, 2]
    assert set(store.meta["source_manifests"]) == {"1", "2"}


def test_segments_cover_every_episode_with_right_padding(runs, tmp_path: Path) -> None:
    store = make_store(runs[0], tmp_path / "store")
    starts = store.episode_starts
    lengths = np.diff(starts)
    segments = store.segments(8, 4)
    assert len(segments) == int(np.sum(-(-lengths // 4)))
    episode_of = np.searchsorted(starts, segments[:, 0], side="right") - 1
    offset = segments[:, 0] - starts[episode_of]
    assert (offset % 4 == 0).all()
    np.testing.assert_array_equal(segments[:, 1], np.minimum(8, lengths[episode_of] - offset))
    mask = segment_mask(segments[:, 1], 8)
    assert mask.shape == (len(segments), 8) and mask[:, 0].all()
    assert (segments[:, 0] + mask.sum(1) <= starts[episode_of + 1]).all()  # never past the episode


def digest(path: Path) -> str:
    return hashlib.sha256(
        b"".join((path / f).read_bytes() for f in sorted(p.name for p in path.glob("*.npy")))
    ).hexdigest()


def test_subsample_is_deterministic(runs, tmp_path: Path) -> None:
    make_store(runs[0], tmp_path / "a", seed=3)
    make_store(runs[0], tmp_path / "b", seed=3)
    make_store(runs[0], tmp_path / "c", seed=4)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_checkpoint_window_keeps_episodes_of_late_files(runs, tmp_path: Path) -> None:
    root, _ = runs
    store = make_store(root, tmp_path / "expert", transitions=50, window=(0.7, 1.0))
    late_starts = set()
    for run in (1, 2):
        replay_dir = root / GAME / str(run) / "replay_logs"
        n_files = index_run(replay_dir).num_files
        for episode, _, frames in read_episodes(replay_dir):
            if not episode.truncated and episode.position / n_files >= 0.7:
                late_starts.add((run, int(decode(frames)[0][0])))
    steps, run_of = decode(np.asarray(store.frames))
    firsts = {(int(run_of[i]), int(steps[i])) for i in store.episode_starts[:-1]}
    assert firsts and firsts <= late_starts
    assert len(store.segments(8, 1)) == len(store)  # stride 1: a segment starts at every step
    with pytest.raises(ValueError, match=r"no whole episode .* within checkpoint window"):
        make_store(root, tmp_path / "none", window=(0.999, 1.0))
    assert not (tmp_path / "none").exists()


def test_actions_outside_the_minimal_set_are_rejected(runs, tmp_path: Path) -> None:
    root, truth = runs
    replay_dir = root / GAME / "1" / "replay_logs"
    first = next(i for i, (action, _, _) in sorted(truth[1].items()) if action >= 4)  # a step's id
    first_row = next(
        episode.start_row + int(np.flatnonzero(decode(frames)[0] == first)[0])
        for episode, _, frames in read_episodes(replay_dir)
        if first in decode(frames)[0]
    )
    with pytest.raises(
        SubsampleError,
        match=rf"action_ckpt\.\d+\.gz: global row {first_row}: action \d is outside Atlantis's minimal "
        r"action set of 4 actions \(0 to 3\): is this run really Atlantis",
    ):
        build_store(
            game="Atlantis",  # 4 minimal actions, the run has 6
            replay_dirs={1: root / GAME / "1" / "replay_logs"},
            manifests={1: root / "manifests" / GAME / "1.tsv"},
            out=tmp_path / "wrong",
            transitions_per_game=700,
            seed=0,
            progress=False,
        )
    assert not (tmp_path / "wrong").exists() and not list(tmp_path.glob(".wrong*"))


def test_run_picks_match_the_reference_draw() -> None:
    picks = pick_runs(games.PRETRAIN_GAMES, [1, 2, 3, 4, 5], 2, seed=0)
    expected = {
        "Assault": (1, 3), "Atlantis": (1, 3), "BeamRider": (2, 4), "Berzerk": (2, 4), "Carnival": (3, 5),
        "Centipede": (3, 4), "ChopperCommand": (3, 5), "DemonAttack": (2, 4), "NameThisGame": (1, 5),
        "Phoenix": (3, 5), "Seaquest": (2, 5), "SpaceInvaders": (1, 2), "StarGunner": (2, 4),
        "TimePilot": (1, 3), "Zaxxon": (3, 4),
    }  # fmt: skip
    assert picks == expected
    assert pick_runs(["Pong"], [1, 2, 3], 3, seed=9) == {"Pong": (1, 2, 3)}
    with pytest.raises(ValueError, match="cannot pick 4 runs"):
        pick_runs(["Pong"], [1, 2, 3], 4, seed=0)


def test_a_quality_window_without_a_whole_episode_is_one_line(
    runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It names the window (its params key), the game and the run, and what the run does hold."""
    root, _ = runs
    replay_dir = root / GAME / "1" / "replay_logs"
    index = index_run(replay_dir)
    starts = sorted({e.position for e in index.whole_episodes()})
    params = (
        '{"transitions_per_game": 50, "runs_per_game": 1, "seed": 0, "qualities": {"expert": [0.999, 1.0]}}'
    )
    status = jowa_main(
        ["data", "finetune-set", "--params", params, "--quality", "expert", "--game", GAME, "--runs", "1",
         "--replay-dirs", str(replay_dir), "--manifests", str(root / "manifests" / GAME / "1.tsv"),
         "--out", str(tmp_path / "expert")]
    )  # fmt: skip
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("INFO ")]
    assert status == 1 and errors == [
        f"jowa data finetune-set: error: {GAME}: no whole episode starts within the window "
        f"finetune_data.qualities.expert [0.999, 1.0] of run 1 ({replay_dir}: {index.num_files} checkpoints, "
        f"whole episodes start in checkpoints {starts[0]} to {starts[-1]}); expected at least one: widen the "
        "window or use longer runs"
    ]
    assert not (tmp_path / "expert").exists()
