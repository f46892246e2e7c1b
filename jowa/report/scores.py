"""Scores: normalization and the aggregates over games the paper and rliable report (spec 7.3-7.4).

Normalizers (random, human and final DQN scores per game) and the published numbers ship with the
package (`reference_scores.json`, a copy of `tests/reference/`). Two IQMs, both kept and labeled:

* the **paper's**: the 25 %-trimmed mean (scipy `trim_mean`) of the per-game normalized *mean* returns,
  as `results/results.py` of the reference computes it (the reference gives no interval);
* **rliable's**: the IQM over all runs x games of normalized returns (a run is an evaluation episode).

Both 95 % intervals resample **games** (rliable's stratified bootstrap with `task_bootstrap`; the paper's
IQM with one score per game, its mean): under the JOWA protocol ALE is deterministic, so a game's
episodes repeat (the published 16 per game hold 1-14 distinct returns) and resampling episodes alone
would count the repeats as independent evidence and give intervals far narrower than the data support.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal

import numpy as np
from scipy.stats import trim_mean

Normalizer = Literal["human", "dqn"]


@cache
def reference() -> dict[str, Any]:
    """The shipped normalizers and published scores."""
    return json.loads(resources.files("jowa.report").joinpath("reference_scores.json").read_text())


def normalize(score: float | np.ndarray, game: str, kind: Normalizer = "human") -> float | np.ndarray:
    """(score - random) / (reference - random), the two swapped where the reference is below random."""
    norms = reference()["normalizers"]
    if game not in norms:
        raise KeyError(f"no {kind} normalizer for {game!r}; known games: {', '.join(norms)}")
    low, high = norms[game]["random"], norms[game][kind]
    if high < low:
        low, high = high, low
    return (np.asarray(score, dtype=float) - low) / (high - low)


@dataclass(frozen=True)
class Aggregates:
    """Aggregates over the games that have scores (`games` of them)."""

    games: int
    iqm_paper: float  # 25 %-trimmed mean of per-game normalized means
    iqm_paper_ci: tuple[float, float] | None  # its 95 % interval, resampling games (one score each)
    median: float
    mean: float
    optimality_gap: float  # mean of max(0, 1 - score) over games
    above_reference: int  # games whose normalized mean exceeds 1 (above human, or above DQN)
    iqm_rliable: float | None  # IQM over runs x games; None without per-run scores
    iqm_ci: tuple[float, float] | None  # its 95 % interval, resampling games and their runs


def aggregate(
    per_game_mean: dict[str, float],
    per_run: dict[str, np.ndarray] | None = None,
    *,
    kind: Normalizer = "human",
    reps: int = 2000,
    seed: int = 0,
) -> Aggregates:
    """Aggregates of raw per-game mean returns and, if given, raw per-run returns (game -> (runs,)).

    rliable needs the same number of runs for every game; games with fewer runs are filled by resampling
    their own runs (with a fixed seed), which keeps each game's weight equal as in the paper's protocol.
    """
    games = sorted(per_game_mean)
    if not games:
        raise ValueError("no game has a score")
    means = np.array([normalize(per_game_mean[game], game, kind) for game in games])
    iqm, ci, paper_ci = None, None, None
    if per_run:
        iqm, ci, paper_ci = bootstrap_iqms(per_game_mean, per_run, kind=kind, reps=reps, seed=seed)
    return Aggregates(
        games=len(games), iqm_paper=float(trim_mean(means, 0.25)), iqm_paper_ci=paper_ci,
        median=float(np.median(means)),
        mean=float(means.mean()), optimality_gap=float(np.maximum(0.0, 1.0 - means).mean()),
        above_reference=int((means > 1.0).sum()), iqm_rliable=iqm, iqm_ci=ci,
    )  # fmt: skip


def run_matrix(per_run: dict[str, np.ndarray], kind: Normalizer = "human", seed: int = 0) -> np.ndarray:
    """Normalized returns as rliable's (runs x games) matrix, games in sorted order."""
    games = sorted(per_run)
    runs = max(len(per_run[game]) for game in games)
    rng = np.random.default_rng(seed)
    columns = []
    for game in games:
        returns = np.asarray(per_run[game], dtype=float)
        if len(returns) < runs:
            returns = np.concatenate([returns, rng.choice(returns, runs - len(returns))])
        columns.append(normalize(returns, game, kind))
    return np.stack(columns, axis=1)


def distinct_episodes(returns: np.ndarray, lengths: np.ndarray | None = None) -> int:
    """Episodes that differ in return (and in length, where lengths are known): identical ones are one."""
    keys = zip(returns.tolist(), lengths.tolist(), strict=True) if lengths is not None else returns.tolist()
    return len(set(keys))


def _interval(matrix: np.ndarray, *, reps: int, seed: int) -> tuple[float, tuple[float, float]]:
    """rliable's IQM of a (runs x games) matrix and its 95 % interval, games resampled with their runs."""
    from rliable import library, metrics

    np.random.seed(seed)  # rliable's bootstrap draws from numpy's global RNG
    points, intervals = library.get_interval_estimates(
        {"m": matrix},
        lambda scores: np.array([metrics.aggregate_iqm(scores)]),
        task_bootstrap=True,
        reps=reps,
    )
    low, high = intervals["m"]
    return float(points["m"][0]), (float(low[0]), float(high[0]))


def bootstrap_iqms(
    per_game_mean: dict[str, float],
    per_run: dict[str, np.ndarray],
    *,
    kind: Normalizer = "human",
    reps: int = 2000,
    seed: int = 0,
) -> tuple[float, tuple[float, float], tuple[float, float]]:
    """(rliable IQM, its 95 % interval, the paper IQM's 95 % interval), both resampling games."""
    games = sorted(per_game_mean)
    means = np.array([[normalize(per_game_mean[game], game, kind) for game in games]])
    _, paper_ci = _interval(means, reps=reps, seed=seed)
    iqm, ci = _interval(run_matrix(per_run, kind, seed), reps=reps, seed=seed)
    return iqm, ci, paper_ci
