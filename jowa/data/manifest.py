"""The manifest of a run: one TSV line per file with its size and md5, written once the run is complete.

Downstream rules take the manifest as the proof that a run directory is finished (a download or a
generation writes it last, atomically), and it lets a later run notice a changed or missing file cheaply.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import TypedDict

from jowa.atomic import atomic_file

__all__ = [
    "MANIFEST_COLUMNS",
    "ManifestRow",
    "file_sizes",
    "manifest_rows",
    "read_manifest",
    "write_manifest",
    "write_manifest_rows",
]

MANIFEST_COLUMNS = ("name", "size", "md5")

_MD5_RE = re.compile(r"[0-9a-f]{32}")


class ManifestRow(TypedDict):
    """One file of a run: its name inside the run directory, size in bytes and md5 as hex."""

    name: str
    size: int
    md5: str


def read_manifest(path: Path) -> list[ManifestRow]:
    """Rows of a manifest TSV; a malformed file raises ValueError naming the line."""
    path = Path(path)
    lines = path.read_text().splitlines()
    if not lines or tuple(lines[0].split("\t")) != MANIFEST_COLUMNS:
        raise ValueError(f"{path}: not a manifest (expected the header line 'name<TAB>size<TAB>md5')")
    rows: list[ManifestRow] = []
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 3 or not fields[1].isdigit() or not _MD5_RE.fullmatch(fields[2]):
            raise ValueError(f"{path}: line {lineno} is not `name<TAB>size<TAB>md5`: {line!r}")
        rows.append({"name": fields[0], "size": int(fields[1]), "md5": fields[2]})
    return rows


def write_manifest(replay_dir: Path, path: Path) -> list[ManifestRow]:
    """Hash every file of `replay_dir` and write the manifest TSV atomically; returns its rows."""
    rows = manifest_rows(Path(replay_dir))
    write_manifest_rows(rows, Path(path))
    return rows


def manifest_rows(replay_dir: Path) -> list[ManifestRow]:
    """The rows for every file of `replay_dir`, sorted by name (hashing is the slow part)."""
    return [
        {"name": name, "size": size, "md5": _md5(replay_dir / name)}
        for name, size in sorted(file_sizes(replay_dir).items())
    ]


def write_manifest_rows(rows: list[ManifestRow], path: Path) -> None:
    """Write rows computed earlier; separate from hashing so a caller can hash before moving the files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(MANIFEST_COLUMNS)] + [f"{r['name']}\t{r['size']}\t{r['md5']}" for r in rows]
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def file_sizes(directory: Path, skip_suffix: str | None = None) -> dict[str, int]:
    """{name: size} of the plain files of `directory`, leaving out names ending in `skip_suffix`."""
    return {
        entry.name: entry.stat().st_size
        for entry in os.scandir(directory)
        if entry.is_file() and not (skip_suffix and entry.name.endswith(skip_suffix))
    }


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()
