"""The report's figures, sized for the paper: single-column 3.4 in or full-width 7 in, fonts of 7-8 pt.

Each figure is written as PNG (200 dpi) and PDF under one base name, both atomically, so an interrupted
report never leaves a file that looks finished. Callers pass plain data; empty data gives a figure that
says "not run" rather than an exception, so the report always has every figure it links to. Built on
`Figure` objects, not pyplot, so nothing accumulates in pyplot's global figure registry.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.transforms import offset_copy  # noqa: E402
from rliable import library as rly  # noqa: E402

from jowa.core.atomic import atomic_file  # noqa: E402
from jowa.report.tables import NOT_RUN  # noqa: E402

# Embedding TrueType subsets logs every pruned table at INFO, which drowns a CLI's own INFO output.
logging.getLogger("fontTools").setLevel(logging.WARNING)

DPI = 200
SINGLE = (3.4, 2.8)  # single-column figure, inches
FULL_WIDTH = 7.0
BAR = 0.1  # thickness of one per-game bar, inches (a 7 pt label fits beside it)
# Okabe-Ito: distinguishable with colour-vision deficiencies and in greyscale print.
COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
STYLE: dict[str, Any] = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "pdf.fonttype": 42,  # embed TrueType so journals' checkers accept the PDF and text stays editable
    "ps.fonttype": 42,
}
PERCENT = ticker.PercentFormatter(xmax=1.0, decimals=0)


def save(fig: Figure, out: Path) -> list[Path]:
    """Write `fig` as `out`.png and `out`.pdf; both appear only once both are complete."""
    out = Path(out)
    paths = [out.with_name(f"{out.name}.png"), out.with_name(f"{out.name}.pdf")]
    with matplotlib.rc_context(STYLE), ExitStack() as stack:
        tmps = [stack.enter_context(atomic_file(p)) for p in paths]
        fig.savefig(tmps[0], format="png", dpi=DPI)
        # No creation date: the same data gives the same PDF bytes.
        fig.savefig(tmps[1], format="pdf", dpi=DPI, metadata={"CreationDate": None})
    return paths


def _styled(draw: Callable[..., list[Path]]) -> Callable[..., list[Path]]:
    """Apply STYLE while a figure is built, not only saved: fonts and frames are fixed at creation."""

    @functools.wraps(draw)
    def styled(*args: Any, **kwargs: Any) -> list[Path]:
        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)

    return styled


def _figure(size: tuple[float, float]) -> Figure:
    return Figure(figsize=size, dpi=DPI, layout="constrained")


def _placeholder(size: tuple[float, float], what: str, out: Path) -> list[Path]:
    """A figure that says plainly that nothing was run, so a report's link never dangles."""
    fig = _figure(size)
    fig.text(0.5, 0.5, NOT_RUN, ha="center", va="bottom", fontsize=14, color="0.35")
    below = offset_copy(fig.transFigure, fig=fig, y=-3, units="points")
    fig.text(0.5, 0.5, f"{what}: no results to plot", ha="center", va="top", color="0.35", transform=below)
    return save(fig, out)


def _color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def _count(value: float, _pos: object = None) -> str:
    """A parameter or step count as a short label: 40M, 1.5B, 20k."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:g}"


def _ncols(labels: list[str], width: float) -> int:
    """As many legend columns as fit `width` inches at 7 pt (about 0.06 in a character, 0.5 in a handle)."""
    return max(1, min(len(labels), int(width // (0.06 * max(map(len, labels), default=1) + 0.5))))


def _finite(value: object) -> bool:
    """A real number that can be drawn (numpy scalars included; None, NaN, inf and bools are not)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _error(point: dict) -> list[float]:
    """Distances from the IQM down and up to its CI ends; zero without a (finite) CI."""
    ci = point.get("ci")
    if ci is None or len(ci) != 2 or not all(map(_finite, ci)):
        return [0.0, 0.0]
    return [max(0.0, point["iqm"] - ci[0]), max(0.0, ci[1] - point["iqm"])]


def _series_style(series: str, index: int) -> dict[str, Any]:
    """Planning or not sets the colour; published (paper), ours or released: hollow/dashed, filled/solid
    or filled/dotted."""
    low = series.lower()
    color = _color(1 if "without" in low else 0 if "with" in low else index)
    published = low.startswith(("paper", "published"))
    marker = "s" if "without" in low else "o" if "with" in low else "oDs^v<>"[index % 7]
    return {
        "color": color,
        "marker": marker,
        "linestyle": "--" if published else ":" if low.startswith("released") else "-",
        "markerfacecolor": "white" if published else color,
    }


@_styled
def scaling_figure(points: list[dict], out: Path) -> list[Path]:
    """IQM human-normalized score against parameter count, with 95% CI bars."""
    points = [p for p in points if _finite(p.get("params")) and p["params"] > 0 and _finite(p.get("iqm"))]
    if not points:
        return _placeholder(SINGLE, "Scaling", out)
    series = list(dict.fromkeys(p["series"] for p in points))
    fig = _figure(SINGLE)
    ax = fig.add_subplot()
    for i, name in enumerate(series):
        pts = sorted((p for p in points if p["series"] == name), key=lambda p: p["params"])
        shift = 10 ** (0.012 * (i - (len(series) - 1) / 2))  # dodge so CI bars of equal sizes don't overlap
        x = np.array([p["params"] for p in pts]) * shift
        y = np.array([p["iqm"] for p in pts])
        err = np.array([_error(p) for p in pts])
        style = _series_style(name, i)
        ax.errorbar(x, y, yerr=err.T if err.any() else None, label=name, capsize=2, elinewidth=0.8, **style)
    low, high = min(p["params"] for p in points) / 1.35, max(p["params"] for p in points) * 1.35
    ax.set_xscale("log")
    ax.set_xlim(low, high)
    # Round-number ticks, fewer per decade as the range widens, so their labels never collide.
    subs = (1.0, 2.0, 3.0, 5.0) if high / low <= 10 else (1.0, 2.0, 5.0) if high / low <= 100 else (1.0,)
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=subs))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(_count))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    _label_models(ax, points)
    ax.yaxis.set_major_formatter(PERCENT)
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("IQM (human-normalized)")
    ax.grid(axis="y", color="0.9", linewidth=0.6)
    handles, labels = _scaling_legend(series) or ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=_ncols(labels, SINGLE[0]), handlelength=2.4)
    return save(fig, out)


def _scaling_legend(series: list[str]) -> tuple[list[Line2D], list[str]] | None:
    """For "<source>, <setting>" series, one entry per setting (colour) and per source (line style):
    four short entries fit a single column where four long ones would not."""
    parts = [name.split(", ", 1) for name in series]
    if any(len(p) != 2 or "with" not in p[1].lower() for p in parts):
        return None
    settings, sources = dict.fromkeys(p[1] for p in parts), dict.fromkeys(p[0] for p in parts)
    colors = {_series_style(f"ours, {s}", 0)["color"] for s in settings}
    dashes = {_series_style(f"{s}, ", 0)["linestyle"] for s in sources}
    if len(colors) < len(settings) or len(dashes) < len(sources):
        return None  # entries would look alike: fall back to one entry per series
    handles = [Line2D([], [], **_series_style(f"ours, {s}", 0)) for s in settings]
    handles += [
        Line2D([], [], **{**_series_style(f"{s}, ", 0), "color": "0.3", "marker": ""}) for s in sources
    ]
    return handles, [*settings, *sources]


def _label_models(ax: Axes, points: list[dict]) -> None:
    """Model names along the top axis, once per name, skipping any too close to the previous one."""
    where: dict[str, float] = {}
    for p in points:
        where.setdefault(str(p.get("label", "")), p["params"])
    ticks: list[tuple[float, str]] = []
    for label, x in sorted(where.items(), key=lambda kv: kv[1]):
        if label and (not ticks or x / ticks[-1][0] > 1.3):
            ticks.append((x, label))
    top = ax.secondary_xaxis("top")
    top.set_xticks([x for x, _ in ticks], [label for _, label in ticks])
    top.xaxis.set_minor_locator(ticker.NullLocator())
    top.tick_params(length=2, pad=1)


def _profile(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """rliable's score distribution, ignoring NaN (a run matrix padded for games with fewer episodes)."""
    finite = scores[np.isfinite(scores)]
    return (finite[:, None] > taus[None, :]).mean(axis=0) if finite.size else np.full(len(taus), np.nan)


@_styled
def performance_profiles(score_matrices: dict[str, np.ndarray], out: Path, *, reps: int = 2000) -> list[Path]:
    """Fraction of runs above each human-normalized threshold (rliable), with bootstrap bands."""
    matrices = {k: np.atleast_2d(np.asarray(v, dtype=float)) for k, v in score_matrices.items()}
    matrices = {k: v for k, v in matrices.items() if np.isfinite(v).any()}
    if not matrices:
        return _placeholder(SINGLE, "Performance profiles", out)
    everything = np.concatenate([v[np.isfinite(v)] for v in matrices.values()])
    # Atlantis-like outliers (HNS ~175) would flatten a range set by the maximum; the 90th percentile,
    # within [2, 8] as in rliable's Atari plots, keeps the informative part.
    top = math.ceil(float(np.clip(np.percentile(everything, 90), 2.0, 8.0)) * 2) / 2
    taus = np.linspace(0.0, top, 201)  # below random play (0) every profile is ~1: nothing to read there
    profiles, cis = rly.create_performance_profile(matrices, taus, custom_profile_func=_profile, reps=reps)
    fig = _figure(SINGLE)
    ax = fig.add_subplot()
    for i, name in enumerate(matrices):
        dash = ("-", "--", "-.", ":")[i // len(COLORS) % 4]  # beyond 8 methods colours repeat
        ax.plot(taus, profiles[name], color=_color(i), label=name, linestyle=dash)
        ax.fill_between(taus, cis[name][0], cis[name][1], color=_color(i), alpha=0.2, linewidth=0)
    ax.axvline(1.0, color="0.5", linestyle=":", linewidth=0.8)
    ax.text(1.0, 1.0, " human", color="0.4", ha="left", va="top", transform=ax.get_xaxis_transform())
    ax.set_xlim(taus[0], taus[-1])
    ax.set_ylim(0.0, 1.02)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(6, steps=[1, 2, 2.5, 5, 10]))
    ax.xaxis.set_major_formatter(PERCENT)
    ax.set_xlabel(r"human-normalized score $\tau$")
    ax.set_ylabel(r"fraction of runs with score $> \tau$")
    ax.grid(color="0.9", linewidth=0.6)
    fig.legend(loc="outside lower center", ncols=_ncols(list(matrices), SINGLE[0]))
    return save(fig, out)


def per_game_size(n_games: int, n_methods: int) -> tuple[float, float]:
    """Full width; the games split over two panels beyond 8, each game a slot of `n_methods` bars."""
    rows = n_games if n_games <= 8 else math.ceil(n_games / 2)
    slot = max(1, n_methods) * BAR + 0.1
    return FULL_WIDTH, round((0.85 + rows * slot) * 20) / 20  # whole multiples of 0.05 in = 10 px


def _clip_at(values: np.ndarray) -> float:
    """Where bars are cut: past the largest value that is not an outlier (over 5x the upper quartile and
    150%), so one game like Atlantis (HNS ~175) does not squash the others."""
    limit = max(1.5, 5 * float(np.percentile(values, 75)))
    inliers = values[values <= limit]
    return 1.05 * max(1.0, float(inliers.max()) if inliers.size else limit)  # 100% (human) always shown


@_styled
def per_game_figure(scores: dict[str, dict[str, float]], out: Path) -> list[Path]:
    """Per-game human-normalized scores of several methods side by side (grouped horizontal bars)."""
    methods = [m for m, games in scores.items() if any(_finite(v) for v in games.values())]
    games = sorted({g for m in methods for g, v in scores[m].items() if _finite(v)})
    if not games:
        return _placeholder(per_game_size(0, 0), "Per-game scores", out)
    values = np.array([v for m in methods for v in scores[m].values() if _finite(v)], dtype=float)
    clip, left = _clip_at(values), min(0.0, float(values.min()) * 1.1)
    half = len(games) if len(games) <= 8 else math.ceil(len(games) / 2)
    panels = [games[:half], games[half:]] if games[half:] else [games]
    fig = _figure(per_game_size(len(games), len(methods)))
    axes = fig.subplots(1, len(panels), sharex=True, squeeze=False)[0]
    slot = len(methods) * BAR + 0.1
    for ax, names in zip(axes, panels, strict=True):
        for gi, game in enumerate(names):
            for mi, method in enumerate(methods):
                y = gi * slot + (mi + 0.5) * BAR  # in inches from the top; the axis is inverted
                value = scores[method].get(game)
                if not _finite(value):
                    ax.text(0.0, y, f" {NOT_RUN}", fontsize=7, color="0.45", style="italic", va="center")
                    continue
                ax.barh(y, min(value, clip), height=BAR * 0.9, color=_color(mi))
                if value > clip:
                    ax.text(clip * 0.985, y, f"{value:,.0%} \u2192", fontsize=7, color="white", ha="right",
                            va="center", fontweight="bold")  # fmt: skip
        ax.set_yticks([gi * slot + len(methods) * BAR / 2 for gi in range(len(names))], names)
        ax.set_ylim(len(panels[0]) * slot - 0.05, -0.05)  # the same slot height in both panels
        ax.tick_params(axis="y", length=0)
        ax.axvline(0.0, color="0.3", linewidth=0.6)
        ax.axvline(1.0, color="0.5", linestyle=":", linewidth=0.8)
        ax.xaxis.set_major_formatter(PERCENT)
        ax.grid(axis="x", color="0.9", linewidth=0.6)
        ax.set_axisbelow(True)
        ax.set_xlabel("human-normalized score")
    axes[0].set_xlim(left, clip)
    handles = [Line2D([], [], color=_color(i), linewidth=5) for i in range(len(methods))]
    handles.append(Line2D([], [], color="0.5", linestyle=":", linewidth=0.8))
    labels = [*methods, "human"]
    fig.legend(handles, labels, loc="outside upper center", ncols=_ncols(labels, FULL_WIDTH))
    return save(fig, out)


def curves_size(n_keys: int) -> tuple[float, float]:
    """Up to three panels a row, full width; a single panel is single-column."""
    cols = min(3, max(1, n_keys))
    rows = math.ceil(max(1, n_keys) / cols)
    return (SINGLE[0] if cols == 1 else FULL_WIDTH), 0.7 + 1.9 * rows


def _points(records: Iterable[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(step, value) pairs of the records that have a finite `key`; the others are skipped."""
    pairs = [(r["step"], r[key]) for r in records if _finite(r.get("step")) and _finite(r.get(key))]
    pairs.sort()
    return np.array([s for s, _ in pairs], dtype=float), np.array([v for _, v in pairs], dtype=float)


@_styled
def training_curves(
    curves: dict[str, list[dict]],
    out: Path,
    *,
    keys: tuple[str, ...] = ("loss_obs", "loss_td_error", "loss_cql_penalty"),
) -> list[Path]:
    """Loss curves from metrics.jsonl records (one panel per key, one line per run)."""
    size = curves_size(len(keys))
    if not curves or not keys or not any(_points(r, k)[0].size for r in curves.values() for k in keys):
        return _placeholder(size, "Training curves", out)
    fig = _figure(size)
    cols = min(3, len(keys))
    # Shared steps: critic losses, which start after stage 1, line up with the world-model loss.
    axes = fig.subplots(math.ceil(len(keys) / cols), cols, sharex=True, squeeze=False).ravel()
    for ax, key in zip(axes, keys, strict=False):
        ys = []
        for i, (run, records) in enumerate(curves.items()):
            steps, values = _points(records, key)
            if steps.size:
                ax.plot(steps, values, color=_color(i), linewidth=0.9, label=run)
                ys.append(values)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.tick_params(labelbottom=True)  # sharex hides them on upper rows; every panel reads alone
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(_count))
        ax.xaxis.set_major_locator(ticker.MaxNLocator(4))
        ax.grid(color="0.9", linewidth=0.6)
        if not ys:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="0.45")
            ax.tick_params(left=False, labelleft=False)
            ax.grid(False)
        elif (low := min(v.min() for v in ys)) > 0 and max(v.max() for v in ys) / low > 30:
            ax.set_yscale("log")  # losses spanning decades: the late part of training stays visible
    for ax in axes[len(keys) :]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=_color(i), linewidth=0.9) for i in range(len(curves))]
    fig.legend(handles, list(curves), loc="outside lower center", ncols=_ncols(list(curves), size[0]))
    return save(fig, out)
