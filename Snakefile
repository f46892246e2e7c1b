# JOWA reproduction: one DAG from DQN-Replay to tables and figures.
#   snakemake --cores all                                   the paper's configuration (params.yaml)
#   snakemake --cores all --configfile config/smoke.yaml    the local run: generated data, tiny models
# A --configfile replaces params.yaml whole, it is never merged with it (workflow/rules/common.smk).
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
