# Stages 3-5: y_gen pregeneration, the reference log-prob cache, one training job per experiment.


rule pregenerate:
    input:
        model="results/models/sft",
        train="results/data/pref/train.parquet",
        stats="results/data/pref/stats.json",
    output:
        ygen="results/ygen/train.parquet",
    params:
        generation=config.get("generation", {}),
    log:
        "logs/pregenerate/pregenerate.log",
    threads: lambda wc: res("pregenerate").get("cpus_per_task", 1)
    resources:
        **res("pregenerate"),
    benchmark:
        "benchmarks/pregenerate/pregenerate.tsv"
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/pregenerate.py"


rule ref_logps:
    input:
        model="results/models/sft",
        train="results/data/pref/train.parquet",
        ygen="results/ygen/train.parquet",
    output:
        ref="results/ref_logps/train.parquet",
    params:
        batch_size=config.get("generation", {}).get("batch_size", 64),
        trust_remote_code=config["model"].get("trust_remote_code", False),
    log:
        "logs/ref_logps/ref_logps.log",
    threads: lambda wc: res("ref_logps").get("cpus_per_task", 1)
    resources:
        **res("ref_logps"),
    benchmark:
        "benchmarks/ref_logps/ref_logps.tsv"
    conda:
        "../../envs/train.yaml"
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
    wildcard_constraints:
        name="|".join(re.escape(n) for n in EXPERIMENT_SPECS),
    params:
        # The whole expanded spec: changing any of its values reruns this experiment only.
        spec=lambda wc: EXPERIMENT_SPECS[wc.name],
        subset_seed=config["data"].get("subset_seed", 0),
        checkpoint_dir=lambda wc: f"results/checkpoints/{wc.name}",
        trust_remote_code=config["model"].get("trust_remote_code", False),
    log:
        "logs/train_preference/{name}.log",
    threads: lambda wc: res("train_preference").get("cpus_per_task", 1)
    resources:
        **res("train_preference"),
    benchmark:
        "benchmarks/train_preference/{name}.tsv"
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/train_preference.py"
