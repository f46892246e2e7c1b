"""Verification against the manifest: `jowa data verify` and the store-building commands that run it first.

Every bad file is reported by name, whatever is wrong with it (size, bytes, presence, format) and
whether or not a sampler would read it; a file that is not gzip says so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from jowa.data.dopamine.format import checkpoint_filename
from jowa.data.generate import DopamineReplayWriter
from jowa.data.manifest import verify_against_manifest, write_manifest
from jowa.data.verify import RunVerificationError, verify_run, verify_runs

GAME = "SpaceInvaders"  # 6 minimal actions
CAPACITY = 100
FINETUNE = {"transitions_per_game": 50, "runs_per_game": 1, "seed": 0, "qualities": {"expert": [0.8, 1.0]}}
SUBSAMPLE = {"runs_per_game": 1, "seed": 0, "transitions_per_game": 50}
HTML = b"<html><body>403 Forbidden</body></html>\n"


def write_run(run_dir: Path, seed: int) -> None:
    """A run of random episodes (10 suffixes) in the Dopamine layout, and its manifest beside it."""
    rng = np.random.default_rng(seed)
    writer = DopamineReplayWriter(run_dir / "replay_logs", capacity=CAPACITY)
    for _ in range(40):
        length = int(rng.integers(5, 40))
        for t in range(length):
            frame = np.full((84, 84), t, np.uint8)
            writer.add(frame, int(rng.integers(0, 6)), float(rng.choice([-1.0, 0.0, 1.0])), t == length - 1)
    writer.finish()
    write_manifest(run_dir / "replay_logs", run_dir / "manifest.tsv")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    write_run(root / "1", seed=1)
    write_run(root / "2", seed=2)
    return root


@pytest.fixture
def runs(pristine: Path, tmp_path: Path) -> Path:
    """A writable copy of two runs, `runs/{1,2}/replay_logs` with `runs/{1,2}/manifest.tsv`."""
    shutil.copytree(pristine, tmp_path / "runs")
    return tmp_path / "runs"


def jowa(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(["jowa", "-q", *map(str, args)], capture_output=True, text=True, timeout=120)


def damage(replay_dir: Path) -> dict[Path, str]:
    """Five kinds of damage; returns each damaged path and a fragment its report must hold."""
    truncated = replay_dir / checkpoint_filename("observation", 0)
    truncated.write_bytes(truncated.read_bytes()[:-100])
    flipped = replay_dir / checkpoint_filename("action", 2)
    data = bytearray(flipped.read_bytes())
    data[-12] ^= 0xFF  # inside the deflate stream: same size, other bytes, a bad CRC
    flipped.write_bytes(bytes(data))
    missing = replay_dir / checkpoint_filename("add_count", 1)
    missing.unlink()
    extra = replay_dir / "notes.txt"
    extra.write_text("hello\n")
    html = replay_dir / checkpoint_filename("reward", 3)
    html.write_bytes(HTML)
    (replay_dir / ".snakemake_timestamp").touch()  # Snakemake's own: not a problem
    return {
        truncated: "bytes, ",
        flipped: "same size, other bytes",
        missing: "missing (listed in",
        extra: "not listed in",
        html: f"{len(HTML)} bytes, ",
    }


def test_a_sound_run_verifies(runs: Path) -> None:
    assert verify_run(runs / "1" / "replay_logs", runs / "1" / "manifest.tsv") == {}
    pairs = [(runs / r / "replay_logs", runs / r / "manifest.tsv") for r in ("1", "2")]
    assert verify_runs(pairs) == 2 * 60


def test_every_bad_file_is_named_with_what_is_wrong(runs: Path) -> None:
    replay_dir, manifest = runs / "1" / "replay_logs", runs / "1" / "manifest.tsv"
    expected = damage(replay_dir)
    problems = verify_run(replay_dir, manifest)
    assert set(problems) == set(expected)
    for path, fragment in expected.items():
        assert problems[path].startswith(f"{path}: ") and fragment in problems[path], problems[path]
    html = replay_dir / checkpoint_filename("reward", 3)
    assert f"not a gzip file (it starts with {HTML[:8]!r})" in problems[html]
    assert "CRC check failed" in problems[replay_dir / checkpoint_filename("action", 2)]
    assert not any("end-of-stream marker" in text for text in problems.values())


def test_the_manifest_check_knows_no_layout(tmp_path: Path) -> None:
    """Size and md5 apply to any file set (an RL Unplugged shard, say); the format check is separate."""
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(3):
        (shards / f"run_1-{i:05d}-of-00003").write_bytes(bytes([i]) * (1000 + i))
    write_manifest(shards, tmp_path / "m.tsv")
    assert verify_against_manifest(shards, tmp_path / "m.tsv") == {}
    (shards / "run_1-00001-of-00003").write_bytes(b"\x07" * 1001)
    assert list(verify_against_manifest(shards, tmp_path / "m.tsv")) == [shards / "run_1-00001-of-00003"]
    shutil.rmtree(shards)
    assert "directory missing" in verify_against_manifest(shards, tmp_path / "m.tsv")[shards]


def test_verify_command_names_every_bad_file_in_one_line(runs: Path) -> None:
    ok = jowa(
        "data",
        "verify",
        "--replay-dir",
        runs / "1" / "replay_logs",
        "--manifest",
        runs / "1" / "manifest.tsv",
    )
    assert ok.returncode == 0, ok.stderr
    assert "1 run(s), 60 files: sizes, md5s and formats all match" in ok.stderr
    expected = damage(runs / "2" / "replay_logs")
    (runs / "1" / "manifest.tsv").unlink()
    bad = jowa(
        "data", "verify", "--replay-dirs", runs / "1" / "replay_logs", runs / "2" / "replay_logs",
        "--manifests", runs / "1" / "manifest.tsv", runs / "2" / "manifest.tsv",
    )  # fmt: skip
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    (line,) = [ln for ln in bad.stderr.splitlines() if "error" in ln]
    assert line.startswith("jowa data verify: error: 6 bad file(s): ")
    assert f"{runs / '1' / 'manifest.tsv'}: manifest missing" in line
    assert all(str(path) in line for path in expected) and "not a gzip file" in line


def test_a_store_command_verifies_before_reading_even_files_it_would_not_read(runs: Path) -> None:
    """The expert window reads the last 20% of the files; a bad first file still stops the job."""
    bad = runs / "1" / "replay_logs" / checkpoint_filename("reward", 0)
    bad.write_bytes(HTML)
    proc = jowa(
        "data", "finetune-set", "--params", json.dumps(FINETUNE), "--quality", "expert", "--game", GAME,
        "--runs", "1", "--replay-dirs", runs / "1" / "replay_logs",
        "--manifests", runs / "1" / "manifest.tsv", "--out", runs / "store",
    )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"jowa data finetune-set: error: 1 bad file(s): {bad}: {len(HTML)} bytes" in proc.stderr
    assert "not a gzip file" in proc.stderr and "delete the run and its manifest" in proc.stderr
    assert not (runs / "store").exists() and not list(runs.glob(".store*"))


def test_subsample_says_how_much_more_it_stored_and_refuses_an_existing_store(runs: Path) -> None:
    args = [
        "data", "subsample", "--params", json.dumps(SUBSAMPLE), "--game", GAME, "--runs", "1", "2",
        "--replay-dirs", runs / "1" / "replay_logs", runs / "2" / "replay_logs",
        "--manifests", runs / "1" / "manifest.tsv", runs / "2" / "manifest.tsv", "--out", runs / "store",
    ]  # fmt: skip
    first = jowa(*args)
    assert first.returncode == 0, first.stderr
    meta = json.loads((runs / "store" / "meta.json").read_text())
    extra = meta["transitions"] - SUBSAMPLE["transitions_per_game"]
    assert extra > 0  # episodes of 5 to 39 steps: the last one drawn overshoots 50
    assert (
        f"{runs / 'store'}: {meta['transitions']} transitions in {meta['episodes']} episodes, {extra} more "
        f"than the 50 asked for (whole episodes)"
    ) in first.stderr
    again = jowa(*args)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert f"error: {runs / 'store'} already exists; delete it, or pass --overwrite" in again.stderr
    stamp = (runs / "store" / "meta.json").stat().st_mtime_ns
    forced = jowa(*args, "--overwrite")
    assert forced.returncode == 0, forced.stderr
    assert (runs / "store" / "meta.json").stat().st_mtime_ns != stamp
    assert json.loads((runs / "store" / "meta.json").read_text()) == meta


def test_a_malformed_manifest_is_an_error_not_a_problem_list(runs: Path) -> None:
    (runs / "1" / "manifest.tsv").write_text("name\tsize\tmd5\nfoo\tbar\n")
    with pytest.raises(ValueError, match="line 2 is not"):
        verify_run(runs / "1" / "replay_logs", runs / "1" / "manifest.tsv")
    with pytest.raises(RunVerificationError, match="line 2 is not"):
        verify_runs([(runs / "1" / "replay_logs", runs / "1" / "manifest.tsv")])
