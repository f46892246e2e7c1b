"""Typed, validated access to params.yaml.

Every stage reads its settings from here or from explicit command-line flags that Snakemake fills in
from the same file. Validation happens before any work: the JSON schema catches wrong keys, types and
ranges; the checks below catch what a schema cannot say (unknown game names, impossible run counts).
Messages always name the file and the key path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from jowa import games

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "params.schema.yaml"
GENERATE = "generate"


class ParamsError(ValueError):
    """params.yaml (or a file in its place) has a wrong key, type or value."""


@dataclass(frozen=True)
class GenerateParams:
    steps_per_run: int
    capacity: int
    sticky_actions: float
    max_episode_steps: int
    seed: int


@dataclass(frozen=True)
class DataParams:
    source: str
    runs: tuple[int, ...]
    generate: GenerateParams

    @property
    def generated(self) -> bool:
        return self.source == GENERATE


@dataclass(frozen=True)
class SubsampleParams:
    runs_per_game: int
    transitions_per_game: int
    seed: int
    segment_length: int
    segment_stride: int


@dataclass(frozen=True)
class FinetuneDataParams:
    transitions: int
    runs_per_game: int
    seed: int
    segment_length: int
    segment_stride: int
    qualities: dict[str, tuple[float, float]]


@dataclass(frozen=True)
class Params:
    pretrain_games: tuple[str, ...]
    finetune_games: tuple[str, ...]
    data: DataParams
    subsample: SubsampleParams
    finetune_data: FinetuneDataParams


def _schema() -> dict[str, Any]:
    if not SCHEMA_PATH.is_file():
        raise FileNotFoundError(
            f"parameter schema not found at {SCHEMA_PATH}; install the package editable (pip -e)"
        )
    with open(SCHEMA_PATH) as fh:
        return yaml.safe_load(fh)


def _key_path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _schema_errors(raw: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{_key_path(e.absolute_path)}: {e.message}" for e in errors]


def _semantic_errors(raw: dict[str, Any]) -> list[str]:
    errors = []
    for split in ("pretrain", "finetune"):
        for i, name in enumerate(raw["games"][split]):
            try:
                games.check_game(name)
            except ValueError as exc:
                errors.append(f"games.{split}[{i}]: {exc}")
    both = set(raw["games"]["pretrain"]) & set(raw["games"]["finetune"])
    if both:
        errors.append(f"games: {sorted(both)} are both pretraining and held-out games")
    n_runs = len(raw["data"]["runs"])
    for section in ("subsample", "finetune_data"):
        if raw[section]["runs_per_game"] > n_runs:
            errors.append(
                f"{section}.runs_per_game: {raw[section]['runs_per_game']} runs asked for, "
                f"but data.runs lists only {n_runs}"
            )
        if raw[section]["segment_stride"] > raw[section]["segment_length"]:
            errors.append(
                f"{section}.segment_stride: larger than segment_length, some steps would never be seen"
            )
    for name, (lo, hi) in raw["finetune_data"]["qualities"].items():
        if not lo < hi:
            errors.append(
                f"finetune_data.qualities.{name}: window [{lo}, {hi}] is empty; expected start < end"
            )
    source = raw["data"]["source"]
    if not (
        source == GENERATE
        or source.startswith("gs://")
        or "://" not in source
        or source.startswith("file://")
    ):
        errors.append(f"data.source: {source!r}: expected a gs:// URL, a local directory or 'generate'")
    return errors


def check_params(raw: dict[str, Any], origin: str = "params.yaml") -> Params:
    """Validate a parsed params mapping; return its typed view or raise ParamsError naming every problem."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{origin}: expected a mapping of sections, got {type(raw).__name__}")
    errors = _schema_errors(raw)
    if not errors:
        errors = _semantic_errors(raw)
    if errors:
        raise ParamsError(f"{origin} is invalid:\n  " + "\n  ".join(errors))
    d, s, f = raw["data"], raw["subsample"], raw["finetune_data"]
    return Params(
        pretrain_games=tuple(raw["games"]["pretrain"]),
        finetune_games=tuple(raw["games"]["finetune"]),
        data=DataParams(source=d["source"], runs=tuple(d["runs"]), generate=GenerateParams(**d["generate"])),
        subsample=SubsampleParams(**s),
        finetune_data=FinetuneDataParams(
            **{k: v for k, v in f.items() if k != "qualities"},
            qualities={k: (float(v[0]), float(v[1])) for k, v in f["qualities"].items()},
        ),
    )


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate a params file."""
    path = Path(path)
    try:
        with open(path) as fh:
            raw = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such parameter file") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from exc
    return check_params(raw, origin=str(path))
