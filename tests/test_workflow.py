"""The Snakemake DAG: the paper plan, bad params, and a real end-to-end run of the local pipeline."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "params.yaml", "workflow", "config", "profiles")


def workdir(tmp_path: Path) -> Path:
    """A copy of the workflow (the package linked in) so runs never touch the checkout's results."""
    for name in WORKFLOW_FILES:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    (tmp_path / "jowa").symlink_to(ROOT / "jowa")
    return tmp_path


def snakemake(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(["snakemake", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


def test_dry_run_plans_the_paper_data_phase(tmp_path: Path) -> None:
    proc = snakemake(workdir(tmp_path), "-n", "--forceall", "--quiet", "rules")
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts == {"download": 20 * 5, "subsample": 15, "finetune_set": 5 * 3, "all": 1}


def test_bad_params_fail_before_any_job(tmp_path: Path) -> None:
    cwd = workdir(tmp_path)
    params = yaml.safe_load((cwd / "config" / "smoke.yaml").read_text())
    params["games"]["pretrain"][1] = "SpaceInvader"
    (cwd / "bad.yaml").write_text(yaml.safe_dump(params))
    proc = snakemake(cwd, "-n", "--configfile", "bad.yaml", check=False)
    assert proc.returncode != 0
    assert re.search(
        r"games\.pretrain\[1\]: unknown game 'SpaceInvader'.*SpaceInvaders", proc.stdout + proc.stderr
    )
    assert not (cwd / "resources").exists() and not (cwd / "results").exists()


@pytest.mark.slow
def test_local_pipeline_runs_end_to_end_and_reruns_only_what_changed(tmp_path: Path) -> None:
    cwd = workdir(tmp_path)
    snakemake(cwd, "--cores", "2", "--configfile", "config/smoke.yaml")
    smoke = yaml.safe_load((cwd / "config" / "smoke.yaml").read_text())
    for game in smoke["games"]["pretrain"]:
        meta = json.loads((cwd / "results/data/pretrain" / game / "meta.json").read_text())
        assert meta["transitions"] >= smoke["subsample"]["transitions_per_game"]
        assert meta["segment_length"] == 8 and meta["runs"] == [1, 2]
    for quality in smoke["finetune_data"]["qualities"]:
        meta = json.loads((cwd / "results/data/finetune" / quality / "Boxing" / "meta.json").read_text())
        assert meta["quality"] == quality and meta["segment_stride"] == 1
    assert not list((cwd / "results").rglob(".*tmp*"))  # no staging left behind

    # a second plan has nothing to do; a changed subsample seed reruns exactly the subsample jobs
    nothing = snakemake(cwd, "-n", "--configfile", "config/smoke.yaml")
    assert "Nothing to be done" in nothing.stdout + nothing.stderr
    smoke["subsample"]["seed"] = 1
    (cwd / "config" / "smoke.yaml").write_text(yaml.safe_dump(smoke))
    changed = snakemake(cwd, "-n", "--configfile", "config/smoke.yaml")
    assert job_counts(changed.stdout + changed.stderr) == {"subsample": 2, "all": 1}
