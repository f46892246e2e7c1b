"""The evaluation results a report is made of: our `jowa evaluate` JSONs, or the published returns.

Our results are found by layout (`workflow/rules/eval.smk`): `pretrain/{size}/{planner}/{game}.json`,
`finetune/{size}/{quality}/{game}.json` and, for the robustness check under another protocol (params
`robustness`), `robustness/{protocol}/{size}/{planner}/{game}.json` under the evaluation directory.
Whatever exists is used; nothing is required. The published per-episode returns of JOWA with planning
(`JOWA_{size}_raw_scores.json`, shipped in `published_returns/`, a copy of `tests/reference/
jowa_raw_scores/`) give the published distinct-episode counts, and can stand in for ours, so that the
report can be checked against the paper's own numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from jowa.core.errors import JowaError
from jowa.report.scores import distinct_episodes

PROTOCOL = "jowa"  # the paper's, which pretrain/ and finetune/ hold
PUBLISHED_RETURNS = Path(str(resources.files("jowa.report").joinpath("published_returns")))


class ResultsError(JowaError, ValueError):
    """An evaluation JSON that cannot be read."""


@dataclass(frozen=True)
class Result:
    phase: str  # "pretrain" or "finetune"
    size: str
    setting: str  # the planner ("greedy", "beam") of a pretrained model, the data quality of a fine-tuned one
    game: str
    returns: np.ndarray
    lengths: np.ndarray | None = None  # agent steps per episode; the published returns have none
    protocol: str = PROTOCOL

    @property
    def mean(self) -> float:
        return float(self.returns.mean())

    @property
    def distinct(self) -> int:
        return distinct_episodes(self.returns, self.lengths)


def _read(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """An evaluation's returns and, if it has them, its episode lengths (as many)."""
    try:
        result = json.loads(path.read_text())
        returns = np.asarray(result["returns"], dtype=float)
        lengths = np.asarray(result["lengths"], dtype=int) if "lengths" in result else None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ResultsError(f"{path}: not an evaluation result ({error})") from None
    if returns.ndim != 1 or not len(returns):
        raise ResultsError(f"{path}: 'returns' must be a non-empty list of numbers")
    if lengths is not None and lengths.shape != returns.shape:
        raise ResultsError(f"{path}: 'lengths' must hold one length per return ({len(returns)})")
    return returns, lengths


def find_results(eval_dir: Path) -> list[Path]:
    """Every evaluation JSON under `eval_dir` in the workflow's layout (none is fine)."""
    layouts = ("pretrain/*/*/*.json", "finetune/*/*/*.json", "robustness/*/*/*/*.json")
    return [path for layout in layouts for path in sorted(eval_dir.glob(layout))]


def load_results(paths: list[Path]) -> list[Result]:
    """Evaluation JSONs named as the workflow names them: .../{phase}/{size}/{setting}/{game}.json, or
    .../robustness/{protocol}/{size}/{planner}/{game}.json (a pretrained size under another protocol)."""
    results = []
    for path in paths:
        phase, size, setting = path.parts[-4:-1]
        protocol = PROTOCOL
        if path.parts[-5:-4] == ("robustness",):
            phase, protocol = "pretrain", path.parts[-4]
        elif phase not in ("pretrain", "finetune"):
            raise ResultsError(
                f"{path}: expected .../pretrain|finetune/{{size}}/{{setting}}/{{game}}.json or "
                ".../robustness/{protocol}/{size}/{planner}/{game}.json"
            )
        results.append(Result(phase, size, setting, path.stem, *_read(path), protocol=protocol))
    return results


def published_results(raw_scores_dir: Path = PUBLISHED_RETURNS) -> list[Result]:
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
