"""Fetch one DQN-Replay run with gsutil, resumably, and publish it only once it is proven complete.

The run is copied into a hidden staging directory next to `dest` (`.{dest.name}.partial`) with
`gsutil -m cp -n`, so an interrupted copy resumes where it stopped: files already staged are skipped.
Only when gsutil finished, every file has the source's size and the run passes `jowa.data.verify` is the
staging directory renamed to `dest` and the manifest written. A failure therefore never leaves a `dest`
or a manifest behind (downstream rules would take them for a finished download); the staging directory
may stay, on purpose, so the next attempt resumes.

gsutil is used for local mirrors too (it copies local paths), so both sources take the same code path.
`gs://atari-replay-datasets` answers 403 to everyone since 2025 (docs/dqn-replay-format.md §0): that case,
and a machine that cannot reach Google at all, end in a `DownloadError` that says what to do instead.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from jowa.core.config import Source, add_run_arguments, argument_type
from jowa.core.errors import JowaError
from jowa.data import gsutil
from jowa.data.dopamine.format import parse_checkpoint_filename, run_path
from jowa.data.episodes import ReplayFormatError
from jowa.data.manifest import file_sizes, manifest_rows, read_manifest, write_manifest_rows
from jowa.data.rlu.format import num_shards, parse_shard_filename
from jowa.data.rlu.run import check_shard_set, shard_problems
from jowa.data.sources import RLU_GAMES, RLU_PREFIX, Layout, source_layout
from jowa.data.verify import check_file_set, file_problems, join_problems

__all__ = ["DownloadError", "configure_parser", "download_run", "main", "staging_dir"]

DQN_REPLAY_BUCKET = "gs://atari-replay-datasets"
#: The layout a mirror must have, as users write it in params.yaml.
MIRROR_LAYOUT = {
    "dqn-replay": run_path("{Game}", "{run}") + "/",
    "rl-unplugged": "{Game}/run_{run}-NNNNN-of-MMMMM",
}
WAYS_FORWARD = (
    f"Ways forward: (1) set `data.source: {RLU_PREFIX}` in params.yaml: RL Unplugged publishes the same "
    "agents' runs (all games of the paper but Berzerk); (2) set `data.source` to a local mirror directory "
    f"that has {MIRROR_LAYOUT['dqn-replay']} (for example a copy downloaded before 2025) or "
    f"{MIRROR_LAYOUT['rl-unplugged']}; or (3) set `data.source: generate` to play the games with ale-py and "
    "write data in the DQN-Replay layout."
)
_WHAT = {
    "dqn-replay": "DQN-Replay files (named like add_count_ckpt.0.gz)",
    "rl-unplugged": "RL Unplugged shards",
}

_WILDCARD_RE = re.compile(r"[*?\[\]]")


class DownloadError(JowaError, RuntimeError):
    """A run could not be fetched; the message says why and what to do about it."""


@dataclass(frozen=True)
class _Source:
    """Where one run's files live: a gs:// URL or a local directory, and how they are laid out."""

    location: str  # gs:// URL or absolute local path of the directory holding the run (no trailing /)
    root: str  # what the user gave as `source`, for messages
    remote: bool
    layout: Layout
    game: str
    run: int

    @property
    def bucket(self) -> str:
        return "gs://" + self.location[len("gs://") :].split("/", 1)[0]

    def item(self, name: str) -> str:
        """The argument gsutil gets for file `name` of the run."""
        return f"{self.location}/{name}"


def download_run(source: str, game: str, run: int, dest: Path, manifest: Path, *, progress: bool) -> Path:
    """Copy the run's `replay_logs/` below `source` to `dest`, verified, and write its manifest.

    `source` is a gs:// URL prefix or a local mirror (path or file:// URL). Re-running after a failure
    resumes from the staging directory; re-running after success does nothing (the manifest matches).
    """
    dest, manifest = Path(dest), Path(manifest)
    if _is_up_to_date(dest, manifest):
        return dest
    src = _resolve_source(source, game, run)
    staging = staging_dir(dest)
    if not src.remote and Path(src.location).resolve() in {dest.resolve(), staging.resolve()}:
        raise DownloadError(f"source {src.location} is the download destination itself; point it elsewhere")
    _discard_stale_outputs(dest, manifest, staging)
    if not src.remote:
        _require_local_run(src)
    try:
        exe = gsutil.find_gsutil()
    except gsutil.GsutilError as exc:
        raise DownloadError(str(exc)) from None
    expected = _list_remote(exe, src) if src.remote else _list_local(src)
    staging.mkdir(parents=True, exist_ok=True)
    _prune_staging(staging, expected)
    _copy(exe, src, expected, staging, desc=f"{game}/{run}", progress=progress)
    _verify_staging(staging, expected, src)
    _publish(staging, dest, manifest)
    return dest


def staging_dir(dest: Path) -> Path:
    """The hidden sibling that collects a run until it is complete (kept across attempts to resume)."""
    return dest.parent / f".{dest.name}.partial"


# ---------------------------------------------------------------------------------------------------
# Source resolution and listing
# ---------------------------------------------------------------------------------------------------


def _resolve_source(source: str, game: str, run: int) -> _Source:
    """Turn the configured source into the run's location; local paths become absolute for gsutil."""
    source = str(source)
    layout = source_layout(source)
    if layout == "rl-unplugged" and game not in RLU_GAMES:
        raise DownloadError(
            f"{source} does not publish {game} (RL Unplugged has 46 games, not Berzerk among them): drop it "
            f"from games.pretrain / games.finetune, or use another source for it. {WAYS_FORWARD}"
        )
    subpath = run_path(game, run) if layout == "dqn-replay" else game
    if source.startswith("gs://"):
        location = f"{source.rstrip('/')}/{subpath}"
        return _Source(location, source, remote=True, layout=layout, game=game, run=run)
    if source.startswith("file://"):
        source = source[len("file://") :]
    elif "://" in source:
        raise DownloadError(f"unsupported data source {source!r}: expected a gs:// URL or a local directory")
    root = Path(source).expanduser().absolute()
    location = str(root / subpath)
    if _WILDCARD_RE.search(location):  # gsutil would expand these as wildcards in local paths too
        raise DownloadError(f"local mirror path {location} contains one of * ? [ ], which gsutil cannot copy")
    return _Source(location, str(root), remote=False, layout=layout, game=game, run=run)


def _require_local_run(src: _Source) -> None:
    """Fail early, naming the first missing path component, for a mirror that lacks the run."""
    location, root = Path(src.location), Path(src.root)
    parts = location.relative_to(root).parts
    candidates = [root, *(root.joinpath(*parts[: i + 1]) for i in range(len(parts)))]
    missing = next((path for path in candidates if not path.is_dir()), None)
    if missing is None:
        return
    raise DownloadError(
        f"local mirror has no run at {location}: {missing} does not exist (or is not a directory). "
        f"A mirror must have {MIRROR_LAYOUT[src.layout]} under {root}."
    )


def _replay_files(sizes: dict[str, int], src: _Source) -> dict[str, int]:
    """The run's files among the entries; anything else next to them (other runs too) is not part of it."""
    if src.layout == "rl-unplugged":
        return {n: size for n, size in sizes.items() if (p := parse_shard_filename(n)) and p[0] == src.run}
    return {name: size for name, size in sizes.items() if parse_checkpoint_filename(name) is not None}


def _list_local(src: _Source) -> dict[str, int]:
    """Names and sizes of the run's replay files in a local mirror."""
    expected = _replay_files(file_sizes(Path(src.location)), src)
    if not expected:
        raise DownloadError(f"{src.location} holds no {_WHAT[src.layout]} of run {src.run}")
    return expected


def _list_remote(exe: str, src: _Source) -> dict[str, int]:
    """Names and sizes of the run's objects, from `gsutil ls -l`, with a bounded wait."""
    try:
        rc, objects, err = gsutil.list_objects(exe, f"{src.location}/")
    except gsutil.GsutilError as exc:
        raise _unreachable(src, str(exc)) from None
    if rc != 0:
        raise _classify_failure(src, err, what=f"listing {src.location}/")
    expected = _replay_files(objects, src)
    if not expected:
        raise DownloadError(f"{src.location}/ exists but holds no {_WHAT[src.layout]} of run {src.run}")
    return expected


# ---------------------------------------------------------------------------------------------------
# Staging, copying and publishing
# ---------------------------------------------------------------------------------------------------


def _is_up_to_date(dest: Path, manifest: Path) -> bool:
    """True when `dest` holds exactly the files (names and sizes) its manifest lists."""
    if not (dest.is_dir() and manifest.is_file()):
        return False
    try:
        listed = {row["name"]: row["size"] for row in read_manifest(manifest)}
    except (OSError, ValueError):
        return False
    return listed == file_sizes(dest)


def _discard_stale_outputs(dest: Path, manifest: Path, staging: Path) -> None:
    """Remove outputs a failed or foreign run left, keeping any data in staging for the resume."""
    manifest.unlink(missing_ok=True)
    if not dest.exists():
        return
    if not staging.exists():
        os.replace(dest, staging)
        return
    for entry in os.scandir(dest):
        target = staging / entry.name
        if entry.is_file() and not target.exists():
            os.replace(entry.path, target)
    shutil.rmtree(dest)


def _prune_staging(staging: Path, expected: dict[str, int]) -> None:
    """Delete staged files that `cp -n` must not skip: partial copies and files not in the source."""
    for entry in os.scandir(staging):
        if entry.name.endswith(gsutil.TEMP_SUFFIX):
            continue  # gsutil resumes a gs:// object from its temp file
        size = entry.stat().st_size if entry.is_file(follow_symlinks=False) else None
        if size is None or expected.get(entry.name) != size:
            _remove(Path(entry.path))


def _copy(exe: str, src: _Source, expected: dict[str, int], staging: Path, desc: str, progress: bool) -> None:
    """Copy the run into staging; map gsutil's failures to a DownloadError that says what to do."""
    items = [src.item(name) for name in sorted(expected)]
    try:
        rc, err = gsutil.copy_into(exe, items, staging, sum(expected.values()), desc=desc, progress=progress)
    except gsutil.GsutilError as exc:  # stalled
        if src.remote:
            raise _unreachable(src, str(exc)) from None
        raise DownloadError(f"copying {src.location}: {exc}") from None
    if rc != 0:
        raise _classify_failure(src, err, what=f"copying {src.location}/ to {staging}")


def _verify_staging(staging: Path, expected: dict[str, int], src: _Source) -> None:
    """Sizes against the source, then the format check; bad staged files are dropped so a retry refetches."""
    actual = file_sizes(staging, skip_suffix=gsutil.TEMP_SUFFIX)
    missing = sorted(set(expected) - set(actual))
    wrong = sorted(n for n in expected if n in actual and actual[n] != expected[n])
    for name in wrong:
        _remove(staging / name)
    if missing or wrong:
        raise DownloadError(
            f"gsutil reported success but the staged copy of {src.location} differs from the source: "
            f"missing {missing or 'none'}, wrong size {wrong or 'none'}; run again to resume"
        )
    what = f"a complete {'RL Unplugged' if src.layout == 'rl-unplugged' else 'DQN-Replay'} run"
    try:
        if src.layout == "rl-unplugged":
            shards = check_shard_set(staging, sorted(expected))
            if len(shards) != num_shards(src.game):
                raise ReplayFormatError(
                    f"{len(shards)} shards, expected {num_shards(src.game)} (RL Unplugged's for {src.game})"
                )
            problems = shard_problems(shards)
        else:
            problems = file_problems(staging, check_file_set(staging))
    except ReplayFormatError as exc:
        raise DownloadError(f"{src.location} is not {what}: {exc}") from exc
    if problems:
        for path in problems:
            _remove(path)
        raise DownloadError(f"{src.location} is not {what}: {join_problems(problems)}")


def _publish(staging: Path, dest: Path, manifest: Path) -> None:
    """Hash, rename staging to dest, then write the manifest; undo the rename if that write fails."""
    for entry in os.scandir(staging):
        if entry.name.endswith(gsutil.TEMP_SUFFIX):
            _remove(Path(entry.path))  # stale temp of an object that is now fully staged
    rows = manifest_rows(staging)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, dest)
    try:
        write_manifest_rows(rows, manifest)
    except BaseException:
        os.replace(dest, staging)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------
# Failure messages
# ---------------------------------------------------------------------------------------------------


def _classify_failure(src: _Source, stderr: str, what: str) -> DownloadError:
    """Turn gsutil's stderr into the error that tells the user what to do."""
    failure = gsutil.read_failure(stderr)
    if src.remote and failure.denied is not None:
        return _access_denied(src, failure.denied)
    if not src.remote:
        return DownloadError(f"gsutil failed {what}: {failure.last}")
    if failure.not_found:
        return DownloadError(f"{src.location}/ does not exist in {src.bucket} (gsutil: {failure.last})")
    return _unreachable(src, failure.last)


def _access_denied(src: _Source, line: str) -> DownloadError:
    since = ""
    if src.bucket == DQN_REPLAY_BUCKET:
        since = " to everyone since 2025 (anonymous and signed-in callers alike)"
    return DownloadError(
        f"the bucket {src.bucket} answers 403 (access denied){since}, so {src.location}/ cannot be "
        f"downloaded. gsutil said: {line}\n{WAYS_FORWARD}"
    )


def _unreachable(src: _Source, detail: str) -> DownloadError:
    note = ""
    if src.bucket == DQN_REPLAY_BUCKET:
        note = f"Even if reachable, {DQN_REPLAY_BUCKET} answers 403 (access denied) to everyone since 2025. "
    return DownloadError(
        f"the bucket {src.bucket} could not be reached (no network, or Google Cloud Storage is blocked) "
        f"while fetching {src.location}/. Last gsutil error: {detail}\n{note}{WAYS_FORWARD}"
    )


# ------------------------------------------------------------------------------ `jowa data download`


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        type=argument_type(Source, "source"),
        required=True,
        help="data.source of params.yaml: a gs:// URL prefix or a local mirror directory (or file:// URL)",
    )
    add_run_arguments(parser)


def main(args: argparse.Namespace) -> None:
    if args.source == "generate":
        raise DownloadError(
            "--source generate: generated runs are made by `jowa data generate`, not downloaded"
        )
    download_run(args.source, args.game, args.run, args.out, args.manifest, progress=not args.quiet)
