"""Tests for jowa.data.download and the modules it drives (gsutil, verify, manifest).

Real gsutil copies from a local mirror, a fake gsutil plays the gs:// failure modes. The mirror is the
Dopamine-written fixture (game "Long", run 1, 12 suffixes × 6 files). This machine cannot reach Google, so
the 403 and unreachable paths run a small fake `gsutil` placed first on PATH. gsutil is a declared
dependency (the `[workflow]` extra), so a missing one fails the tests that need it instead of skipping them.
"""

from __future__ import annotations

import filecmp
import hashlib
import os
import re
import shutil
import stat
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jowa.data import gsutil
from jowa.data.dopamine.format import checkpoint_filename, write_array
from jowa.data.download import DownloadError, download_run, staging_dir
from jowa.data.episodes import ReplayFormatError
from jowa.data.manifest import read_manifest, write_manifest
from jowa.data.verify import check_run_complete

FIXTURE = Path(__file__).resolve().parent / "reference" / "dopamine_fixture"
GAME, RUN, N_SUFFIXES = "Long", 1, 12
DENIED_LINE = (
    "AccessDeniedException: 403 anonymous caller does not have storage.objects.list access to the Google "
    "Cloud Storage bucket. Permission 'storage.objects.list' denied on resource (or it may not exist)."
)
UNREACHABLE_LINE = "httplib2.error.ServerNotFoundError: Unable to find the server at storage.googleapis.com"


@pytest.fixture
def real_gsutil() -> str:
    """The installed gsutil; its absence is a broken install, so the test fails rather than skips."""
    found = shutil.which("gsutil")
    if found is None:
        pytest.fail("gsutil not found on PATH; install the [workflow] extra")
    return found


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    """A writable local mirror holding mirror/Long/1/replay_logs (the fixture is read-only)."""
    root = tmp_path / "mirror"
    shutil.copytree(FIXTURE / GAME, root / GAME, copy_function=shutil.copyfile)
    return root


@pytest.fixture
def out(tmp_path: Path) -> tuple[Path, Path]:
    """(dest, manifest) the way the workflow lays them out."""
    run_dir = tmp_path / "data" / GAME / str(RUN)
    return run_dir / "replay_logs", run_dir / "manifest.tsv"


def replay_logs(mirror: Path) -> Path:
    return mirror / GAME / str(RUN) / "replay_logs"


def fake_gsutil(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    """Put an executable `gsutil` running the shell `body` first on PATH; returns its bin directory."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir(exist_ok=True)
    script = bindir / "gsutil"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return bindir


def assert_no_outputs(dest: Path, manifest: Path) -> None:
    assert not dest.exists()
    assert not manifest.exists()
    if manifest.parent.exists():
        assert not list(manifest.parent.glob(f".{manifest.name}.tmp-*"))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------------------
# Local mirror through real gsutil
# --------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("real_gsutil")
def test_download_from_local_mirror_is_complete_identical_and_idempotent(mirror, out, tmp_path, monkeypatch):
    dest, manifest = out
    assert download_run(str(mirror), GAME, RUN, dest, manifest, progress=False) == dest

    src = replay_logs(mirror)
    names = sorted(os.listdir(src))
    assert sorted(os.listdir(dest)) == names and len(names) == 6 * N_SUFFIXES
    match, mismatch, errors = filecmp.cmpfiles(src, dest, names, shallow=False)
    assert (len(match), mismatch, errors) == (72, [], [])
    assert not staging_dir(dest).exists()

    rows = read_manifest(manifest)
    assert manifest.read_text().splitlines()[0] == "name\tsize\tmd5"
    assert [r["name"] for r in rows] == names
    for row in rows:
        assert row["size"] == (src / row["name"]).stat().st_size
        assert row["md5"] == md5(src / row["name"])
    assert check_run_complete(dest) == list(range(N_SUFFIXES))

    # Second call: nothing to do, so even a broken gsutil is never run and nothing is rewritten.
    before = manifest.stat().st_mtime_ns
    fake_gsutil(tmp_path, monkeypatch, "echo should not run >&2; exit 1")
    assert download_run(str(mirror), GAME, RUN, dest, manifest, progress=False) == dest
    assert manifest.stat().st_mtime_ns == before


@pytest.mark.usefixtures("real_gsutil")
@pytest.mark.parametrize("form", ["relative", "file_url"])
def test_source_as_relative_path_or_file_url(mirror, out, tmp_path, monkeypatch, capsys, form):
    monkeypatch.chdir(tmp_path)
    source = "mirror" if form == "relative" else f"file://{mirror}"
    dest, manifest = out
    download_run(source, GAME, RUN, dest, manifest, progress=True)
    assert len(read_manifest(manifest)) == 72
    assert f"{GAME}/{RUN}" in capsys.readouterr().err  # the byte progress bar went to stderr


@pytest.mark.usefixtures("real_gsutil")
def test_resume_keeps_staged_files_and_replaces_partial_ones(mirror, out):
    dest, manifest = out
    src = replay_logs(mirror)
    staging = staging_dir(dest)
    staging.mkdir(parents=True)
    kept = sorted(os.listdir(src))[:30]
    old = 1_000_000_000  # 2001: any recopy would carry a fresh mtime
    for name in kept:
        shutil.copyfile(src / name, staging / name)
        os.utime(staging / name, (old, old))
    partial = checkpoint_filename("terminal", 9)
    assert partial not in kept
    (staging / partial).write_bytes((src / partial).read_bytes()[:50])  # an interrupted copy
    (staging / "stray_ckpt.txt").write_text("not part of the run")

    download_run(str(mirror), GAME, RUN, dest, manifest, progress=False)

    assert sorted(os.listdir(dest)) == sorted(os.listdir(src))
    assert sorted(filecmp.cmpfiles(src, dest, os.listdir(src), shallow=False)[0]) == sorted(os.listdir(src))
    assert all((dest / name).stat().st_mtime == old for name in kept), "cp -n recopied staged files"
    assert check_run_complete(dest) == list(range(N_SUFFIXES))


@pytest.mark.usefixtures("real_gsutil")
def test_stale_dest_without_manifest_is_reverified_not_trusted(mirror, out):
    dest, manifest = out
    dest.mkdir(parents=True)
    (dest / checkpoint_filename("action", 0)).write_bytes(b"garbage")  # wrong size: must be refetched
    download_run(str(mirror), GAME, RUN, dest, manifest, progress=False)
    src = replay_logs(mirror)
    assert filecmp.cmp(src / checkpoint_filename("action", 0), dest / checkpoint_filename("action", 0), False)
    assert len(read_manifest(manifest)) == 72


# --------------------------------------------------------------------------------------------------
# Incomplete or corrupt mirrors
# --------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("real_gsutil")
def test_missing_middle_suffix_is_named(mirror, out):
    dest, manifest = out
    for path in replay_logs(mirror).glob("*_ckpt.5.gz"):
        path.unlink()
    with pytest.raises(DownloadError, match=r"suffix 5: all its files are missing") as info:
        download_run(str(mirror), GAME, RUN, dest, manifest, progress=False)
    assert isinstance(info.value.__cause__, ReplayFormatError)  # the file-set check, wrapped
    assert_no_outputs(dest, manifest)


@pytest.mark.usefixtures("real_gsutil")
def test_missing_single_file_is_named(mirror, out):
    dest, manifest = out
    name = checkpoint_filename("reward", 3)
    (replay_logs(mirror) / name).unlink()
    with pytest.raises(DownloadError, match=rf"suffix 3: missing {re.escape(name)}") as info:
        download_run(str(mirror), GAME, RUN, dest, manifest, progress=False)
    assert isinstance(info.value.__cause__, ReplayFormatError)  # the file-set check, wrapped
    assert_no_outputs(dest, manifest)


def _truncate_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _clobber_magic(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[0:4] = b"XXXX"
    path.write_bytes(bytes(data))


def _clobber_deflate_start(path: Path) -> None:
    """Overwrite the first deflate bytes (after the gzip FNAME field): the .npy header becomes garbage."""
    data = bytearray(path.read_bytes())
    start = data.index(0, 10) + 1
    data[start : start + 12] = b"\xff" * 12
    path.write_bytes(bytes(data))


def _drop_trailer(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-4])


@pytest.mark.usefixtures("real_gsutil")
@pytest.mark.parametrize(
    ("kind", "suffix", "damage"),
    [
        ("add_count", 4, _truncate_half),
        ("action", 7, _truncate_half),
        ("observation", 2, _clobber_magic),
        ("invalid_range", 3, _clobber_deflate_start),
        ("terminal", 8, _drop_trailer),
    ],
)
def test_corrupt_file_is_named(mirror, out, kind, suffix, damage):
    dest, manifest = out
    name = checkpoint_filename(kind, suffix)
    damage(replay_logs(mirror) / name)
    with pytest.raises(DownloadError, match=re.escape(name)):
        download_run(str(mirror), GAME, RUN, dest, manifest, progress=False)
    assert_no_outputs(dest, manifest)
    assert not (staging_dir(dest) / name).exists(), "a bad staged file would be skipped by cp -n on retry"


@pytest.mark.usefixtures("real_gsutil")
def test_wrong_dtype_is_named(mirror, out):
    dest, manifest = out
    name = checkpoint_filename("action", 1)
    write_array(replay_logs(mirror) / name, np.zeros(40, np.int64))
    with pytest.raises(DownloadError, match=rf"{re.escape(name)}: int64 .* expected int32"):
        download_run(str(mirror), GAME, RUN, dest, manifest, progress=False)
    assert_no_outputs(dest, manifest)


def test_check_run_complete_on_fixture_runs():
    assert check_run_complete(FIXTURE / "Long/1/replay_logs") == list(range(12))
    assert check_run_complete(FIXTURE / "Short/1/replay_logs") == [0, 1, 2]
    assert check_run_complete(FIXTURE / "Edge/1/replay_logs") == [0, 1]


def test_check_run_complete_flags_row_count_mismatch(mirror):
    name = checkpoint_filename("reward", 6)
    write_array(replay_logs(mirror) / name, np.zeros(39, np.float32))
    with pytest.raises(
        ReplayFormatError, match=rf"suffix 6 arrays disagree on the row count.*{re.escape(name)}: 39"
    ):
        check_run_complete(replay_logs(mirror))


# --------------------------------------------------------------------------------------------------
# Manifest
# --------------------------------------------------------------------------------------------------


def test_manifest_round_trip_and_rejects_garbage(mirror, tmp_path):
    path = tmp_path / "m.tsv"
    rows = write_manifest(replay_logs(mirror), path)
    assert read_manifest(path) == rows and len(rows) == 72
    assert [r["name"] for r in rows] == sorted(r["name"] for r in rows)
    path.write_text("file\tbytes\n")
    with pytest.raises(ValueError, match="not a manifest"):
        read_manifest(path)
    path.write_text("name\tsize\tmd5\nx\tnot-a-size\tabc\n")
    with pytest.raises(ValueError, match="line 2"):
        read_manifest(path)


# --------------------------------------------------------------------------------------------------
# Source problems and gs:// failure modes (fake gsutil)
# --------------------------------------------------------------------------------------------------


def test_missing_local_mirror_names_the_path(tmp_path, out):
    dest, manifest = out
    root = tmp_path / "nowhere"
    with pytest.raises(DownloadError, match=re.escape(str(root))):
        download_run(str(root), GAME, RUN, dest, manifest, progress=False)
    assert_no_outputs(dest, manifest)


def test_mirror_without_the_run_names_the_path(mirror, out):
    dest, manifest = out
    with pytest.raises(DownloadError) as info:
        download_run(str(mirror), GAME, 3, dest, manifest, progress=False)
    assert str(mirror / GAME / "3" / "replay_logs") in str(info.value)
    assert f"{mirror / GAME / '3'} does not exist" in str(info.value)
    assert_no_outputs(dest, manifest)


def test_gsutil_not_installed(mirror, out, tmp_path, monkeypatch):
    empty = tmp_path / "emptybin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    dest, manifest = out
    with pytest.raises(DownloadError, match="pip install gsutil"):
        download_run(str(mirror), GAME, RUN, dest, manifest, progress=False)
    assert_no_outputs(dest, manifest)


def test_bucket_403_gives_ways_forward_and_leaves_nothing(tmp_path, out, monkeypatch):
    fake_gsutil(tmp_path, monkeypatch, f'echo "{DENIED_LINE}" >&2\nexit 1')
    dest, manifest = out
    manifest.parent.mkdir(parents=True)
    manifest.write_text("name\tsize\tmd5\n")  # stale manifest of an older attempt: must go too
    with pytest.raises(DownloadError) as info:
        download_run("gs://atari-replay-datasets/dqn", "Pong", 1, dest, manifest, progress=False)
    msg = str(info.value)
    assert "gs://atari-replay-datasets" in msg
    assert "403" in msg and "access denied" in msg and "since 2025" in msg
    assert "data.source" in msg and "params.yaml" in msg and "{Game}/{run}/replay_logs/" in msg
    assert "data.source: generate" in msg and "ale-py" in msg
    assert_no_outputs(dest, manifest)


def test_unreachable_bucket_is_reported(tmp_path, out, monkeypatch):
    fake_gsutil(
        tmp_path,
        monkeypatch,
        f"echo 'Traceback (most recent call last):' >&2\necho '{UNREACHABLE_LINE}' >&2\nexit 1",
    )
    dest, manifest = out
    with pytest.raises(DownloadError, match="could not be reached") as info:
        download_run("gs://atari-replay-datasets/dqn", "Pong", 1, dest, manifest, progress=False)
    assert UNREACHABLE_LINE in str(info.value)
    assert "data.source: generate" in str(info.value)
    assert_no_outputs(dest, manifest)


def _pid_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in {"Z", "X"}


def test_listing_timeout_kills_the_whole_process_group(tmp_path, out, monkeypatch):
    pidfile = tmp_path / "child.pid"
    fake_gsutil(tmp_path, monkeypatch, f"sleep 60 &\necho $! > '{pidfile}'\nsleep 60")
    monkeypatch.setattr(gsutil, "LIST_TIMEOUT_S", 1.0)
    dest, manifest = out
    started = time.monotonic()
    with pytest.raises(DownloadError, match="could not be reached.*longer than 1 s"):
        download_run("gs://atari-replay-datasets/dqn", "Pong", 1, dest, manifest, progress=False)
    assert time.monotonic() - started < 10
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while not _pid_gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pid_gone(child), "gsutil's child survived"
    assert_no_outputs(dest, manifest)


def test_gs_source_lists_then_copies(mirror, out, tmp_path, monkeypatch, real_gsutil):
    """The gs:// path end to end: a fake gsutil serves `ls -l` from the mirror, real gsutil does `cp`."""
    script = tmp_path / "fakebin" / "gsutil"
    script.parent.mkdir()
    script.write_text(
        f"""#!{sys.executable}
import os, sys, time
MIRROR, REAL, PREFIX = {str(mirror)!r}, {real_gsutil!r}, "gs://fake-bucket/dqn"
args = sys.argv[1:]
if "ls" in args:
    url = args[-1].rstrip("/")
    local = MIRROR + url[len(PREFIX):]
    total = 0
    for name in sorted(os.listdir(local)):
        size = os.path.getsize(os.path.join(local, name))
        total += size
        print("%10s  2019-07-14T00:00:00Z  %s/%s" % (size, url, name))
    print("TOTAL: %d objects, %d bytes (x KiB)" % (len(os.listdir(local)), total))
    sys.exit(0)
os.execv(REAL, [REAL] + [a.replace(PREFIX, MIRROR) for a in args])
"""
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    dest, manifest = out
    download_run("gs://fake-bucket/dqn", GAME, RUN, dest, manifest, progress=False)
    src = replay_logs(mirror)
    assert sorted(filecmp.cmpfiles(src, dest, os.listdir(src), shallow=False)[0]) == sorted(os.listdir(src))
    assert len(read_manifest(manifest)) == 72


def test_parse_ls_long_skips_directories_and_total():
    """Every object is listed (download keeps only the replay files); sub-directories and TOTAL are not."""
    text = (
        "       156  2019-07-14T00:00:00Z  gs://b/dqn/Pong/1/replay_logs/$store$_action_ckpt.0.gz\n"
        "       105  2019-07-14T00:00:00Z  gs://b/dqn/Pong/1/replay_logs/add_count_ckpt.0.gz\n"
        "                                 gs://b/dqn/Pong/1/replay_logs/sub/\n"
        "        10  2019-07-14T00:00:00Z  gs://b/dqn/Pong/1/replay_logs/README\n"
        "TOTAL: 3 objects, 271 bytes (271 B)\n"
    )
    assert gsutil.parse_ls_long(text) == {
        "$store$_action_ckpt.0.gz": 156,
        "add_count_ckpt.0.gz": 105,
        "README": 10,
    }
