"""`jowa.core.atomic`: stale temporary siblings are swept, and an existing output is refused unless
overwritten.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jowa.core.atomic import _HOST, atomic_dir, atomic_file, refuse_existing, sweep_stale_siblings
from jowa.core.errors import OutputExistsError


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    code = "import os; print(os.getpid())"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)


def test_only_siblings_of_gone_processes_are_swept(tmp_path: Path) -> None:
    final = tmp_path / "out"
    gone, alive = dead_pid(), os.getppid()
    siblings = {
        f".out.tmp-{_HOST}-{gone}": True,  # this host, process gone
        f".out.tmp-{gone}": True,  # the earlier naming, without host
        f".out.tmp-other-node-{alive}": True,  # another host: one job owns an output, so it is stale
        f".out.tmp-{_HOST}-{alive}": False,  # a live process may still be writing it
        f".out.tmp-{_HOST}-{os.getpid()}": False,  # ours
        f".outer.tmp-{_HOST}-{gone}": False,  # another output's
        ".out.tmp-notapid": False,
    }
    for name in siblings:
        (tmp_path / name).mkdir()
        (tmp_path / name / "part").write_text("x")
    (tmp_path / f".out.tmp-{_HOST}-{gone}-file").write_text("x")  # not a pid after the host: kept
    removed = sweep_stale_siblings(final)
    assert sorted(p.name for p in removed) == sorted(n for n, stale in siblings.items() if stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [n for n, stale in siblings.items() if not stale] + [f".out.tmp-{_HOST}-{gone}-file"]
    )


def test_atomic_file_and_dir_sweep_before_writing(tmp_path: Path) -> None:
    gone = dead_pid()
    (tmp_path / f".f.tmp-{_HOST}-{gone}").write_text("half")
    (tmp_path / f".d.tmp-{_HOST}-{gone}").mkdir()
    with atomic_file(tmp_path / "f") as tmp:
        tmp.write_text("whole")
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "x").write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f"]


def test_an_existing_output_is_refused_unless_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("x")
    refused = f"^{out} already exists; delete it, or pass --overwrite"
    with pytest.raises(OutputExistsError, match=refused), atomic_dir(out):
        pytest.fail("the block must not run")
    (tmp_path / "m.tsv").touch()
    with pytest.raises(OutputExistsError, match="m.tsv already exists"):
        refuse_existing(tmp_path / "none", tmp_path / "m.tsv", overwrite=False)
    refuse_existing(tmp_path / "none", tmp_path / "m.tsv", overwrite=True)
    with atomic_dir(out, overwrite=True) as tmp:
        assert (out / "old").exists()  # the old output stays until the new one is complete
        (tmp / "new").write_text("y")
    assert [p.name for p in out.iterdir()] == ["new"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may delete anything, protected or not")
def test_overwriting_a_protected_output_is_refused_up_front(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "f").write_text("x")
    out.chmod(0o555)  # what Snakemake's protected() does
    try:
        with pytest.raises(OutputExistsError, match=f"{out} is write-protected"):
            refuse_existing(out, overwrite=True)
    finally:
        out.chmod(0o755)
