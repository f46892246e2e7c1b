"""The evaluation results a report is made of: our `jowa evaluate` JSONs, or the published returns.

Our results are found by layout (`workflow/rules/eval.smk`): `pretrain/{size}/{planner}/{game}.json`
and `finetune/{size}/{quality}/{game}.json` under the evaluation directory. Whatever exists is used;
nothing is required. The published per-episode returns of JOWA with planning
(`tests/reference/jowa_raw_scores/JOWA_{size}_raw_scores.json`) can stand in for ours, so that the
report can be checked against the paper's own numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jowa.errors import JowaError


class ResultsError(JowaError, ValueError):
    """An evaluation JSON that cannot be read."""


@dataclass(frozen=True)
class Result:
    phase: str  # "pretrain" or "finetune"
    size: str
    setting: str  # the planner ("greedy", "beam") of a pretrained model, the data quality of a fine-tuned one
    game: str
    returns: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.returns.mean())


def _read(path: Path) -> np.ndarray:
    try:
        returns = np.asarray(json.loads(path.read_text())["returns"], dtype=float)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ResultsError(f"{path}: not an evaluation result ({error})") from None
    if returns.ndim != 1 or not len(returns):
        raise ResultsError(f"{path}: 'returns' must be a non-empty list of numbers")
    return returns


def find_results(eval_dir: Path) -> list[Path]:
    """Every evaluation JSON under `eval_dir` in the workflow's layout (none is fine)."""
    return sorted(eval_dir.glob("pretrain/*/*/*.json")) + sorted(eval_dir.glob("finetune/*/*/*.json"))


def load_results(paths: list[Path]) -> list[Result]:
    """Evaluation JSONs named as the workflow names them: .../{phase}/{size}/{setting}/{game}.json."""
    results = []
    for path in paths:
        phase, size, setting = path.parts[-4:-1]
        if phase not in ("pretrain", "finetune"):
            raise ResultsError(f"{path}: expected .../pretrain|finetune/{{size}}/{{setting}}/{{game}}.json")
        results.append(Result(phase, size, setting, path.stem, _read(path)))
    return results


def published_results(raw_scores_dir: Path) -> list[Result]:
    """The published per-episode returns of JOWA-{40M,70M,150M} with planning, as beam results."""
    results = []
    for path in sorted(raw_scores_dir.glob("JOWA_*_raw_scores.json")):
        size = path.name.removeprefix("JOWA_").removesuffix("_raw_scores.json")
        for game, entry in sorted(json.loads(path.read_text()).items()):
            results.append(
                Result("pretrain", size, "beam", game, np.asarray(entry["raw_scores"], dtype=float))
            )
    if not results:
        raise ResultsError(f"{raw_scores_dir}: no JOWA_*_raw_scores.json")
    return results
