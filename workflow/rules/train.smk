# Training phase: tokenizer -> token arrays -> pretraining per size -> fine-tuning per size x game x quality.
#
# Outputs are the final .safetensors only. Each job's run directory (resumable state.pt, metrics.jsonl,
# TensorBoard events) sits beside them and is not an output, so Snakemake's cleanup of a killed job keeps
# it and the rerun resumes. GPU jobs run under `jowa gpu-run` (jowa/jobs/gpu_slots.py), which picks the GPUs of
# the machine they get ({resources.gpu}: 0 under --resources gpu=0 is the CPU); training commands run one
# DDP process per GPU when given several. Snakemake sets OMP_NUM_THREADS to the job's threads.

rule train_tokenizer:
    """The VQ tokenizer, once, on frames drawn from every pretraining store."""
    input:
        stores=expand("results/data/pretrain/{game}", game=PRETRAIN),
        code=code_inputs("jowa.train.train_tokenizer"),
    output:
        f"{TRAIN_ROOT}/tokenizer/tokenizer.safetensors",
    params:
        tokenizer=section_json(PARAMS.tokenizer),
        run_dir=f"{TRAIN_ROOT}/tokenizer/run",
    threads: 4
    resources:
        gpu=1,
    log:
        "logs/train/tokenizer.log",
    benchmark:
        "logs/benchmarks/train/tokenizer.tsv"
    shell:
        "jowa gpu-run --gpus {resources.gpu} --torchrun --"
        " jowa train-tokenizer --params {params.tokenizer:q} --stores {input.stores:q}"
        " --out {output:q} --run-dir {params.run_dir:q} 2> {log:q}"


rule tokenize:
    """A store's frames as tokens of the pretrained tokenizer (results/train/tokens/)."""
    input:
        tokenizer=rules.train_tokenizer.output[0],
        store="results/data/{data_set}",
        code=code_inputs("jowa.train.tokenize"),
    output:
        tokens("{data_set}"),
    wildcard_constraints:
        data_set=r"pretrain/[^/]+|finetune/[^/]+/[^/]+",
    threads: 4
    resources:
        gpu=1,
    log:
        "logs/train/tokenize/{data_set}.log",
    benchmark:
        "logs/benchmarks/train/tokenize/{data_set}.tsv"
    shell:
        "jowa gpu-run --gpus {resources.gpu} --"
        " jowa tokenize --tokenizer {input.tokenizer:q} --store {input.store:q} --out {output:q} 2> {log:q}"


rule pretrain:
    """Two-stage pretraining of one size on every pretraining game's tokens."""
    input:
        tokenizer=rules.train_tokenizer.output[0],
        stores=expand("results/data/pretrain/{game}", game=PRETRAIN),
        tokens=expand(tokens("pretrain/{game}"), game=PRETRAIN),
        code=code_inputs("jowa.train.pretrain"),
    output:
        f"{TRAIN_ROOT}/pretrain/{{size}}/model.safetensors",
    wildcard_constraints:
        size="|".join(MODELS),
    params:
        pretrain=section_json(PARAMS.pretrain),
        model=lambda wc: section_json(PARAMS.models[wc.size]),
        run_dir=f"{TRAIN_ROOT}/pretrain/{{size}}/run",
    threads: 4
    resources:
        gpu=1,
    log:
        "logs/train/pretrain/{size}.log",
    benchmark:
        "logs/benchmarks/train/pretrain/{size}.tsv"
    shell:
        "jowa gpu-run --gpus {resources.gpu} --torchrun --"
        " jowa pretrain --params {params.pretrain:q} --size {wildcards.size}"
        " --model {params.model:q} --tokenizer {input.tokenizer:q} --stores {input.stores:q}"
        " --tokens {input.tokens:q} --out {output:q} --run-dir {params.run_dir:q} 2> {log:q}"


rule finetune:
    """One pretrained size fine-tuned on one held-out game's set of one quality."""
    input:
        model=f"{TRAIN_ROOT}/pretrain/{{size}}/model.safetensors",
        tokenizer=rules.train_tokenizer.output[0],
        store="results/data/finetune/{quality}/{game}",
        tokens=finetune_tokens,
        code=code_inputs("jowa.train.finetune"),
    output:
        model=f"{TRAIN_ROOT}/finetune/{{size}}/{{quality}}/{{game}}/model.safetensors",
        tokenizer=f"{TRAIN_ROOT}/finetune/{{size}}/{{quality}}/{{game}}/tokenizer.safetensors",
    wildcard_constraints:
        size="|".join(MODELS),
    params:
        finetune=section_json(PARAMS.finetune),
        tokens=lambda wc, input: f"--tokens {input.tokens}" if input.tokens else "",
        run_dir=f"{TRAIN_ROOT}/finetune/{{size}}/{{quality}}/{{game}}/run",
    threads: 4
    resources:
        gpu=1,
    log:
        "logs/train/finetune/{size}/{quality}/{game}.log",
    benchmark:
        "logs/benchmarks/train/finetune/{size}/{quality}/{game}.tsv"
    shell:
        "jowa gpu-run --gpus {resources.gpu} --torchrun --"
        " jowa finetune --params {params.finetune:q} --model {input.model:q}"
        " --tokenizer {input.tokenizer:q} --store {input.store:q} {params.tokens} --out {output.model:q}"
        " --out-tokenizer {output.tokenizer:q} --run-dir {params.run_dir:q} 2> {log:q}"


rule import_released_tokenizer:
    """The released tokenizer (params released.tokenizer) in our format."""
    input:
        state=lambda wc: ancient(released_file(PARAMS.released.tokenizer.file)),
        code=code_inputs("jowa.weights.import_reference"),
    output:
        f"{RELEASED_ROOT}/tokenizer.safetensors",
    params:
        arch=section_json(PARAMS.released.tokenizer.arch),
    log:
        "logs/released/tokenizer.log",
    benchmark:
        "logs/benchmarks/released/tokenizer.tsv"
    shell:
        "jowa checkpoint import-reference --kind tokenizer --input {input.state:q}"
        " --tokenizer-config {params.arch:q} --out {output:q} 2> {log:q}"


rule import_released_model:
    """One released JOWA (params released.models) in our format."""
    input:
        state=lambda wc: ancient(released_file(PARAMS.released.models[wc.name].file)),
        code=code_inputs("jowa.weights.import_reference"),
    output:
        f"{RELEASED_ROOT}/{{name}}/model.safetensors",
    wildcard_constraints:
        name="|".join(RELEASED_MODELS),
    params:
        arch=lambda wc: section_json(PARAMS.released.models[wc.name].arch),
    log:
        "logs/released/{name}.log",
    benchmark:
        "logs/benchmarks/released/{name}.tsv"
    shell:
        "jowa checkpoint import-reference --kind world --input {input.state:q} --arch {params.arch:q}"
        " --out {output:q} 2> {log:q}"


# Phase targets: `snakemake --cores all tokenizer_all` (or pretrain_all, finetune_all) is one DVC stage's cmd.
rule tokenizer_all:
    """Phase target: the tokenizer and every token array the DAG reads."""
    input:
        rules.train_tokenizer.output,
        token_arrays(),


rule pretrain_all:
    """Phase target: every size pretrained."""
    input:
        expand(f"{TRAIN_ROOT}/pretrain/{{size}}/model.safetensors", size=MODELS),


rule finetune_all:
    """Phase target: every size fine-tuned on every held-out game and quality."""
    input:
        expand(
            f"{TRAIN_ROOT}/finetune/{{size}}/{{quality}}/{{game}}/model.safetensors",
            size=MODELS,
            quality=QUALITIES,
            game=FINETUNE,
        ),


rule train_all:
    """Phase target: every size pretrained and fine-tuned on every held-out game and quality."""
    input:
        rules.tokenizer_all.input,
        rules.pretrain_all.input,
        rules.finetune_all.input,


rule gpu_check:
    """Not part of `all`: `snakemake gpu_check --forcerun gpu_check` before the long jobs checks that a job
    asking for GPUs sees exactly those (profiles/slurm gives it the training jobs' count)."""
    input:
        code=code_inputs("jowa.jobs.gpu_check"),
    output:
        "results/gpu_check.json",
    threads: 1
    resources:
        gpu=1,
    log:
        "logs/gpu_check.log",
    shell:
        "jowa gpu-run --gpus {resources.gpu} -- jowa gpu-check --expect {resources.gpu} --out {output:q} 2> {log:q}"
