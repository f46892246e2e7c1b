# Report phase: the paper's tables and figures from every evaluation, beside the published numbers
# (`jowa.report.report`), and the released checkpoints' beside ours when params `released` names them.
# results/metrics.json holds the headline aggregates for `dvc metrics show`.

REPORT_ROOT = "results/report"


rule report:
    """Tables (Markdown, LaTeX, CSV), figures (PNG, PDF) and headline metrics."""
    input:
        evaluations=rules.eval_all.input,
        models=expand(f"{TRAIN_ROOT}/pretrain/{{size}}/model.safetensors", size=MODELS),
        released=expand(f"{RELEASED_ROOT}/{{name}}/model.safetensors", name=RELEASED_MODELS),
        code=code_inputs("jowa.report.report"),
    output:
        tables=report(
            multiext(f"{REPORT_ROOT}/pretrain_scores", ".md", ".tex", ".csv")
            + multiext(f"{REPORT_ROOT}/episodes", ".md", ".tex", ".csv")
            + multiext(f"{REPORT_ROOT}/finetune_scores", ".md", ".tex", ".csv")
            + multiext(f"{REPORT_ROOT}/planning_ablation", ".md", ".tex", ".csv"),
            caption="../report/tables.rst",
            category="Tables",
        ),
        scaling=report(
            multiext(f"{REPORT_ROOT}/scaling", ".png", ".pdf"),
            caption="../report/scaling.rst",
            category="Figures",
        ),
        profiles=report(
            multiext(f"{REPORT_ROOT}/profiles", ".png", ".pdf"),
            caption="../report/profiles.rst",
            category="Figures",
        ),
        per_game=report(
            multiext(f"{REPORT_ROOT}/per_game", ".png", ".pdf"),
            caption="../report/per_game.rst",
            category="Figures",
        ),
        curves=report(
            multiext(f"{REPORT_ROOT}/training_curves", ".png", ".pdf"),
            caption="../report/training_curves.rst",
            category="Figures",
        ),
        plot=f"{REPORT_ROOT}/plots/scaling.csv",
        metrics="results/metrics.json",
    params:
        out=lambda wildcards, output: os.path.dirname(output.scaling[0]),
    log:
        "logs/report.log",
    benchmark:
        "logs/benchmarks/report.tsv"
    shell:
        "jowa report --evaluations {input.evaluations:q} --models {input.models:q}"
        " --released-models {input.released:q} --out {params.out:q} --metrics {output.metrics:q} 2> {log:q}"
