# Shared helpers: the one params file, the workflow's file layout, run picks, sections and code inputs.
#
# How a parameter reaches the code: params.yaml (or the one --configfile given instead) is read and
# validated here into typed sections (jowa.core.config); a rule puts the section its command needs into
# `params:` as one JSON string, so Snakemake's params trigger sees every value; the command turns that
# argument back into the same typed section (`jowa.core.config.parse_section`) and hands its values, under
# the same key names, to the library, which repeats no default.
import shlex

from jowa.jobs.code_inputs import code_inputs
from jowa.core.config import load_params, section_json
from jowa.core.params_base import GENERATE
from jowa.data.dopamine.format import run_path
from jowa.data.sources import source_layout
from jowa.data.subsample import pick_runs
from jowa.jobs.dvc_ledger import record_run
from jowa.jobs.released import RELEASED

if workflow.config_settings.config:
    raise ValueError(
        "--config overrides bypass params.yaml and DVC: edit params.yaml or pass a complete --configfile"
    )


def params_file():
    """The one params file: params.yaml, or the file given with --configfile, whole and never merged."""
    given = workflow.config_settings.configfiles
    if len(given) > 1:
        raise ValueError(
            f"give one complete params file, not {len(given)} (--configfile {' '.join(map(str, given))}); "
            "Snakemake would merge them key by key"
        )
    return given[0] if given else "params.yaml"


def ledger_run():
    """What the onsuccess hook needs to know of this run to update dvc.lock (`jowa.jobs.dvc_ledger.record_run`)."""
    dag = workflow.dag_settings
    flags = {"--until": dag.until, "--omit-from": dag.omit_from, "--allowed-rules": dag.allowed_rules}
    flags |= {"--batch": dag.batch, "--target-jobs": dag.target_jobs, "--touch": workflow.touch}
    return dict(
        targets=dag.targets,
        default_target=workflow.default_target,
        params_file=params_file(),
        partial=[flag for flag, value in flags.items() if value],
    )


PARAMS = load_params(params_file())
PRETRAIN = list(PARAMS.games.pretrain)
FINETUNE = list(PARAMS.games.finetune)
RUNS = list(PARAMS.data.runs)
QUALITIES = list(PARAMS.finetune_data.qualities)

# Each source's runs live apart, so switching a source never mixes them. A game's source is data.source
# unless data.game_sources names another. Downloaded runs: resources/{layout}/{Game}/{run}/ (the layout's
# files as its bucket names them); generated runs: DQN-Replay's own layout under resources/generated/.
GAMES = PRETRAIN + FINETUNE
SOURCES = {game: PARAMS.data.source_of(game) for game in GAMES}
GENERATED = [game for game in GAMES if SOURCES[game] == GENERATE]
DOWNLOADED = [game for game in GAMES if SOURCES[game] != GENERATE]
LAYOUTS = {game: source_layout(SOURCES[game]) for game in DOWNLOADED}

MODELS = list(PARAMS.models)
TRAIN_ROOT = "results/train"

# The reference's released checkpoints (params `released`), imported here and evaluated as pretrained
# sizes named released-{name}; none unless released.dir is set.
RELEASED_ROOT = "results/released"
RELEASED_MODELS = list(PARAMS.released.models) if PARAMS.released.dir else []
RELEASED_SIZES = [RELEASED + name for name in RELEASED_MODELS]

PRETRAIN_RUNS = pick_runs(PRETRAIN, RUNS, PARAMS.subsample.runs_per_game, PARAMS.subsample.seed)
FINETUNE_RUNS = pick_runs(FINETUNE, RUNS, PARAMS.finetune_data.runs_per_game, PARAMS.finetune_data.seed)
# Only the runs a store is built from are fetched (paper: 35 of the 100 that data.runs offers).
USED_RUNS = sorted(
    (game, run) for picks in (PRETRAIN_RUNS, FINETUNE_RUNS) for game, runs in picks.items() for run in runs
)


wildcard_constraints:
    game="|".join(GAMES),
    run="|".join(str(r) for r in RUNS),
    quality="|".join(QUALITIES),


def replay_dir(game, run):
    if game in GENERATED:
        return f"resources/generated/dqn-replay/{run_path(game, run)}"
    return f"resources/{LAYOUTS[game]}/{game}/{run}"


def manifest(game, run):
    if game in GENERATED:
        return f"resources/generated/manifests/{game}/{run}.tsv"
    return f"resources/manifests/{LAYOUTS[game]}/{game}/{run}.tsv"


def quality_section(wildcards):
    """finetune_data with only this job's quality: editing another quality's window reruns nothing here."""
    section = PARAMS.finetune_data
    only = {wildcards.quality: section.qualities[wildcards.quality]}
    return section_json(section.model_copy(update={"qualities": only}))


def tokens(data_set):
    """A store's token array (`jowa tokenize`). Not beside the store: a store's directory belongs to the
    data phase (DVC stage `data`), its tokens to the tokenizer's (stage `tokenizer`)."""
    return f"{TRAIN_ROOT}/tokens/{data_set}.npy"


def token_arrays():
    """Every token array the DAG reads: the pretraining stores', and the fine-tuning sets' when the
    tokenizer is not tuned (`finetune_tokens`)."""
    sets = expand("pretrain/{game}", game=PRETRAIN)
    if not PARAMS.finetune.tune_tokenizer:
        sets += expand("finetune/{quality}/{game}", quality=QUALITIES, game=FINETUNE)
    return [tokens(data_set) for data_set in sets]


def finetune_tokens(wildcards):
    """The set's token array, read only when the tokenizer is not tuned."""
    if PARAMS.finetune.tune_tokenizer:
        return []
    return tokens(f"finetune/{wildcards.quality}/{wildcards.game}")



def beam_argument(wildcards):
    """`--beam` with this job's own beam search settings (none for greedy jobs): editing another game's
    or size's K, H or context reruns nothing here. A released model plays with its namesake's."""
    if wildcards.planner != "beam":
        return ""
    size = wildcards.size.removeprefix(RELEASED)
    settings = section_json(PARAMS.planning.settings(size, wildcards.game))
    return f"--beam {shlex.quote(settings)}"


def released_file(name):
    """A file of the released checkpoints' directory (params released.dir)."""
    return os.path.join(PARAMS.released.dir, name)


def pretrained_model(wildcards):
    """A pretrained size's checkpoint: ours, or an imported released one."""
    if wildcards.size in RELEASED_SIZES:
        return f"{RELEASED_ROOT}/{wildcards.size.removeprefix(RELEASED)}/model.safetensors"
    return f"{TRAIN_ROOT}/pretrain/{wildcards.size}/model.safetensors"


def pretrained_tokenizer(wildcards):
    """The tokenizer a pretrained size plays with: ours, or the released one."""
    if wildcards.size in RELEASED_SIZES:
        return f"{RELEASED_ROOT}/tokenizer.safetensors"
    return rules.train_tokenizer.output[0]
