# JOWA reproduction: one DAG from DQN-Replay to tables and figures.
#   snakemake --cores all                                   the paper's configuration (params.yaml)
#   snakemake --cores all --configfile config/smoke.yaml    the local run: generated data, tiny models
# A --configfile replaces params.yaml whole, it is never merged with it (workflow/rules/common.smk).
# `dvc repro` runs the same DAG one phase at a time and records it in dvc.lock (dvc.yaml, README).
from snakemake.utils import min_version

min_version("9.27")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        rules.data_all.input,
        rules.train_all.input,
        rules.eval_all.input,
        rules.report.output,


onsuccess:
    # keeps dvc.lock current after a direct run (not under `dvc repro`, which commits itself); only warns
    record_run(**ledger_run())
