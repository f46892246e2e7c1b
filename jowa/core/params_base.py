"""The building blocks of params sections: the strict base model, shared value types, the error type.

Kept apart from `jowa.core.config` so that every section module (data in `jowa.core.config`, training in
`jowa.train.params`) builds on the same types without importing each other.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from jowa.core import games
from jowa.core.errors import JowaError

GENERATE = "generate"


class ParamsError(JowaError, ValueError):
    """params.yaml (or a file or argument in its place) has a wrong key, type or value."""


def unique(items: tuple) -> tuple:
    duplicates = sorted({str(item) for item in items if items.count(item) > 1})
    if duplicates:
        raise ValueError(f"listed more than once: {', '.join(duplicates)}")
    return items


def _window(window: tuple[float, float]) -> tuple[float, float]:
    if not window[0] < window[1]:
        raise ValueError(f"window {list(window)} is empty; expected start < end")
    return window


def _source(source: str) -> str:
    if source == GENERATE or source.startswith(("gs://", "file://")) or "://" not in source:
        return source
    raise ValueError(f"{source!r}: expected a gs:// URL, a local directory or 'generate'")


UNIQUE = {"uniqueItems": True}
Game = Annotated[str, AfterValidator(games.check_game)]
RunId = Annotated[int, Field(ge=1, le=5)]
Seed = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Window = Annotated[tuple[Fraction, Fraction], AfterValidator(_window)]
Source = Annotated[str, Field(min_length=1), AfterValidator(_source)]
QualityName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]


class Section(BaseModel):
    """A params.yaml section: unknown keys are errors, values are checked strictly and never change."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True)
