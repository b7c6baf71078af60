# Stages 3-5: y_gen pregeneration, the reference log-prob cache, one training job per experiment.


rule pregenerate:
    input:
        model="results/models/sft",
        train="results/data/pref/train.parquet",
        stats="results/data/pref/stats.json",
    output:
        ygen="results/ygen/train.parquet",
    log:
        "logs/pregenerate/pregenerate.log",
    benchmark:
        "benchmarks/pregenerate/pregenerate.tsv"
    conda:
        "../../envs/train.yaml"
    threads: threads_of("pregenerate")
    resources:
        **res("pregenerate"),
    params:
        generation=S.generation.to_dict(),
        trust_remote_code=S.model.trust_remote_code,
    script:
        "../scripts/pregenerate.py"


rule ref_logps:
    input:
        model="results/models/sft",
        train="results/data/pref/train.parquet",
        ygen="results/ygen/train.parquet",
    output:
        ref="results/ref_logps/train.parquet",
    log:
        "logs/ref_logps/ref_logps.log",
    benchmark:
        "benchmarks/ref_logps/ref_logps.tsv"
    conda:
        "../../envs/train.yaml"
    threads: threads_of("ref_logps")
    resources:
        **res("ref_logps"),
    params:
        batch_size=S.generation.batch_size,
        trust_remote_code=S.model.trust_remote_code,
    script:
        "../scripts/ref_logps.py"


rule train_preference:
    input:
        init=lambda wc: experiment_init(wc.name),
        train="results/data/pref/train.parquet",
        ygen="results/ygen/train.parquet",
        ref="results/ref_logps/train.parquet",
    output:
        model=directory("results/models/{name}"),
        metrics="results/metrics/{name}.jsonl",
    log:
        "logs/train_preference/{name}.log",
    benchmark:
        "benchmarks/train_preference/{name}.tsv"
    wildcard_constraints:
        name=one_of(ONE_ROUND_EXPERIMENTS),
    priority: lambda wc: S.training_priority(wc.name)
    conda:
        "../../envs/train.yaml"
    threads: threads_of("train_preference")
    resources:
        **res("train_preference"),
    params:
        # The whole experiment: changing any of its values reruns this experiment only.
        experiment=lambda wc: S.experiments[wc.name].to_dict(),
        subset_seed=S.data.subset_seed,
        checkpoint_dir=lambda wc: f"results/checkpoints/{wc.name}",
        trust_remote_code=S.model.trust_remote_code,
        distributed=S.model.distributed,
    script:
        "../scripts/train_preference.py"


rule premise:
    # How often y_gen is wrong, the trigger fires and y_gen is the rejected answer (docs/design.md).
    input:
        train="results/data/pref/train.parquet",
        ygen="results/ygen/train.parquet",
        ref="results/ref_logps/train.parquet",
    output:
        "results/tables/premise.json",
    log:
        "logs/premise/premise.log",
    conda:
        "../../envs/plot.yaml"
    threads: 1
    resources:
        **res("premise"),
    params:
        reward=S.reward.to_dict(),
    script:
        "../scripts/premise.py"
