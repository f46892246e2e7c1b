# Data phase: DQN-Replay runs (downloaded or generated) -> per-game training stores.

if PARAMS.data.generated:

    rule generate:
        """Play the game with ale-py (random policy, sticky actions) and write a run in the DQN-Replay layout."""
        input:
            code=code_files("data"),
        output:
            replay=directory(replay_dir("{game}", "{run}")),
            manifest=manifest("{game}", "{run}"),
        params:
            generate=cfg("data", "generate"),
        log:
            "logs/data/generate/{game}_{run}.log",
        benchmark:
            "logs/benchmarks/data/generate/{game}_{run}.tsv"
        shell:
            "jowa data generate --game {wildcards.game} --run {wildcards.run} --out {output.replay:q}"
            " --manifest {output.manifest:q} --steps {params.generate[steps_per_run]}"
            " --capacity {params.generate[capacity]} --sticky-actions {params.generate[sticky_actions]}"
            " --max-episode-steps {params.generate[max_episode_steps]} --seed {params.generate[seed]}"
            " 2> {log:q}"

else:

    rule download:
        """Copy one run with gsutil (resumable) from the bucket or a local mirror; write its manifest."""
        input:
            code=code_files("data"),
        output:
            replay=directory(replay_dir("{game}", "{run}")),
            manifest=manifest("{game}", "{run}"),
        params:
            source=config["data"]["source"],
        threads: 4
        log:
            "logs/data/download/{game}_{run}.log",
        benchmark:
            "logs/benchmarks/data/download/{game}_{run}.tsv"
        shell:
            "jowa data download --source {params.source:q} --game {wildcards.game} --run {wildcards.run}"
            " --out {output.replay:q} --manifest {output.manifest:q} 2> {log:q}"


rule subsample:
    """Whole episodes of a pretraining game's picked runs, stitched in time order, into a training store."""
    input:
        replay=lambda wc: [ancient(replay_dir(wc.game, r)) for r in PRETRAIN_RUNS[wc.game]],
        manifests=lambda wc: [manifest(wc.game, r) for r in PRETRAIN_RUNS[wc.game]],
        code=code_files("data"),
    output:
        directory("results/data/pretrain/{game}"),
    params:
        runs=lambda wc: " ".join(map(str, PRETRAIN_RUNS[wc.game])),
        subsample=cfg("subsample"),
    log:
        "logs/data/subsample/{game}.log",
    benchmark:
        "logs/benchmarks/data/subsample/{game}.tsv"
    shell:
        "jowa data subsample --game {wildcards.game} --runs {params.runs} --replay-root {REPLAY_ROOT:q}"
        " --manifest-root {MANIFEST_ROOT:q} --out {output:q}"
        " --transitions {params.subsample[transitions_per_game]} --seed {params.subsample[seed]}"
        " --segment-length {params.subsample[segment_length]}"
        " --segment-stride {params.subsample[segment_stride]} 2> {log:q}"


rule finetune_set:
    """A held-out game's fine-tuning data of one quality (a window over its run's checkpoints)."""
    input:
        replay=lambda wc: [ancient(replay_dir(wc.game, r)) for r in FINETUNE_RUNS[wc.game]],
        manifests=lambda wc: [manifest(wc.game, r) for r in FINETUNE_RUNS[wc.game]],
        code=code_files("data"),
    output:
        directory("results/data/finetune/{quality}/{game}"),
    params:
        runs=lambda wc: " ".join(map(str, FINETUNE_RUNS[wc.game])),
        window=lambda wc: " ".join(map(str, config["finetune_data"]["qualities"][wc.quality])),
        finetune=cfg("finetune_data", drop=("qualities",)),
    log:
        "logs/data/finetune_set/{quality}_{game}.log",
    benchmark:
        "logs/benchmarks/data/finetune_set/{quality}_{game}.tsv"
    shell:
        "jowa data finetune-set --game {wildcards.game} --quality {wildcards.quality} --window {params.window}"
        " --runs {params.runs} --replay-root {REPLAY_ROOT:q} --manifest-root {MANIFEST_ROOT:q} --out {output:q}"
        " --transitions {params.finetune[transitions]} --seed {params.finetune[seed]}"
        " --segment-length {params.finetune[segment_length]}"
        " --segment-stride {params.finetune[segment_stride]} 2> {log:q}"


rule data_all:
    """Phase target: every run fetched, every pretraining store and fine-tuning set built."""
    input:
        expand(manifest("{game}", "{run}"), game=PRETRAIN + FINETUNE, run=RUNS),
        expand("results/data/pretrain/{game}", game=PRETRAIN),
        expand("results/data/finetune/{quality}/{game}", quality=QUALITIES, game=FINETUNE),
