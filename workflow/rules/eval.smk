# Evaluation phase: every pretrained size on every pretraining game, greedy and with beam search, and every
# fine-tuned model on its held-out game without planning (as the paper evaluates fine-tuning, spec 6).
# Released checkpoints (params `released`) are pretrained sizes named released-{name} here.
# One job plays all of a game's episodes at once on one GPU (`jowa.eval.evaluate`), under `jowa gpu-run`.
# Evaluation jobs may share a GPU: `--set-resources evaluate_pretrained:gpu_shares=4` lets up to 4 of them
# hold one device at once (`jowa gpu-run --share`); training jobs still take whole devices.

EVAL_ROOT = "results/eval"
PLANNERS = ["greedy", "beam"]


rule evaluate_pretrained:
    """One pretrained size (ours or released) on one pretraining game with one planner."""
    input:
        model=pretrained_model,
        tokenizer=pretrained_tokenizer,
        code=code_inputs("jowa.eval.evaluate"),
    output:
        f"{EVAL_ROOT}/pretrain/{{size}}/{{planner}}/{{game}}.json",
    wildcard_constraints:
        size="|".join(MODELS + RELEASED_SIZES),
        planner="|".join(PLANNERS),
    params:
        eval=section_json(PARAMS.eval),
        beam=beam_argument,
    threads: 2
    resources:
        gpu=1,
        gpu_shares=1,
    log:
        "logs/eval/pretrain/{size}/{planner}/{game}.log",
    benchmark:
        "logs/benchmarks/eval/pretrain/{size}/{planner}/{game}.tsv"
    shell:
        "jowa gpu-run --gpus {resources.gpu} --share {resources.gpu_shares} --"
        " jowa evaluate --params {params.eval:q} --model {input.model:q} --tokenizer {input.tokenizer:q}"
        " --game {wildcards.game} --planner {wildcards.planner} {params.beam} --size {wildcards.size}"
        " --out {output:q} 2> {log:q}"


rule evaluate_finetuned:
    """One fine-tuned model (with its tuned tokenizer) on its held-out game, without planning."""
    input:
        model=f"{TRAIN_ROOT}/finetune/{{size}}/{{quality}}/{{game}}/model.safetensors",
        tokenizer=f"{TRAIN_ROOT}/finetune/{{size}}/{{quality}}/{{game}}/tokenizer.safetensors",
        code=code_inputs("jowa.eval.evaluate"),
    output:
        f"{EVAL_ROOT}/finetune/{{size}}/{{quality}}/{{game}}.json",
    wildcard_constraints:
        size="|".join(MODELS),
    params:
        eval=section_json(PARAMS.eval),
    threads: 2
    resources:
        gpu=1,
        gpu_shares=1,
    log:
        "logs/eval/finetune/{size}/{quality}/{game}.log",
    benchmark:
        "logs/benchmarks/eval/finetune/{size}/{quality}/{game}.tsv"
    shell:
        "jowa gpu-run --gpus {resources.gpu} --share {resources.gpu_shares} --"
        " jowa evaluate --params {params.eval:q} --model {input.model:q} --tokenizer {input.tokenizer:q}"
        " --game {wildcards.game} --planner greedy --size {wildcards.size} --out {output:q} 2> {log:q}"


# The robustness check (params `robustness`, off by default): pretrained sizes again under another protocol
# (standard: sticky actions 0.25, independent episodes), as extra columns of the report.
ROBUSTNESS = PARAMS.robustness
ROBUST_PROTOCOLS = [ROBUSTNESS.protocol] if ROBUSTNESS.protocol else []


rule evaluate_robustness:
    """One pretrained size (ours or released) on one pretraining game with one planner, another protocol."""
    input:
        model=pretrained_model,
        tokenizer=pretrained_tokenizer,
        code=code_inputs("jowa.eval.evaluate"),
    output:
        f"{EVAL_ROOT}/robustness/{{protocol}}/{{size}}/{{planner}}/{{game}}.json",
    wildcard_constraints:
        protocol="standard",
        size="|".join(MODELS + RELEASED_SIZES),
        planner="|".join(PLANNERS),
    params:
        eval=lambda wildcards: section_json(PARAMS.eval.model_copy(update={"protocol": wildcards.protocol})),
        beam=beam_argument,
    threads: 2
    resources:
        gpu=1,
    log:
        "logs/eval/robustness/{protocol}/{size}/{planner}/{game}.log",
    benchmark:
        "logs/benchmarks/eval/robustness/{protocol}/{size}/{planner}/{game}.tsv"
    shell:
        "jowa gpu-run --gpus {resources.gpu} --"
        " jowa evaluate --params {params.eval:q} --model {input.model:q} --tokenizer {input.tokenizer:q}"
        " --game {wildcards.game} --planner {wildcards.planner} {params.beam} --size {wildcards.size}"
        " --out {output:q} 2> {log:q}"


rule eval_all:
    """Phase target: every evaluation."""
    input:
        expand(
            f"{EVAL_ROOT}/pretrain/{{size}}/{{planner}}/{{game}}.json",
            size=MODELS + RELEASED_SIZES,
            planner=PLANNERS,
            game=PRETRAIN,
        ),
        expand(
            f"{EVAL_ROOT}/finetune/{{size}}/{{quality}}/{{game}}.json",
            size=MODELS,
            quality=QUALITIES,
            game=FINETUNE,
        ),
        expand(
            f"{EVAL_ROOT}/robustness/{{protocol}}/{{size}}/{{planner}}/{{game}}.json",
            protocol=ROBUST_PROTOCOLS,
            size=MODELS + RELEASED_SIZES,
            planner=ROBUSTNESS.planners,
            game=PRETRAIN,
        ),
