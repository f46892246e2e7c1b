# Data phase: raw runs (downloaded from DQN-Replay or RL Unplugged, or generated) -> per-game training stores.
#
# Raw runs have no code inputs and are protected: no code change ever deletes and re-fetches them (at
# paper scale, ~1 TB). To make them again, delete them.

if GENERATED:

    rule generate:
        """Play the game with ale-py (random policy, sticky actions) and write a run in the DQN-Replay layout."""
        output:
            replay=protected(directory("resources/generated/dqn-replay/{game}/{run}/replay_logs")),
            manifest=protected("resources/generated/manifests/{game}/{run}.tsv"),
        wildcard_constraints:
            game="|".join(GENERATED),
        params:
            generate=section_json(PARAMS.data.generate),
        log:
            "logs/data/generate/{game}_{run}.log",
        benchmark:
            "logs/benchmarks/data/generate/{game}_{run}.tsv"
        shell:
            "jowa data generate --params {params.generate:q} --game {wildcards.game} --run {wildcards.run}"
            " --out {output.replay:q} --manifest {output.manifest:q} 2> {log:q}"


if DOWNLOADED:

    rule download:
        """Copy one run with gsutil (resumable) from its source's bucket or a local mirror; write its manifest."""
        output:
            replay=protected(directory("resources/{layout}/{game}/{run}")),
            manifest=protected("resources/manifests/{layout}/{game}/{run}.tsv"),
        wildcard_constraints:
            game="|".join(DOWNLOADED),
            layout="dqn-replay|rl-unplugged",
        params:
            source=lambda wc: SOURCES[wc.game],
        threads: 4
        log:
            "logs/data/download/{layout}/{game}_{run}.log",
        benchmark:
            "logs/benchmarks/data/download/{layout}/{game}_{run}.tsv"
        shell:
            "jowa data download --source {params.source:q} --game {wildcards.game} --run {wildcards.run}"
            " --out {output.replay:q} --manifest {output.manifest:q} 2> {log:q}"


rule subsample:
    """Whole episodes of a pretraining game's picked runs, stitched in time order, into a training store."""
    input:
        replay=lambda wc: [ancient(replay_dir(wc.game, r)) for r in PRETRAIN_RUNS[wc.game]],
        manifests=lambda wc: [manifest(wc.game, r) for r in PRETRAIN_RUNS[wc.game]],
        code=code_inputs("jowa.data.subsample"),
    output:
        directory("results/data/pretrain/{game}"),
    params:
        runs=lambda wc: PRETRAIN_RUNS[wc.game],
        subsample=section_json(PARAMS.subsample),
    log:
        "logs/data/subsample/{game}.log",
    benchmark:
        "logs/benchmarks/data/subsample/{game}.tsv"
    shell:
        "jowa data subsample --params {params.subsample:q} --game {wildcards.game} --runs {params.runs}"
        " --replay-dirs {input.replay:q} --manifests {input.manifests:q} --out {output:q} 2> {log:q}"


rule finetune_set:
    """A held-out game's fine-tuning data of one quality (a window over its run's checkpoints)."""
    input:
        replay=lambda wc: [ancient(replay_dir(wc.game, r)) for r in FINETUNE_RUNS[wc.game]],
        manifests=lambda wc: [manifest(wc.game, r) for r in FINETUNE_RUNS[wc.game]],
        code=code_inputs("jowa.data.finetune_set"),
    output:
        directory("results/data/finetune/{quality}/{game}"),
    params:
        runs=lambda wc: FINETUNE_RUNS[wc.game],
        finetune_data=quality_section,
    log:
        "logs/data/finetune_set/{quality}_{game}.log",
    benchmark:
        "logs/benchmarks/data/finetune_set/{quality}_{game}.tsv"
    shell:
        "jowa data finetune-set --params {params.finetune_data:q} --quality {wildcards.quality}"
        " --game {wildcards.game} --runs {params.runs} --replay-dirs {input.replay:q}"
        " --manifests {input.manifests:q} --out {output:q} 2> {log:q}"


rule data_all:
    """Phase target: every run a store uses fetched, every pretraining store and fine-tuning set built."""
    input:
        [manifest(game, run) for game, run in USED_RUNS],
        expand("results/data/pretrain/{game}", game=PRETRAIN),
        expand("results/data/finetune/{quality}/{game}", quality=QUALITIES, game=FINETUNE),
