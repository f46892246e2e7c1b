"""DVC over the Snakemake DAG: each stage runs its phase's target, and the onsuccess hook commits only
what DVC would record. `dvc repro` itself runs in tests/test_pipeline.py, on the one smoke pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_dag_consistency import ROOT

from jowa.jobs.dvc_ledger import record_run, stage_targets, stages_brought_up_to_date

STAGES = ["data", "tokenizer", "pretrain", "finetune", "eval", "report"]


def test_each_stage_runs_its_phase_target() -> None:
    assert stage_targets(ROOT / "dvc.yaml") == {
        "data": {"data_all"},
        "tokenizer": {"tokenizer_all"},
        "pretrain": {"pretrain_all"},
        "finetune": {"finetune_all"},
        "eval": {"eval_all"},
        "report": {"report"},
    }


def test_a_run_commits_the_stages_whose_whole_phase_it_made() -> None:
    stages = stage_targets(ROOT / "dvc.yaml")
    assert stages_brought_up_to_date([], "all", stages) == STAGES
    assert stages_brought_up_to_date(["all"], "all", stages) == STAGES
    assert stages_brought_up_to_date(["report", "pretrain_all"], "all", stages) == ["pretrain", "report"]
    assert stages_brought_up_to_date(["results/metrics.json"], "all", stages) == []


def dvc_workspace(tmp_path: Path) -> Path:
    """Where record_run would commit: a DVC repository (that `dvc commit` cannot commit in: no git)."""
    cwd = tmp_path / "ws"
    (cwd / ".dvc").mkdir(parents=True)
    for name in ("dvc.yaml", ".dvc/config", "params.yaml"):
        (cwd / name).write_bytes((ROOT / name).read_bytes())
    return cwd


def test_the_hook_commits_only_what_dvc_would_record_and_never_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cwd = dvc_workspace(tmp_path)
    monkeypatch.delenv("DVC_STAGE", raising=False)
    assert record_run([], "all", cwd / "mine.yaml", root=cwd) == []
    assert f"not updated: this run read {cwd / 'mine.yaml'}, DVC reads params.yaml" in capsys.readouterr().err
    assert record_run([], "all", cwd / "params.yaml", partial=["--until"], root=cwd) == []
    assert "not updated after a run with --until" in capsys.readouterr().err
    assert record_run(["results/metrics.json"], "all", cwd / "params.yaml", root=cwd) == []
    assert "no stage's phase" in capsys.readouterr().err
    assert record_run([], "all", cwd / "params.yaml", root=cwd) == []  # `dvc commit` fails: a warning
    assert "WARNING: `dvc commit` failed, dvc.lock not updated" in capsys.readouterr().err
    monkeypatch.setenv("DVC_STAGE", "report")  # under `dvc repro`: DVC records the stage itself
    assert record_run([], "all", cwd / "params.yaml", root=cwd) == []
    assert capsys.readouterr().err == ""
    assert record_run([], "all", tmp_path / "params.yaml", root=tmp_path) == []  # not a DVC repository
