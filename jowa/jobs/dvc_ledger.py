"""Keep DVC's ledger (dvc.lock) current after a direct Snakemake run (the Snakefile's `onsuccess` hook).

Each `dvc.yaml` stage runs Snakemake on one phase target, and DVC records what went in and came out.
A `snakemake` run by hand brings the outputs up to date but leaves dvc.lock describing the old ones, so
`dvc status` would call those stages changed and `dvc repro` would run Snakemake again for nothing.
After a successful run, `record_run` commits (`dvc commit --force`) the stages whose phase the run
brought up to date: every stage after a run of the default target, and otherwise the stages whose phase
targets were all named. It commits nothing after a partial run (--until, ...) or a --touch run (which
marks files, missing ones too, as done: after `dvc checkout`, dvc.lock already describes them), after a
run that did not read params.yaml (DVC's params file), under `dvc repro` (DVC commits itself; it sets
DVC_STAGE), or outside a DVC repository. A failure only warns: the run's outputs are good either way,
and `dvc commit` by hand does the same.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml

from jowa.core.errors import JowaError

DVC_PARAMS_FILE = "params.yaml"


class LedgerError(JowaError, ValueError):
    """dvc.yaml holds a stage this hook cannot read."""


def stage_targets(dvc_yaml: Path) -> dict[str, frozenset[str]]:
    """Each stage's Snakemake targets, read from its cmd with Snakemake's own argument parser."""
    from snakemake.cli import get_argument_parser

    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {})
    targets = {}
    for name, stage in stages.items():
        words = shlex.split(stage.get("cmd", "")) if isinstance(stage.get("cmd"), str) else []
        if not words or words[0] != "snakemake":
            raise LedgerError(f"{dvc_yaml}: stage {name}: cmd must be one `snakemake ... TARGETS` call")
        targets[name] = frozenset(get_argument_parser().parse_args(words[1:]).targets)
    return targets


def stages_brought_up_to_date(
    run_targets: Iterable[str], default_target: str, stages: Mapping[str, frozenset[str]]
) -> list[str]:
    """The stages a successful run with these targets left up to date, in dvc.yaml's order."""
    run = set(run_targets)
    if not run or default_target in run:
        return list(stages)
    return [name for name, targets in stages.items() if targets and targets <= run]


def _say(message: str) -> None:
    print(f"dvc.lock: {message}", file=sys.stderr)


def record_run(
    targets: Iterable[str],
    default_target: str,
    params_file: str | Path,
    partial: Iterable[str] = (),  # the flags of a partial or --touch run
    root: Path = Path("."),
) -> list[str]:
    """Commit the stages a successful direct run brought up to date; returns them (none if skipped)."""
    if "DVC_STAGE" in os.environ or not (root / ".dvc").is_dir() or not (root / "dvc.yaml").is_file():
        return []
    if Path(params_file).resolve() != (root / DVC_PARAMS_FILE).resolve():
        _say(f"not updated: this run read {params_file}, DVC reads {DVC_PARAMS_FILE}")
        return []
    if partial := sorted(partial):
        _say(f"not updated after a run with {' '.join(partial)}")
        return []
    try:
        stages = stages_brought_up_to_date(targets, default_target, stage_targets(root / "dvc.yaml"))
    except (JowaError, OSError, yaml.YAMLError, SystemExit) as error:
        _say(f"WARNING: not updated, dvc.yaml unreadable: {error}")
        return []
    if not stages:
        _say(f"not updated: {' '.join(sorted(targets))} is no stage's phase (by hand: `dvc commit STAGE`)")
        return []
    dvc = shutil.which("dvc")
    if dvc is None:
        _say("WARNING: not updated, `dvc` is not on PATH")
        return []
    done = subprocess.run(
        [dvc, "commit", "--force", "--quiet", *stages], cwd=root, capture_output=True, text=True
    )
    if done.returncode != 0:
        _say(f"WARNING: `dvc commit` failed, dvc.lock not updated:\n{(done.stdout + done.stderr)[-2000:]}")
        return []
    _say(f"committed {' '.join(stages)}")
    return stages
