"""The report's figures from the published numbers: written as PNG and PDF at paper size, "not run"
placeholders for empty inputs, missing games never drawn as zero, and no half-written files."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from jowa.report import figures

REFERENCE = Path(__file__).resolve().parent / "reference"
SIZES = ("40M", "70M", "150M")


@pytest.fixture(scope="module")
def ref() -> dict:
    return json.loads((REFERENCE / "reference_scores.json").read_text())


def hns(ref: dict, game: str, score: float | np.ndarray) -> float | np.ndarray:
    norm = ref["normalizers"][game]
    return (score - norm["random"]) / (norm["human"] - norm["random"])


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figures the functions save, for inspecting what was drawn."""
    seen: list[Figure] = []
    original = figures.save

    def keep(fig: Figure, out: Path) -> list[Path]:
        seen.append(fig)
        return original(fig, out)

    monkeypatch.setattr(figures, "save", keep)
    return seen


def check_written(paths: list[Path], out: Path, size: tuple[float, float]) -> None:
    assert paths == [out.with_name(out.name + ".png"), out.with_name(out.name + ".pdf")]
    png, pdf = paths
    assert png.stat().st_size > 1000 and pdf.read_bytes().startswith(b"%PDF")
    width, height = size
    assert matplotlib.image.imread(png).shape[:2] == (round(height * figures.DPI), round(width * figures.DPI))
    assert not list(out.parent.glob(".*.tmp-*"))  # no temporary sibling left behind


def published_points(ref: dict) -> list[dict]:
    iqm, counts = ref["reported_aggregates_iqm_hns"], ref["parameter_counts"]
    return [
        {
            "label": size,
            "params": counts[f"JOWA_{size}"]["named"],
            "iqm": iqm[f"JOWA_{size}_{w}_planning"],
            "ci": None,
            "series": f"published, {w} planning",
        }
        for size in SIZES
        for w in ("with", "without")
    ]


def test_scaling_published_and_ours(ref: dict, tmp_path: Path, drawn: list[Figure]) -> None:
    points = published_points(ref)
    assert [p["iqm"] for p in points[::2]] == [0.6642, 0.8019, 0.8469]
    ours = {"series": "ours, with planning"}
    points.append({"label": "40M", "params": 3.8e7, "iqm": 0.61, "ci": (0.5, 0.7), **ours})
    points.append({"label": "70M", "params": 7.2e7, "iqm": 0.75, "ci": [0.6, 0.85], **ours})  # JSON: a list
    out = tmp_path / "scaling"
    check_written(figures.scaling_figure(points, out), out, figures.SINGLE)
    ax = drawn[0].axes[0]
    assert ax.get_xscale() == "log"
    assert {t.get_text() for t in ax.get_xticklabels()} >= {"50M", "100M"}
    assert len(ax.lines) >= 3  # one connecting line per series


def test_performance_profiles_from_published_returns(ref: dict, tmp_path: Path, drawn: list[Figure]) -> None:
    matrices = {}
    for size in SIZES:
        raw = json.loads((REFERENCE / "jowa_raw_scores" / f"JOWA_{size}_raw_scores.json").read_text())
        columns = [hns(ref, g, np.array(raw[g]["raw_scores"])) for g in sorted(raw)]
        matrices[f"JOWA-{size}"] = np.stack(columns, axis=1)  # runs (episodes) x games
    assert matrices["JOWA-150M"].shape == (16, 15)
    matrices["padded"] = np.where(np.arange(16)[:, None] < 8, matrices["JOWA-40M"], np.nan)  # ragged runs
    out = tmp_path / "profiles"
    check_written(figures.performance_profiles(matrices, out, reps=100), out, figures.SINGLE)
    ax = drawn[0].axes[0]
    profile = ax.lines[0].get_ydata()
    assert profile[0] <= 1.0 and np.all(np.diff(profile) <= 0)  # a profile never rises
    assert len(ax.collections) == len(matrices)  # one bootstrap band per method


def test_per_game_missing_games_are_gaps_not_zeros(ref: dict, tmp_path: Path, drawn: list[Figure]) -> None:
    reported = ref["reported_mean_scores"]
    scores = {
        label: {g: float(hns(ref, g, v)) for g, v in reported[key].items()}
        for label, key in [("JOWA-150M", "JOWA_150M_with_planning"), ("JOWA-40M", "JOWA_40M_with_planning")]
    }
    scores["MGDT-200M"] = {g: float(hns(ref, g, v)) for g, v in reported["MGDT_200M"].items()}
    del scores["JOWA-40M"]["Atlantis"], scores["JOWA-40M"]["Phoenix"]
    assert scores["JOWA-150M"]["Atlantis"] > 100  # the outlier the clipped axis is for
    out = tmp_path / "per_game"
    check_written(figures.per_game_figure(scores, out), out, figures.per_game_size(15, 3))
    fig = drawn[0]
    bars = [p for ax in fig.axes for p in ax.patches if isinstance(p, Rectangle)]
    assert len(bars) == 3 * 15 - 2  # a missing game draws no bar at all
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert sum(figures.NOT_RUN in t for t in texts) == 2
    right = fig.axes[0].get_xlim()[1]
    assert right < 20 and max(b.get_width() for b in bars) <= right  # Atlantis is clipped...
    assert any("17,483%" in t for t in texts)  # ...and its true value written on the bar


def metrics_records(offset: float) -> list[dict]:
    records = []
    for step in range(0, 5000, 100):
        record = {"step": step, "loss_obs": 3.0 / (1 + step / 500) + offset, "lr": 1e-4}
        if step >= 2000:  # critic losses only after stage 1
            record |= {"loss_td_error": 0.1 - step * 1e-5, "loss_cql_penalty": 0.5 - step * 5e-5}
        records.append(record)
    records[10]["loss_obs"] = float("nan")
    return records


def test_training_curves_skip_absent_points(tmp_path: Path, drawn: list[Figure]) -> None:
    curves = {"40M": metrics_records(0.0), "150M": metrics_records(0.2)}
    out = tmp_path / "training_curves"
    check_written(figures.training_curves(curves, out), out, figures.curves_size(3))
    obs, td, _ = drawn[0].axes[:3]
    assert len(obs.lines[0].get_xdata()) == 49 and len(td.lines[0].get_xdata()) == 30
    single = tmp_path / "obs_only"
    check_written(figures.training_curves(curves, single, keys=("loss_obs",)), single, figures.curves_size(1))


@pytest.mark.parametrize(
    ("draw", "empty", "size"),
    [
        (figures.scaling_figure, [], figures.SINGLE),
        (figures.performance_profiles, {}, figures.SINGLE),
        (figures.performance_profiles, {"nothing": np.empty((0, 15))}, figures.SINGLE),
        (figures.per_game_figure, {}, figures.per_game_size(0, 0)),
        (figures.per_game_figure, {"ours": {}}, figures.per_game_size(0, 0)),
        (figures.training_curves, {}, figures.curves_size(3)),
        (figures.training_curves, {"run": [{"step": 0, "lr": 1.0}]}, figures.curves_size(3)),
    ],
)
def test_empty_inputs_give_placeholders(draw, empty, size, tmp_path: Path, drawn: list[Figure]) -> None:
    out = tmp_path / "figure"
    check_written(draw(empty, out), out, size)
    assert any(t.get_text() == figures.NOT_RUN for t in drawn[0].texts)


def test_failed_write_leaves_nothing(ref: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "scaling"
    original = Figure.savefig

    def png_then_fail(self: Figure, fname: object, *args: object, **kwargs: object) -> None:
        if kwargs.get("format") == "pdf":
            raise OSError("disk full")
        original(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", png_then_fail)
    with pytest.raises(OSError, match="disk full"):
        figures.scaling_figure(published_points(ref), out)
    assert list(tmp_path.iterdir()) == []  # the PNG was complete, but not without its PDF
    blocked = tmp_path / "a_file"
    blocked.write_text("not a directory")
    monkeypatch.undo()
    with pytest.raises(OSError):
        figures.scaling_figure(published_points(ref), blocked / "scaling")
    assert list(tmp_path.iterdir()) == [blocked]


def test_same_data_same_bytes(ref: dict, tmp_path: Path) -> None:
    first = figures.scaling_figure(published_points(ref), tmp_path / "a")
    second = figures.scaling_figure(published_points(ref), tmp_path / "b")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
