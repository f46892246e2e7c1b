# Shared helpers: validated params, paths, run picks, code inputs.
from pathlib import Path

from jowa.config import GENERATE, check_params
from jowa.data.subsample import pick_runs

if workflow.config_settings.config:
    raise ValueError(
        "--config overrides bypass params.yaml and DVC: edit params.yaml or pass a complete --configfile"
    )

PARAMS = check_params(config, origin=", ".join(str(f) for f in workflow.configfiles) or "params.yaml")
PRETRAIN = list(PARAMS.pretrain_games)
FINETUNE = list(PARAMS.finetune_games)
RUNS = list(PARAMS.data.runs)
QUALITIES = list(PARAMS.finetune_data.qualities)

# Generated data lives apart from downloaded data, so switching data.source never mixes the two.
RAW = "resources/generated" if PARAMS.data.generated else "resources"
REPLAY_ROOT = f"{RAW}/dqn-replay"
MANIFEST_ROOT = f"{RAW}/manifests"

PRETRAIN_RUNS = pick_runs(PRETRAIN, RUNS, PARAMS.subsample.runs_per_game, PARAMS.subsample.seed)
FINETUNE_RUNS = pick_runs(FINETUNE, RUNS, PARAMS.finetune_data.runs_per_game, PARAMS.finetune_data.seed)


wildcard_constraints:
    game="|".join(PRETRAIN + FINETUNE),
    run="|".join(str(r) for r in RUNS),
    quality="|".join(QUALITIES),


def code_files(*packages):
    """The package code a rule runs, as inputs: Snakemake reruns a job when that code changes."""
    files = ["jowa/__init__.py", "jowa/cli.py", "jowa/config.py", "jowa/games.py"]
    for package in packages:
        files += sorted(str(p) for p in Path("jowa", package).glob("*.py"))
    return files


def replay_dir(game, run):
    return f"{REPLAY_ROOT}/{game}/{run}/replay_logs"


def manifest(game, run):
    return f"{MANIFEST_ROOT}/{game}/{run}.tsv"


def cfg(*keys, drop=()):
    """A config subtree with sorted keys, for `params:`: reordering params.yaml must not rerun jobs."""
    node = config
    for key in keys:
        node = node[key]
    return {k: node[k] for k in sorted(node) if k not in drop}
