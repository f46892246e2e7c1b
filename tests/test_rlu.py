"""RL Unplugged's episode-ordered layout: TFRecord framing, Example fields, PNG frames, and equivalence.

Files are written here in exactly the published format (GZIP TFRecord, masked CRC32C, one
`tf.train.Example` per episode with PNG observations). The equivalence test writes the same episodes in
both layouts and requires identical training stores.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import crcmod.predefined
import numpy as np
import pytest

from jowa.cli import main as jowa_main
from jowa.data.dopamine.extract import read_episodes
from jowa.data.dopamine.replay import index_run
from jowa.data.download import DownloadError, download_run
from jowa.data.episodes import ReplayFormatError
from jowa.data.generate import DopamineReplayWriter, generate_run
from jowa.data.manifest import read_manifest, write_manifest
from jowa.data.rlu.format import Example, decode_episode, encode_episode, num_shards, shard_filename
from jowa.data.rlu.run import index_rlu_run, write_rlu_run
from jowa.data.rlu.tfrecord import masked_crc32c, read_records, write_records
from jowa.data.runs import open_run
from jowa.data.store import TrainingStore
from jowa.data.subsample import build_store
from jowa.data.verify import RunVerificationError, verify_runs


def test_masked_crc_matches_an_independent_crc32c() -> None:
    crc32c = crcmod.predefined.mkCrcFun("crc-32c")
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value: crcmod really is CRC32C
    for data in (b"", b"\x00" * 8, b"a tf.train.Example", bytes(range(256)) * 3):
        crc = crc32c(data)
        assert masked_crc32c(data) == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_records_round_trip_and_framing(tmp_path: Path) -> None:
    records = [b"", b"x", bytes(range(256)) * 50]
    path = tmp_path / "f"
    write_records(path, records)
    assert list(read_records(path)) == records
    raw = gzip.decompress(path.read_bytes())
    length, length_crc = struct.unpack("<QI", raw[:12])  # the framing, read by hand
    assert (length, length_crc) == (0, masked_crc32c(struct.pack("<Q", 0)))
    assert raw[12:16] == struct.pack("<I", masked_crc32c(b""))


def test_written_shards_are_byte_stable(tmp_path: Path) -> None:
    write_records(tmp_path / "a", [b"same"])
    write_records(tmp_path / "b", [b"same"])
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda raw: raw[:-3], "ends inside a record"),
        (lambda raw: raw[:40] + bytes([raw[40] ^ 1]) + raw[41:], "data's CRC does not match"),
        (lambda raw: raw[:5] + b"\xff" + raw[6:], "length's CRC does not match"),
    ],
)
def test_damaged_records_name_file_and_record(tmp_path: Path, damage, message: str) -> None:
    path = tmp_path / "shard"
    raw = b"".join(
        struct.pack("<Q", len(d)) + struct.pack("<I", masked_crc32c(struct.pack("<Q", len(d))))
        + d + struct.pack("<I", masked_crc32c(d))
        for d in (b"first record", b"second record is longer than the first")
    )  # fmt: skip
    path.write_bytes(gzip.compress(damage(raw[:24]) + raw[24:] if "length" in message else damage(raw)))
    with pytest.raises(ReplayFormatError, match=message) as err:
        list(read_records(path))
    assert str(path) in str(err.value) and "record" in str(err.value)


def test_not_gzip_and_truncated_gzip_say_so(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"<html>403 Forbidden</html>")
    with pytest.raises(ReplayFormatError, match="not a gzip file"):
        list(read_records(plain))
    cut = tmp_path / "cut"
    write_records(cut, [bytes(range(256)) * 100])
    cut.write_bytes(cut.read_bytes()[:-20])
    with pytest.raises(ReplayFormatError, match=str(cut)):
        list(read_records(cut))


def test_example_fields_and_terminal_alignment() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (3, 84, 84), dtype=np.uint8)
    record = encode_episode(
        checkpoint=4, episode=9, frames=frames, actions=[2, 0, 1], rewards=[0.0, 7.0, -2.0], terminal=True
    )
    episode = decode_episode(record, "here")
    assert (episode.checkpoint, episode.episode, episode.terminal, len(episode)) == (4, 9, True, 3)
    np.testing.assert_array_equal(episode.actions, [2, 0, 1])
    np.testing.assert_array_equal(episode.rewards, [0.0, 1.0, -1.0])  # the clipped field
    cut = decode_episode(
        encode_episode(
            checkpoint=0, episode=0, frames=frames, actions=[1, 1, 1], rewards=[0, 0, 0], terminal=False
        ),
        "here",
    )
    assert not cut.terminal and len(cut) == 3  # every step of a cut episode is a transition


def test_bad_examples_are_named(tmp_path: Path) -> None:
    with pytest.raises(ReplayFormatError, match="here: not a tf.train.Example"):
        decode_episode(b"\xff\xff\xff", "here")
    example = Example()
    example.features.feature["actions"].int64_list.value.extend([1, 2])
    with pytest.raises(ReplayFormatError, match="no 'observations' feature"):
        decode_episode(example.SerializeToString(), "here")


def test_shard_counts_and_missing_shards(tmp_path: Path) -> None:
    assert num_shards("Carnival") == 49 and num_shards("Pong") == 50
    for shard in (0, 2):
        write_records(tmp_path / shard_filename(3, shard, 3), [])
    with pytest.raises(ReplayFormatError, match="missing run_3-00001-of-00003"):
        index_rlu_run(tmp_path)


def _dopamine_run(root: Path, steps: int, seed: int) -> Path:
    """Random-length episodes with recognisable frames in the Dopamine layout; some of length 1."""
    rng = np.random.default_rng(seed)
    replay_dir = root / "dopamine"
    replay_dir.mkdir(parents=True)
    writer = DopamineReplayWriter(replay_dir, capacity=90)
    step = 0
    while step < steps:
        length = 1 if rng.random() < 0.2 else int(rng.integers(2, 30))
        for t in range(length):
            frame = np.full((84, 84), step % 251, np.uint8)
            writer.add(frame, int(rng.integers(0, 6)), float(rng.choice([-3.0, 0.0, 1.0])), t == length - 1)
            step += 1
    writer.finish()
    return replay_dir


def _both_layouts(root: Path, replay_dir: Path, run: int) -> tuple[Path, Path]:
    rlu_dir = root / "rlu" / str(run)
    write_rlu_run(read_episodes(replay_dir), rlu_dir, run, shards=index_run(replay_dir).num_files)
    for layout_dir in (replay_dir, rlu_dir):
        write_manifest(layout_dir, layout_dir.parent / f"{layout_dir.name}.tsv")
    return replay_dir, rlu_dir


def test_rlu_run_indexes_like_the_dopamine_run(tmp_path: Path) -> None:
    dopamine, rlu = _both_layouts(tmp_path, _dopamine_run(tmp_path, 700, seed=1), run=2)
    a, b = open_run(dopamine), open_run(rlu)
    assert (a.layout, b.layout) == ("dqn-replay", "rl-unplugged")
    assert b.num_checkpoints == a.num_checkpoints
    key = [(e.length, e.truncated, e.position) for e, _, _ in read_episodes(dopamine)]
    assert [(e.length, e.truncated, e.position) for e in b.episodes] == key
    assert [e for e in a.whole_episodes()] == [e for e, _, _ in read_episodes(dopamine) if not e.truncated]
    assert any(e.length == 1 and not e.truncated for e in b.episodes)


@pytest.mark.parametrize("window", [(0.0, 1.0), (0.5, 1.0)])
def test_same_episodes_in_both_layouts_give_identical_stores(tmp_path: Path, window: tuple) -> None:
    """Real ALE frames (Pong) and synthetic runs with 1-step episodes, windows by checkpoint."""
    pong = tmp_path / "pong"
    generate_run(
        "Pong", pong, steps_per_run=900, capacity=200, sticky_actions=0.25,
        max_episode_steps=120, seed=3, progress=False,
    )  # fmt: skip
    layouts = {
        "Pong": _both_layouts(tmp_path / "p", pong, run=1),
        "SpaceInvaders": _both_layouts(tmp_path / "s", _dopamine_run(tmp_path / "s", 800, seed=4), run=1),
    }
    for game, dirs in layouts.items():
        stores = []
        for i, replay_dir in enumerate(dirs):
            out = tmp_path / f"store-{game}-{i}"
            manifest = replay_dir.parent / f"{replay_dir.name}.tsv"
            build_store(
                game=game, replay_dirs={1: replay_dir}, manifests={1: manifest}, out=out,
                transitions_per_game=300, seed=0, window=window, progress=False,
            )  # fmt: skip
            stores.append(TrainingStore.open(out))
        a, b = stores
        for name in ("frames", "actions", "rewards", "terminals", "episode_starts"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=f"{game} {name}")
        assert a.frames.any() and len(a) >= 300
        assert (a.meta["source_layout"], b.meta["source_layout"]) == ("dqn-replay", "rl-unplugged")
        same = {
            k
            for k in a.meta
            if k not in ("source_layout", "source_manifests", "truncated_skipped", "gap_rows")
        }
        assert {k: a.meta[k] for k in same} == {k: b.meta[k] for k in same}


@pytest.fixture
def rlu_mirror(tmp_path: Path) -> Path:
    """A local mirror in RL Unplugged's layout: Pong runs 1 and 2, all 50 shards each."""
    mirror = tmp_path / "atari_episodes_ordered"
    source = _dopamine_run(tmp_path, 400, seed=5)
    for run in (1, 2):
        write_rlu_run(read_episodes(source), mirror / "Pong", run, shards=num_shards("Pong"))
    return mirror


def test_download_from_an_rlu_mirror_fetches_one_run_verified(rlu_mirror: Path, tmp_path: Path) -> None:
    dest, manifest = tmp_path / "res" / "Pong" / "2", tmp_path / "res" / "manifests" / "2.tsv"
    download_run(str(rlu_mirror), "Pong", 2, dest, manifest, progress=False)
    names = sorted(p.name for p in dest.iterdir())
    assert names == [shard_filename(2, s, 50) for s in range(50)]  # run 1's shards stay behind
    assert [row["name"] for row in read_manifest(manifest)] == names
    assert all((dest / n).read_bytes() == (rlu_mirror / "Pong" / n).read_bytes() for n in names)
    assert open_run(dest).layout == "rl-unplugged"


def test_download_of_a_damaged_or_short_rlu_run_says_what_is_wrong(rlu_mirror: Path, tmp_path: Path) -> None:
    dest, manifest = tmp_path / "res" / "Pong" / "1", tmp_path / "res" / "manifests" / "1.tsv"
    shard = rlu_mirror / "Pong" / shard_filename(1, 0, 50)
    shard.write_bytes(b"<html>403</html>")
    with pytest.raises(DownloadError, match=rf"{shard.name}: not a gzip file"):
        download_run(str(rlu_mirror), "Pong", 1, dest, manifest, progress=False)
    assert not dest.exists() and not manifest.exists()
    (rlu_mirror / "Pong" / shard_filename(2, 49, 50)).unlink()
    with pytest.raises(DownloadError, match="missing run_2-00049-of-00050"):
        download_run(str(rlu_mirror), "Pong", 2, dest, manifest, progress=False)


def test_unpublished_game_is_refused_with_the_ways_forward(rlu_mirror: Path, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="does not publish Berzerk") as err:
        download_run(str(rlu_mirror), "Berzerk", 1, tmp_path / "d", tmp_path / "m.tsv", progress=False)
    assert "generate" in str(err.value)


def test_verify_checks_an_rlu_run_against_its_manifest(rlu_mirror: Path, tmp_path: Path) -> None:
    dest, manifest = tmp_path / "res" / "Pong" / "1", tmp_path / "res" / "manifests" / "1.tsv"
    download_run(str(rlu_mirror), "Pong", 1, dest, manifest, progress=False)
    assert verify_runs([(dest, manifest)]) == 50
    late = dest / shard_filename(1, 45, 50)  # a shard no early-checkpoint window would read
    late.chmod(0o644)
    late.write_bytes(b"<html>503</html>")
    with pytest.raises(RunVerificationError) as err:
        verify_runs([(dest, manifest)])
    assert f"{late}: " in str(err.value) and "not a gzip file" in str(err.value)


def test_an_action_outside_the_game_names_shard_and_record_before_any_frame_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record of another game: one line naming the shard and the record, from the index alone.

    The record's first observation is no PNG either: had its frames been decoded first, that would be
    the error reported instead.
    """
    rlu_dir = _both_layouts(tmp_path, _dopamine_run(tmp_path, 300, seed=2), run=1)[1]
    shard = rlu_dir / shard_filename(1, 2, index_run(tmp_path / "dopamine").num_files)
    records = list(read_records(shard))
    example = Example.FromString(records[1])
    example.features.feature["actions"].int64_list.value[0] = 9  # SpaceInvaders has 6 actions
    example.features.feature["observations"].bytes_list.value[0] = b"not a png"
    records[1] = example.SerializeToString()
    write_records(shard, records)
    write_manifest(rlu_dir, tmp_path / "manifest.tsv")

    status = jowa_main(
        ["data", "subsample", "--params", '{"runs_per_game": 1, "transitions_per_game": 100000, "seed": 0}',
         "--game", "SpaceInvaders", "--runs", "1", "--replay-dirs", str(rlu_dir),
         "--manifests", str(tmp_path / "manifest.tsv"), "--out", str(tmp_path / "store")]
    )  # fmt: skip
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("INFO ")]
    assert status == 1 and errors == [
        f"jowa data subsample: error: {shard}: record 1: action 9 is outside SpaceInvaders's minimal action "
        "set of 6 actions (0 to 5): is this run really SpaceInvaders?"
    ]
    assert not (tmp_path / "store").exists()


def test_the_shard_count_expected_is_the_games(tmp_path: Path) -> None:
    """49 shards: a whole Carnival run (one checkpoint fewer), a short Pong run."""
    mirror = tmp_path / "atari_episodes_ordered"
    source = _dopamine_run(tmp_path, 200, seed=6)
    for game in ("Carnival", "Pong"):
        write_rlu_run(read_episodes(source), mirror / game, 1, shards=49)
    dest, manifest = tmp_path / "res" / "Carnival" / "1", tmp_path / "res" / "Carnival.tsv"
    download_run(str(mirror), "Carnival", 1, dest, manifest, progress=False)
    assert len(read_manifest(manifest)) == 49
    with pytest.raises(
        DownloadError, match=r"Pong is not a complete RL Unplugged run: 49 shards, expected 50"
    ):
        download_run(
            str(mirror), "Pong", 1, tmp_path / "res" / "Pong" / "1", tmp_path / "P.tsv", progress=False
        )
