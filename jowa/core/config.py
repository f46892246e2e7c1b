"""The parameters: one typed definition of every key of params.yaml, its type, range and meaning.

The pydantic models below are the schema. `load_params` validates a whole params file before any work;
`section_json` turns one section into the single argument a Snakemake rule passes to its command, and
`parse_section` turns that argument back into the same typed section, with the same key names, inside
the command. The JSON schema for editors (`jowa/params.schema.json`, package data) is generated from
these models (`jowa check-params --schema`) and a test keeps the file in sync. Validation is strict
(`"5"` is not 5) and goes through JSON, so YAML lists become tuples and every section is immutable.
Every message names the file or argument and the key path.
"""

from __future__ import annotations

import argparse
import difflib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from jowa.core.params_base import (
    UNIQUE,
    Fraction,
    Game,
    ParamsError,
    QualityName,
    RunId,
    Section,
    Seed,
    Source,
    Window,
    unique,
)
from jowa.data.sources import missing_games
from jowa.jobs.released import RELEASED, ReleasedParams
from jowa.planning.params import EvalParams, PlanningParams
from jowa.train.params import FinetuneParams, ModelArch, ModelName, PretrainParams, TokenizerParams


class GamesParams(Section):
    pretrain: Annotated[
        tuple[Game, ...], Field(min_length=1, json_schema_extra=UNIQUE), AfterValidator(unique)
    ]
    """games whose data pretrains JOWA (DQN-Replay CamelCase names; task ids follow the 60-game table)"""
    finetune: Annotated[tuple[Game, ...], Field(json_schema_extra=UNIQUE), AfterValidator(unique)]
    """held-out games, used only for fine-tuning and out-of-distribution evaluation"""


class GenerateParams(Section):
    steps_per_run: Annotated[int, Field(ge=1)]
    """agent steps to play per run; a minimum: the episode in progress is played to its end"""
    capacity: Annotated[int, Field(ge=8)]
    """replay rows per checkpoint file (Dopamine's buffer held 1000000)"""
    sticky_actions: Fraction
    """probability that ALE repeats the previous action, per emulator frame (DQN-Replay: 0.25)"""
    max_episode_steps: Annotated[int, Field(ge=1)]
    """agent steps after which an episode is cut (each agent step is 4 emulator frames)"""
    seed: Seed
    """base seed; each (game, run) derives its own from it"""


class DataParams(Section):
    source: Source
    """where runs come from: gs://atari-replay-datasets/dqn (DQN-Replay) or a local mirror holding
    {Game}/{run}/replay_logs/; gs://rl_unplugged/atari_episodes_ordered (RL Unplugged) or a local mirror
    holding {Game}/run_{run}-NNNNN-of-MMMMM; or "generate" to play the games with ale-py"""
    runs: Annotated[tuple[RunId, ...], Field(min_length=1, json_schema_extra=UNIQUE), AfterValidator(unique)]
    """run ids the subsampling and fine-tuning draws pick from; only the picked runs are fetched"""
    game_sources: dict[Game, Source] = Field(default_factory=dict)
    """another source for some games, as {Game: source}: e.g. Berzerk, which RL Unplugged lacks, from a
    DQN-Replay mirror or `generate` while the other games come from data.source"""
    generate: GenerateParams
    """how runs are played when a game's source is "generate" (ignored otherwise)"""

    def source_of(self, game: str) -> str:
        return self.game_sources.get(game, self.source)


class SubsampleParams(Section):
    runs_per_game: RunId
    """runs drawn per pretraining game (the reference's legacy-RNG draw: seed 0 gives Assault {1, 3}, ...)"""
    transitions_per_game: Annotated[int, Field(ge=1)]
    """steps stored per game; a minimum: whole episodes are drawn until it is reached"""
    seed: Seed
    """seed of the run draw and of the episode draw"""


class FinetuneDataParams(Section):
    transitions_per_game: Annotated[int, Field(ge=1)]
    """steps stored per held-out game and quality; a minimum: whole episodes are drawn until it is reached"""
    runs_per_game: RunId
    """runs drawn per held-out game"""
    seed: Seed
    """seed of the run draw and of the episode draw"""
    qualities: Annotated[dict[QualityName, Window], Field(min_length=1)]
    """data quality -> [start, end) window over a run's checkpoint files, as fractions of the run
    (expert = the last 20% of the checkpoints, highly_suboptimal = the first 20%)"""


class RobustnessParams(Section):
    """A robustness check beside the paper's protocol, whose deterministic ALE repeats a game's episodes:
    the standard protocol (sticky actions 0.25) makes them independent. A section of its own, not a key
    of `eval`, so that switching it on adds evaluations and reruns none of the paper's."""

    protocol: Literal["standard"] | None
    """evaluate every pretrained size again under this protocol, as extra report columns; null: off"""
    planners: Annotated[
        tuple[Literal["greedy", "beam"], ...], Field(json_schema_extra=UNIQUE), AfterValidator(unique)
    ]
    """the planners evaluated under it"""


class Params(Section):
    """A complete params file (params.yaml, config/smoke.yaml)."""

    model_config = ConfigDict(title="JOWA reproduction parameters")
    games: GamesParams
    data: DataParams
    subsample: SubsampleParams
    finetune_data: FinetuneDataParams
    tokenizer: TokenizerParams
    models: Annotated[dict[ModelName, ModelArch], Field(min_length=1)]
    """model name -> architecture; each is pretrained (paper: the 40M, 70M and 150M presets, spec 3.3)"""
    pretrain: PretrainParams
    finetune: FinetuneParams
    eval: EvalParams
    planning: PlanningParams
    released: ReleasedParams
    robustness: RobustnessParams


S = TypeVar("S", bound=Section)


def _key_path(parts: tuple[Any, ...] | list[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section an unknown key was found in."""
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        section = field.annotation if field is not None else None
        if not (isinstance(section, type) and issubclass(section, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    if error["type"] == "extra_forbidden":
        known = _known_keys(model, error["loc"][:-1])
        close = difflib.get_close_matches(str(error["loc"][-1]), known, 1)
        hint = f"did you mean {close[0]!r}?" if close else f"expected one of {', '.join(known)}"
        return f"unknown key; {hint}"
    if error["type"] == "missing":
        return "missing (required)"
    message = error["msg"].removeprefix("Value error, ")
    return message if error["type"] == "value_error" else f"{message} (got {error['input']!r})"


def _errors(exc: ValidationError, model: type[BaseModel], prefix: tuple[str, ...]) -> list[str]:
    lines = []
    for error in sorted(exc.errors(), key=lambda e: [str(part) for part in e["loc"]]):
        loc = tuple(error["loc"])
        what = "key name: " if loc[-1:] == ("[key]",) else ""  # a bad mapping key, not its value
        lines.append(f"{_key_path(prefix + loc[: len(loc) - bool(what)])}: {what}{_describe(error, model)}")
    return lines


def _cross_section_errors(params: Params) -> list[str]:
    """What one section cannot check alone."""
    errors = []
    both = set(params.games.pretrain) & set(params.games.finetune)
    if both:
        errors.append(f"games: {sorted(both)} are both pretraining and held-out games")
    played = [*params.games.pretrain, *params.games.finetune]
    for game in sorted(set(params.data.game_sources) - set(played)):
        errors.append(f"data.game_sources.{game}: not in games.pretrain or games.finetune")
    by_source: dict[str, list[str]] = {}
    for game in played:
        by_source.setdefault(params.data.source_of(game), []).append(game)
    for source, source_games in by_source.items():
        unpublished = missing_games(source, source_games)
        if unpublished:
            errors.append(
                f"data.source: {source} does not publish {', '.join(unpublished)}; drop "
                f"{'it' if len(unpublished) == 1 else 'them'} from games.pretrain / games.finetune, or give "
                f"{'it' if len(unpublished) == 1 else 'them'} another source in data.game_sources (a "
                "DQN-Replay mirror, or `generate`)"
            )
    for name in ("subsample", "finetune_data"):
        asked, listed = getattr(params, name).runs_per_game, len(params.data.runs)
        if asked > listed:
            errors.append(f"{name}.runs_per_game: {asked} runs asked for, but data.runs lists only {listed}")
    pretrain = params.pretrain
    if pretrain.critic_after > pretrain.steps:
        errors.append(
            f"pretrain.critic_after: {pretrain.critic_after} is after the last step {pretrain.steps}"
        )
    if not pretrain.vmin < pretrain.vmax:
        errors.append(f"pretrain: vmin {pretrain.vmin} must be below vmax {pretrain.vmax}")
    arches = {f"models.{name}": arch for name, arch in params.models.items()}
    arches |= {f"released.models.{name}.arch": model.arch for name, model in params.released.models.items()}
    for key, arch in arches.items():
        if arch.width % arch.heads:
            errors.append(f"{key}: width {arch.width} is not divisible by heads {arch.heads}")
    clashes = sorted(name for name in params.models if name.startswith(RELEASED))
    if clashes:
        errors.append(f"models: {clashes}: names starting with {RELEASED!r} are kept for released models")
    return errors


def _validate(model: type[S], raw: Any, origin: str, prefix: tuple[str, ...] = ()) -> S:
    try:
        text = json.dumps(raw)
    except (TypeError, ValueError) as exc:
        raise ParamsError(f"{origin}: holds a value that is not plain data ({exc})") from None
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        raise ParamsError(f"{origin} is invalid:\n  " + "\n  ".join(_errors(exc, model, prefix))) from None


def check_params(raw: Any, origin: str = "params.yaml") -> Params:
    """Validate a parsed params mapping; return its typed view or raise ParamsError naming every problem."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{origin}: expected a mapping of sections, got {type(raw).__name__}")
    params = _validate(Params, raw, origin)
    errors = _cross_section_errors(params)
    if errors:
        raise ParamsError(f"{origin} is invalid:\n  " + "\n  ".join(errors))
    return params


def load_params(path: Path | str) -> Params:
    """Read and validate a whole params file."""
    import yaml  # only whole params files are YAML; commands get their section as JSON

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such parameter file") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from exc
    return check_params(raw, origin=str(path))


def section_json(section: Section) -> str:
    """A section as the one JSON argument a rule passes; sorted, so reordering params.yaml reruns nothing."""
    return json.dumps(section.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def parse_section(argument: str, model: type[S], path: str) -> S:
    """The section `path` (e.g. "data.generate", "models.40M") from a JSON object, or a whole params file."""
    if argument.lstrip().startswith("{"):
        try:
            raw = json.loads(argument)
        except json.JSONDecodeError as exc:
            raise ParamsError(f"--params: not valid JSON ({exc})") from None
        return _validate(model, raw, f"--params ({path} section)", tuple(path.split(".")))
    section: Any = load_params(argument)
    for key in path.split("."):
        if isinstance(section, dict) and key not in section:
            raise ParamsError(
                f"{argument}: {path} not found; {path.rsplit('.', 1)[0]} has {', '.join(section)}"
            )
        section = section[key] if isinstance(section, dict) else getattr(section, key)
    return section


def params_help(model: type[Section], path: str) -> str:
    """`--params` help: where the section comes from and what each key means."""
    keys = "; ".join(f"{name}: {field.description}" for name, field in model.model_fields.items())
    return f"the {path} section of params.yaml as JSON, or a params file to take it from. Keys: {keys}"


def argument_type(annotated: Any, what: str) -> Callable[[str], Any]:
    """An argparse `type=` that validates one value with the same type params.yaml uses."""
    adapter = TypeAdapter(annotated)

    def convert(text: str) -> Any:
        try:
            number = text[:1].isdigit() or text[:1] == "-"
            return adapter.validate_json(text if number else json.dumps(text))
        except ValidationError as exc:
            message = "; ".join(_describe(error, BaseModel) for error in exc.errors())
            raise argparse.ArgumentTypeError(f"{what} {text!r}: {message}") from None

    return convert


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments naming one raw run and its two outputs, shared by `data download` and `data generate`."""
    parser.add_argument(
        "--game", type=argument_type(Game, "game"), required=True, help="DQN-Replay game name"
    )
    parser.add_argument("--run", type=argument_type(RunId, "run"), required=True, help="run id, 1 to 5")
    parser.add_argument("--out", type=Path, required=True, help="the run's replay_logs directory to create")
    parser.add_argument("--manifest", type=Path, required=True, help="the manifest TSV to write")


def json_schema() -> dict[str, Any]:
    """The JSON schema of a params file, for editors and `jowa check-params --schema`."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **Params.model_json_schema()}


# ------------------------------------------------------------------------ `jowa check-params`


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", nargs="?", default="params.yaml", help="a params file (default: params.yaml)")
    parser.add_argument("--schema", action="store_true", help="print the JSON schema of params files instead")


def main(args: argparse.Namespace) -> None:
    if args.schema:
        print(json.dumps(json_schema(), indent=2))
        return
    params = load_params(args.path)
    print(
        f"{args.path}: valid ({len(params.games.pretrain)} pretraining games, "
        f"{len(params.games.finetune)} held-out, source {params.data.source})"
    )
