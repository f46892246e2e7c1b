"""`jowa report` against the paper's own numbers, and with partial or no evaluation results."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from jowa import cli
from jowa.report.results import PUBLISHED_RETURNS
from jowa.report.scores import aggregate, distinct_episodes, normalize, reference
from jowa.report.tables import Table

ROOT = Path(__file__).resolve().parents[1]
RAW_SCORES = ROOT / "tests" / "reference" / "jowa_raw_scores"


def markdown_rows(text: str) -> list[list[str]]:
    """The cells of every row of a Markdown table (header first), its rule line left out."""
    lines = [line.strip() for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if "---" not in line]


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
    episodes = {row[0]: row[1:] for row in markdown_rows((tmp_path / "report" / "episodes.md").read_text())}
    assert episodes["Game"][-1] == "paper JOWA 150M with planning"
    assert episodes["Phoenix"][-1] == "1 of 16" and episodes["Assault"][-1] == "14 of 16"
    assert episodes["mean per game"][-3:] == ["3.9", "4.0", "4.3"]  # the published: ~4 distinct of 16
    assert metrics["pretrain_distinct_episodes"]["150M/beam"] == pytest.approx(65 / 15)


def test_partial_results_render_with_gaps(tmp_path: Path) -> None:
    published = json.loads((RAW_SCORES / "JOWA_40M_raw_scores.json").read_text())
    for game in ("Assault", "Phoenix", "Seaquest"):
        path = tmp_path / "eval" / "pretrain" / "tiny" / "greedy" / f"{game}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"returns": published[game]["raw_scores"][:4]}))
    finetune = tmp_path / "eval" / "finetune" / "tiny" / "expert" / "Pong.json"
    finetune.parent.mkdir(parents=True)
    finetune.write_text(json.dumps({"returns": [5.0, 7.0]}))
    standard = tmp_path / "eval" / "robustness" / "standard" / "tiny" / "greedy" / "Assault.json"
    standard.parent.mkdir(parents=True)
    standard.write_text(json.dumps({"returns": [300.0, 500.0], "lengths": [90, 120]}))
    metrics = report(tmp_path, "--eval-dir", tmp_path / "eval")
    assert metrics["pretrain_games"] == {"tiny/greedy": 3, "tiny/greedy/standard": 1}
    assert metrics["pretrain_distinct_episodes"]["tiny/greedy/standard"] == 2
    header, assault = markdown_rows((tmp_path / "report" / "pretrain_scores.md").read_text())[:2]
    assert header[1:3] == ["ours tiny without planning", "ours tiny without planning, standard protocol"]
    assert assault[2] == "400.0"
    assert metrics["finetune_iqm_dqn"]["tiny/expert"] == pytest.approx(normalize(6.0, "Pong", "dqn"))
    rows = (tmp_path / "report" / "pretrain_scores.csv").read_text().splitlines()
    assert rows[1].startswith("Assault,") and rows[2].split(",")[1:4] == ["not run"] * 3  # Atlantis
    finetune_rows = markdown_rows((tmp_path / "report" / "finetune_scores.md").read_text())
    assert ["expert", "Gravitar", "not run"] in finetune_rows


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


def test_tables_go_through_pandas_with_booktabs_and_round_trip_their_cells() -> None:
    table = Table("t", ["Game", "score, raw", "HNS"])
    rows = [["Space_Invaders", "1458.60", "not run"], ["Zaxxon", "0.0", "-3.50%"], ["IQM", "12", "84.69%"]]
    for index, row in enumerate(rows):
        table.add(row, rule=index == 2)
    latex = table.latex().splitlines()
    assert latex[:3] == ["% t", "\\begin{tabular}{lrr}", "\\toprule"] and latex[-2:] == [
        "\\bottomrule",
        "\\end{tabular}",
    ]
    assert latex[3:5] == ["Game & score, raw & HNS \\\\", "\\midrule"]
    assert "\\midrule IQM & 12 & 84.69\\% \\\\" in latex  # the aggregate row's rule
    cells = [table.header, *rows]
    assert markdown_rows(table.markdown()) == cells  # numbers kept as written ("1458.60", "0.0")
    assert list(csv.reader(table.csv().splitlines())) == cells
    assert table.markdown().startswith("**t**\n\n| Game ")


def test_repeated_episodes_do_not_narrow_the_intervals() -> None:
    """16 identical episodes per game are the evidence of one: the intervals resample games (before, with
    episodes resampled, they shrank to a point)."""
    games = reference()["games"]["pretrain"]
    norms = reference()["normalizers"]
    means = {g: norms[g]["random"] + (0.2 + 0.1 * i) * (norms[g]["human"] - norms[g]["random"])
             for i, g in enumerate(games)}  # fmt: skip
    once = aggregate(means, {g: np.array([m]) for g, m in means.items()}, reps=300)
    repeated = aggregate(means, {g: np.full(16, m) for g, m in means.items()}, reps=300)
    assert repeated.iqm_paper_ci == once.iqm_paper_ci
    for result in (once, repeated):
        (low, high), (rlow, rhigh) = result.iqm_paper_ci, result.iqm_ci
        assert low < result.iqm_paper < high and high - low > 0.2
        assert rlow < result.iqm_rliable < rhigh and rhigh - rlow > 0.2
    assert distinct_episodes(np.array([1.0, 1.0, 2.0]), np.array([5, 6, 5])) == 3
    assert distinct_episodes(np.array([1.0, 1.0, 2.0])) == 2


def test_the_shipped_published_returns_are_the_references() -> None:
    for path in RAW_SCORES.glob("*.json"):
        assert (PUBLISHED_RETURNS / path.name).read_bytes() == path.read_bytes()
    assert len(list(PUBLISHED_RETURNS.glob("*.json"))) == 3
