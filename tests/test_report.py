"""`jowa report` against the paper's own numbers, and with partial or no evaluation results."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

from jowa import cli
from jowa.report.scores import aggregate, normalize, reference
from jowa.report.tables import Table

ROOT = Path(__file__).resolve().parents[1]
RAW_SCORES = ROOT / "tests" / "reference" / "jowa_raw_scores"


def report(tmp_path: Path, *args: str | Path) -> dict:
    out = tmp_path / "report"
    command = ["-q", "report", "--out", str(out), "--metrics", str(tmp_path / "metrics.json"),
               "--models", "--reps", "300", *map(str, args)]  # fmt: skip
    assert cli.main(command) == 0
    return json.loads((tmp_path / "metrics.json").read_text())


def test_the_published_returns_give_the_papers_iqm_hns_with_intervals(tmp_path: Path) -> None:
    metrics = report(tmp_path, "--published-returns", RAW_SCORES)
    iqm = metrics["pretrain_iqm_hns"]
    assert iqm["150M/beam"] == pytest.approx(0.8469, abs=5e-5)
    assert iqm["70M/beam"] == pytest.approx(0.8019, abs=5e-5)
    assert iqm["40M/beam"] == pytest.approx(0.6642, abs=5e-5)
    for key, (low, high) in metrics["pretrain_iqm_hns_ci"].items():
        assert low < iqm[key] < high, key
    assert metrics["pretrain_games"] == {"40M/beam": 15, "70M/beam": 15, "150M/beam": 15}
    table = (tmp_path / "report" / "pretrain_scores.md").read_text()
    assert "84.69%" in table and "80.19%" in table and "66.42%" in table
    assert "not run" in table  # no greedy results were given
    for name in ("scaling", "profiles", "per_game", "training_curves"):
        assert (tmp_path / "report" / f"{name}.png").stat().st_size > 0
        assert (tmp_path / "report" / f"{name}.pdf").stat().st_size > 0
    scaling = (tmp_path / "report" / "plots" / "scaling.csv").read_text().splitlines()
    assert scaling[0] == "series,size,params,iqm_hns,ci_low,ci_high" and len(scaling) == 1 + 6 + 3
    for row in csv.DictReader(scaling):  # what `dvc plots` reads: every row parses, series names whole
        assert (
            float(row["params"]) > 1e6
            and 0 < float(row["iqm_hns"]) < 2
            and row["series"].endswith("planning")
        )
    assert (tmp_path / "report" / "pretrain_scores.tex").read_text().count("\\toprule") == 1


def test_partial_results_render_with_gaps(tmp_path: Path) -> None:
    published = json.loads((RAW_SCORES / "JOWA_40M_raw_scores.json").read_text())
    for game in ("Assault", "Phoenix", "Seaquest"):
        path = tmp_path / "eval" / "pretrain" / "tiny" / "greedy" / f"{game}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"returns": published[game]["raw_scores"][:4]}))
    finetune = tmp_path / "eval" / "finetune" / "tiny" / "expert" / "Pong.json"
    finetune.parent.mkdir(parents=True)
    finetune.write_text(json.dumps({"returns": [5.0, 7.0]}))
    metrics = report(tmp_path, "--eval-dir", tmp_path / "eval")
    assert metrics["pretrain_games"] == {"tiny/greedy": 3}
    assert metrics["finetune_iqm_dqn"]["tiny/expert"] == pytest.approx(normalize(6.0, "Pong", "dqn"))
    rows = (tmp_path / "report" / "pretrain_scores.csv").read_text().splitlines()
    assert rows[1].startswith("Assault,") and rows[2].split(",")[1:3] == ["not run", "not run"]  # Atlantis
    finetune_rows = (tmp_path / "report" / "finetune_scores.md").read_text()
    assert "| expert | Gravitar | not run |" in finetune_rows


def test_no_results_say_where_they_were_looked_for(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "eval").mkdir()
    with caplog.at_level(logging.WARNING):
        metrics = report(tmp_path, "--eval-dir", tmp_path / "eval")
    assert f"no evaluation results under {tmp_path / 'eval'}" in caplog.text
    assert "pretrain/{size}/{planner}/{game}.json" in caplog.text
    assert metrics["pretrain_iqm_hns"] == {} and (tmp_path / "report" / "scaling.png").exists()


def test_a_broken_result_names_its_file(tmp_path: Path) -> None:
    path = tmp_path / "eval" / "pretrain" / "tiny" / "beam" / "Pong.json"
    path.parent.mkdir(parents=True)
    path.write_text("{}")
    assert cli.main(["-q", "report", "--eval-dir", str(tmp_path / "eval"), "--out", str(tmp_path / "r"),
                     "--metrics", str(tmp_path / "m.json")]) == 1  # fmt: skip
    assert not (tmp_path / "m.json").exists()


def test_normalization_and_aggregates_by_hand() -> None:
    assert normalize(14.6, "Pong") == pytest.approx(1.0) and normalize(-20.7, "Pong") == pytest.approx(0.0)
    humans = {game: reference()["normalizers"][game]["human"] for game in ("Pong", "Seaquest", "Assault")}
    result = aggregate(humans)
    assert result.iqm_paper == pytest.approx(1.0) and result.optimality_gap == pytest.approx(0.0)
    assert result.above_reference == 0 and result.iqm_rliable is None
    with pytest.raises(KeyError, match="Pongg"):
        normalize(1.0, "Pongg")
    assert (ROOT / "jowa/report/reference_scores.json").read_bytes() == (
        ROOT / "tests/reference/reference_scores.json"
    ).read_bytes()


def test_tables_escape_latex_and_keep_gaps() -> None:
    table = Table("t", ["Game", "score"])
    table.add(["Space_Invaders", "not run"])
    table.add(["IQM", "84.69%"], rule=True)
    latex = table.latex()
    assert "Space\\_Invaders & not run" in latex and "84.69\\%" in latex and latex.count("\\midrule") == 2
    assert table.csv().splitlines()[1] == "Space_Invaders,not run"
    with pytest.raises(ValueError, match="2 columns"):
        table.add(["one"])
