"""`jowa report`: the paper's tables and figures from whatever evaluation results exist, beside its numbers.

Writes into `--out`: `pretrain_scores` (per-game raw scores of every size with and without planning,
under the standard protocol too where params `robustness` asked for it, the published JOWA and baseline
numbers, aggregate rows), `episodes` (each game's count of distinct episodes, ours and the published),
`finetune_scores` (held-out games per data quality, DQN-normalized), `planning_ablation` (IQM HNS with
and without planning per size), each as .md, .tex and .csv; the figures `scaling`, `profiles`,
`per_game` and `training_curves` as .png and .pdf; and `plots/scaling.csv` for `dvc plots`.
`--metrics` gets the headline aggregates for `dvc metrics show`. A result that does not exist is a
"not run" cell or a gap, never a zero; with no result at all the report says where it looked and still
renders its (empty) tables and figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from jowa.core.atomic import atomic_file
from jowa.jobs.released import RELEASED
from jowa.report import figures
from jowa.report.results import PROTOCOL, Result, find_results, load_results, published_results
from jowa.report.scores import Aggregates, aggregate, normalize, reference, run_matrix
from jowa.report.tables import NOT_RUN, Table

log = logging.getLogger(__name__)
PLANNERS = {"greedy": "without planning", "beam": "with planning"}
BASELINES = ("MTBC_120M", "Scaled_QL_80M", "MGDT_200M", "EDT_200M")
WHY_GAMES = (
    "Intervals resample games (one score per game for the paper's IQM), not episodes: under the JOWA "
    "protocol ALE is deterministic, so a game's episodes repeat (see the distinct-episode counts) and "
    "are not independent evidence."
)
Column = tuple[str, str, str]  # (size, planner, protocol)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--evaluations", type=Path, nargs="*",
        help="evaluation JSONs (.../{pretrain,finetune}/{size}/{planner or quality}/{game}.json); "
        "default: every one under --eval-dir",
    )  # fmt: skip
    parser.add_argument("--eval-dir", type=Path, default=Path("results/eval"), help="where to look for them")
    parser.add_argument(
        "--published-returns", type=Path,
        help="use the published per-episode returns in this directory (JOWA_*_raw_scores.json) as our "
        "results, to check the report against the paper",
    )  # fmt: skip
    parser.add_argument(
        "--models", type=Path, nargs="*",
        help="pretrained checkpoints (.../{size}/model.safetensors, with run/metrics.jsonl beside them) for "
        "parameter counts and training curves; default: results/train/pretrain/*/model.safetensors",
    )  # fmt: skip
    parser.add_argument(
        "--released-models", type=Path, nargs="*", default=[],
        help=f"imported released checkpoints (.../{{name}}/model.safetensors), for the parameter counts of "
        f"the results of size {RELEASED}{{name}}, reported as released",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="the report directory")
    parser.add_argument("--metrics", type=Path, required=True, help="the headline aggregates (JSON)")
    parser.add_argument("--reps", type=int, default=2000, help="bootstrap resamples of the intervals")


def percent(value: float | np.floating | None) -> str:
    return NOT_RUN if value is None else f"{100 * float(value):.2f}%"


def interval(ci: tuple[float, float] | None) -> str:
    return NOT_RUN if ci is None else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def parameter_count(size: str, models: dict[str, Path]) -> float | None:
    """A size's parameters as the paper names sizes (JOWA module + tokenizer, frozen parts included)."""
    checkpoint = models.get(size)
    if checkpoint is not None:
        import torch

        from jowa.models.world_action import JOWA, JOWAConfig, count_parameters
        from jowa.weights.checkpoints import read_model_metadata

        with torch.device("meta"):
            model = JOWA(JOWAConfig(**read_model_metadata(checkpoint)["config"]))
        return float(count_parameters(model)["reference_name"])
    named = reference()["parameter_counts"].get(f"JOWA_{size}")
    return named["named"] if named else None


class Report:
    def __init__(
        self, results: list[Result], models: dict[str, Path], reps: int, source: str = "ours"
    ) -> None:
        self.results = results
        self.source = source  # how our columns and series are labeled
        self.reps = reps
        names = {r.size for r in results} | {"40M", "70M", "150M"}
        self.params = {size: parameter_count(size, models) for size in names}
        self.sizes = sorted({r.size for r in results}, key=self._order)
        self.trained = [size for size in self.sizes if not size.startswith(RELEASED)]
        self.games = reference()["games"]
        self.normalized = set(reference()["normalizers"])
        unknown = sorted({r.game for r in results} - self.normalized)
        if unknown:
            log.warning("no normalizer scores for %s: raw scores only, left out of every aggregate",
                        ", ".join(unknown))  # fmt: skip
        self.aggregates: dict[Column, Aggregates] = {}
        robust = {(r.size, r.setting, r.protocol) for r in results if r.protocol != PROTOCOL}
        self.columns: list[Column] = [
            (size, planner, protocol) for size in self.sizes for planner in PLANNERS
            for protocol in (PROTOCOL, *sorted({c for s, p, c in robust if (s, p) == (size, planner)}))
        ]  # fmt: skip

    def ours(
        self, phase: str, size: str, setting: str, protocol: str = PROTOCOL, *, raw: bool = False
    ) -> dict[str, Result]:
        """This size's results of one planner or quality, by game; unless `raw`, only normalizable games."""
        return {
            r.game: r for r in self.results
            if (r.phase, r.size, r.setting, r.protocol) == (phase, size, setting, protocol)
            and (raw or r.game in self.normalized)
        }  # fmt: skip

    def column_label(self, size: str, planner: str, protocol: str) -> str:
        words = f"{self.label(size)} {PLANNERS[planner]}"
        return words if protocol == PROTOCOL else f"{words}, {protocol} protocol"

    def pretrain_games(self) -> list[str]:
        ours = {r.game for r in self.results if r.phase == "pretrain"}
        return self.games["pretrain"] + sorted(ours - set(self.games["pretrain"]))

    def pretrain_table(self) -> Table:
        published = [f"JOWA_{s}_{w}_planning" for s in ("40M", "70M", "150M") for w in ("without", "with")]
        reported = reference()["reported_mean_scores"]
        header = ["Game"] + [self.column_label(*column) for column in self.columns]
        header += [f"paper {name.replace('_', ' ')}" for name in published + list(BASELINES)]
        table = Table("Pretraining games: mean raw score over evaluation episodes", header, note=WHY_GAMES)
        for game in self.pretrain_games():
            row = [game]
            for size, planner, protocol in self.columns:
                result = self.ours("pretrain", size, planner, protocol, raw=True).get(game)
                row.append(NOT_RUN if result is None else f"{result.mean:.1f}")
            for name in published + list(BASELINES):
                row.append(f"{reported[name][game]:.1f}" if game in reported[name] else NOT_RUN)
            table.add(row)
        ours = [self._aggregate(*column) for column in self.columns]
        papers = [aggregate(reported[name]) for name in published + list(BASELINES)]
        rows = {
            "IQM HNS (paper: trimmed mean of game means)": lambda a: percent(a.iqm_paper),
            "its 95% CI (games resampled)": lambda a: interval(a.iqm_paper_ci),
            "IQM HNS (rliable: runs x games)": lambda a: percent(a.iqm_rliable),
            "its 95% CI (games resampled, with their runs)": lambda a: interval(a.iqm_ci),
            "median HNS": lambda a: percent(a.median),
            "mean HNS": lambda a: percent(a.mean),
            "optimality gap": lambda a: f"{a.optimality_gap:.3f}",
            "games above human": lambda a: str(a.above_reference),
            "games evaluated": lambda a: str(a.games),
        }
        for index, (name, cell) in enumerate(rows.items()):
            cells = [NOT_RUN if a is None else cell(a) for a in ours] + [cell(a) for a in papers]
            table.add([name, *cells], rule=index == 0)
        return table

    def _aggregate(self, size: str, planner: str, protocol: str = PROTOCOL) -> Aggregates | None:
        found = self.ours("pretrain", size, planner, protocol)
        if not found:
            return None
        if (size, planner, protocol) not in self.aggregates:
            means, runs = {g: r.mean for g, r in found.items()}, {g: r.returns for g, r in found.items()}
            self.aggregates[size, planner, protocol] = aggregate(means, runs, reps=self.reps)
        return self.aggregates[size, planner, protocol]

    def episodes_table(self, published: list[Result]) -> Table:
        """Each game's distinct episodes of those played: identical return and length count once (the
        published give returns only, so theirs are distinct returns, a lower bound)."""
        sources = [
            (self.column_label(*column), self.ours("pretrain", *column, raw=True)) for column in self.columns
        ]
        for size in sorted({r.size for r in published}, key=self._order):
            by_game = {r.game: r for r in published if r.size == size}
            sources.append((f"paper JOWA {size} with planning", by_game))
        header = ["Game"] + [label for label, _ in sources]
        counted = "Episodes with the same return and length count once; the paper lists returns only, so its "
        counted += "counts are of distinct returns. "
        table = Table(
            "Pretraining games: distinct episodes of those played", header, note=counted + WHY_GAMES
        )
        for game in self.pretrain_games():
            found = [by_game.get(game) for _, by_game in sources]
            table.add([game, *(NOT_RUN if r is None else f"{r.distinct} of {len(r.returns)}" for r in found)])
        means = [
            np.mean([r.distinct for r in by_game.values()]) if by_game else None for _, by_game in sources
        ]
        table.add(["mean per game", *(NOT_RUN if m is None else f"{m:.1f}" for m in means)], rule=True)
        return table

    def finetune_table(self) -> Table:
        qualities = sorted({r.setting for r in self.results if r.phase == "finetune"})
        title = "Held-out games after fine-tuning: DQN-normalized mean score"
        table = Table(title, ["Quality", "Game", *self.trained])
        ours = {r.game for r in self.results if r.phase == "finetune"}
        games = self.games["finetune"] + sorted(ours - set(self.games["finetune"]))
        for quality in qualities or ["expert"]:
            for game in games:
                cells = []
                for size in self.trained:
                    result = self.ours("finetune", size, quality, raw=True).get(game)
                    if result is not None and game not in self.normalized:
                        cells.append(f"raw {result.mean:.1f}")
                    else:
                        cells.append(percent(None if result is None else normalize(result.mean, game, "dqn")))
                table.add([quality, game, *cells])
            cells = []
            for size in self.trained:
                found = self.ours("finetune", size, quality)
                cells.append(percent(aggregate({g: r.mean for g, r in found.items()}, kind="dqn").iqm_paper)
                             if found else NOT_RUN)  # fmt: skip
            table.add([quality, "IQM", *cells], rule=True)
        return table

    def ablation_table(self) -> Table:
        iqms = reference()["reported_aggregates_iqm_hns"]
        columns = [f"{self.source} {words}" for words in PLANNERS.values()]
        header = ["Size", *columns, "paper without planning", "paper with planning"]
        table = Table("Planning ablation: IQM HNS (paper's statistic)", header)
        for size in sorted(set(self.sizes) | {"40M", "70M", "150M"}, key=self._order):
            ours = [self._aggregate(size, planner) for planner in PLANNERS]
            paper = [iqms.get(f"JOWA_{size}_{w}_planning") for w in ("without", "with")]
            row = [percent(a.iqm_paper) if a else NOT_RUN for a in ours] + list(map(percent, paper))
            table.add([self.label(size) if size.startswith(RELEASED) else size, *row])
        return table

    @staticmethod
    def metric_key(size: str, planner: str, protocol: str) -> str:
        return f"{size}/{planner}" if protocol == PROTOCOL else f"{size}/{planner}/{protocol}"

    def _order(self, size: str) -> tuple[float, str]:
        return (self.params.get(size) or 0.0, size)

    def series(self, size: str) -> str:
        """Whose model a size is: ours (or the returns'), or a released checkpoint's."""
        return "released" if size.startswith(RELEASED) else self.source

    def label(self, size: str) -> str:
        return f"{self.series(size)} {size.removeprefix(RELEASED)}"

    def scaling_points(self) -> list[dict[str, Any]]:
        points = []
        iqms, counts = reference()["reported_aggregates_iqm_hns"], reference()["parameter_counts"]
        for size in ("40M", "70M", "150M"):
            for words in PLANNERS.values():
                value = iqms[f"JOWA_{size}_{words.split()[0]}_planning"]
                points.append({"label": size, "params": counts[f"JOWA_{size}"]["named"], "iqm": value,
                               "ci": None, "series": f"paper, {words}"})  # fmt: skip
        for size in self.sizes:
            params = self.params[size]
            for planner, words in PLANNERS.items():
                found = self._aggregate(size, planner)
                if found is not None and params is not None:
                    points.append(
                        {
                            "label": size,
                            "params": params,
                            "iqm": found.iqm_paper,
                            "ci": found.iqm_paper_ci,
                            "series": f"{self.series(size)}, {words}",
                        }
                    )
        return points

    def metrics(self) -> dict[str, Any]:
        pretrain = {self.metric_key(*column): self._aggregate(*column) for column in self.columns}
        finetune = {}
        for size, quality in sorted({(r.size, r.setting) for r in self.results if r.phase == "finetune"}):
            found = {g: x.mean for g, x in self.ours("finetune", size, quality).items()}
            if found:
                finetune[f"{size}/{quality}"] = aggregate(found, kind="dqn").iqm_paper
        return {
            "pretrain_iqm_hns": {k: a.iqm_paper for k, a in pretrain.items() if a},
            "pretrain_iqm_hns_rliable": {k: a.iqm_rliable for k, a in pretrain.items() if a},
            "pretrain_iqm_hns_ci": {k: a.iqm_paper_ci for k, a in pretrain.items() if a and a.iqm_paper_ci},
            "pretrain_games": {k: a.games for k, a in pretrain.items() if a},
            "pretrain_distinct_episodes": {
                self.metric_key(*column): float(np.mean([r.distinct for r in found.values()]))
                for column in self.columns
                if (found := self.ours("pretrain", *column))
            },  # fmt: skip
            "finetune_iqm_dqn": finetune,
        }


def training_curves(models: dict[str, Path]) -> dict[str, list[dict]]:
    """Each size's metrics.jsonl records, from the run directory beside its checkpoint."""
    curves = {}
    for size, checkpoint in models.items():
        path = checkpoint.parent / "run" / "metrics.jsonl"
        if path.exists():
            curves[size] = [json.loads(line) for line in path.read_text().splitlines() if line]
    return curves


def main(args: argparse.Namespace) -> None:
    logging.getLogger("absl").setLevel(logging.WARNING)  # rliable's per-estimate progress lines
    if args.published_returns:
        results = published_results(args.published_returns)
    else:
        results = load_results(find_results(args.eval_dir) if args.evaluations is None else args.evaluations)
    paths = (
        args.models if args.models is not None else Path("results/train/pretrain").glob("*/model.safetensors")
    )
    models = {path.parent.name: path for path in paths}
    released = {RELEASED + path.parent.name: path for path in args.released_models}
    if not results:
        log.warning(
            "no evaluation results under %s (looked for pretrain/{size}/{planner}/{game}.json and "
            "finetune/{size}/{quality}/{game}.json): the report shows only the published numbers",
            args.eval_dir,
        )
    report = Report(
        results, models | released, args.reps, "from returns" if args.published_returns else "ours"
    )
    report.pretrain_table().write(args.out / "pretrain_scores")
    report.episodes_table(published_results()).write(args.out / "episodes")
    report.finetune_table().write(args.out / "finetune_scores")
    report.ablation_table().write(args.out / "planning_ablation")
    points = report.scaling_points()
    figures.scaling_figure(points, args.out / "scaling")
    profiles = {}
    for size in report.sizes:
        for planner, words in PLANNERS.items():
            found = report.ours("pretrain", size, planner)
            if found:
                profiles[f"{report.label(size)} {words}"] = run_matrix(
                    {g: r.returns for g, r in found.items()}
                )
    figures.performance_profiles(profiles, args.out / "profiles", reps=args.reps)
    per_game = {}
    for size in report.sizes:
        found = report.ours("pretrain", size, "beam")
        if found:
            per_game[report.label(size)] = {g: float(normalize(r.mean, g)) for g, r in found.items()}
    paper = reference()["reported_mean_scores"]["JOWA_150M_with_planning"]
    per_game["paper 150M"] = {g: float(normalize(v, g)) for g, v in paper.items()}
    figures.per_game_figure(per_game, args.out / "per_game")
    figures.training_curves(training_curves(models), args.out / "training_curves")  # ours: released have none
    plot = args.out / "plots" / "scaling.csv"
    with atomic_file(plot) as tmp, tmp.open("w", newline="") as out:
        rows = csv.writer(out, lineterminator="\n")  # quotes series names holding commas
        rows.writerow(["series", "size", "params", "iqm_hns", "ci_low", "ci_high"])
        for p in points:
            low, high = p["ci"] if p["ci"] else ("", "")
            rows.writerow([p["series"], p["label"], f"{p['params']:.0f}", f"{p['iqm']:.6f}", low, high])
    with atomic_file(args.metrics) as tmp:
        tmp.write_text(json.dumps(report.metrics(), indent=1, sort_keys=True))
