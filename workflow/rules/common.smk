# Shared helpers: the one params file, the workflow's file layout, run picks, sections and code inputs.
#
# How a parameter reaches the code: params.yaml (or the one --configfile given instead) is read and
# validated here into typed sections (jowa.config); a rule puts the section its command needs into
# `params:` as one JSON string, so Snakemake's params trigger sees every value; the command turns that
# argument back into the same typed section (`jowa.config.parse_section`) and hands its values, under
# the same key names, to the library, which repeats no default.
import shlex

from jowa.code_inputs import code_inputs
from jowa.config import load_params, section_json
from jowa.data.dopamine_format import run_path
from jowa.data.subsample import pick_runs
from jowa.dvc_ledger import record_run

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
    """What the onsuccess hook needs to know of this run to update dvc.lock (`jowa.dvc_ledger.record_run`)."""
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

# Generated data lives apart from downloaded data, so switching data.source never mixes the two.
RAW = "resources/generated" if PARAMS.data.generated else "resources"
REPLAY_ROOT = f"{RAW}/dqn-replay"
MANIFEST_ROOT = f"{RAW}/manifests"

MODELS = list(PARAMS.models)
TRAIN_ROOT = "results/train"

PRETRAIN_RUNS = pick_runs(PRETRAIN, RUNS, PARAMS.subsample.runs_per_game, PARAMS.subsample.seed)
FINETUNE_RUNS = pick_runs(FINETUNE, RUNS, PARAMS.finetune_data.runs_per_game, PARAMS.finetune_data.seed)


wildcard_constraints:
    game="|".join(PRETRAIN + FINETUNE),
    run="|".join(str(r) for r in RUNS),
    quality="|".join(QUALITIES),


def replay_dir(game, run):
    return f"{REPLAY_ROOT}/{run_path(game, run)}"


def manifest(game, run):
    return f"{MANIFEST_ROOT}/{game}/{run}.tsv"


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
    or size's K, H or context reruns nothing here."""
    if wildcards.planner != "beam":
        return ""
    settings = section_json(PARAMS.planning.settings(wildcards.size, wildcards.game))
    return f"--beam {shlex.quote(settings)}"
