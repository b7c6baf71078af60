# Stages 6-8: every model answers the held-out prompts, a reward backend scores the answers,
# and win rates against the SFT model go into one table.

EVAL_MODELS = ["sft", *EXPERIMENT_SPECS]


rule experiments_table:
    output:
        "results/experiments.json",
    params:
        experiments=EXPERIMENTS,
    log:
        "logs/experiments_table/experiments_table.log",
    localrule: True
    run:
        from dppo.io import write_json

        write_json(output[0], params.experiments)


rule generate_eval:
    input:
        model="results/models/{model}",
        test="results/data/pref/test.parquet",
        stats="results/data/pref/stats.json",
    output:
        generations="results/generations/{model}.parquet",
    wildcard_constraints:
        model="|".join(re.escape(m) for m in EVAL_MODELS),
    params:
        generation={**config.get("generation", {}), "trust_remote_code": config["model"].get("trust_remote_code", False)},
        max_prompts=config["data"]["pref"].get("max_eval_prompts"),
    log:
        "logs/generate_eval/{model}.log",
    threads: lambda wc: res("generate_eval").get("cpus_per_task", 1)
    resources:
        **res("generate_eval"),
    benchmark:
        "benchmarks/generate_eval/{model}.tsv"
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/generate_eval.py"


rule score:
    input:
        generations="results/generations/{model}.parquet",
    output:
        scores="results/scores/{model}.parquet",
    wildcard_constraints:
        model="|".join(re.escape(m) for m in EVAL_MODELS),
    params:
        reward=config["reward"],
    log:
        "logs/score/{model}.log",
    threads: lambda wc: res("score").get("cpus_per_task", 1)
    resources:
        **res("score"),
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/score.py"


rule win_rate:
    input:
        scores=expand("results/scores/{model}.parquet", model=EVAL_MODELS),
        experiments="results/experiments.json",
    output:
        csv="results/tables/win_rates.csv",
        tex="paper/tables/win_rates.tex",
    params:
        n_boot=config.get("win_rate", {}).get("n_boot", 1000),
        seed=config.get("win_rate", {}).get("seed", 0),
    log:
        "logs/win_rate/win_rate.log",
    resources:
        **res("win_rate"),
    conda:
        "../../envs/plot.yaml"
    script:
        "../scripts/win_rate.py"
