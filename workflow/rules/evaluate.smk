# Stages 6-8: every model answers the held-out prompts, a reward backend scores the answers,
# and win rates against the SFT model go into one table.


rule experiments_table:
    output:
        "results/experiments.json",
    params:
        experiments=[e.to_dict() for e in S.experiments.values()],
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
        model=one_of(EVAL_MODELS),
    params:
        generation=S.generation.to_dict(),
        trust_remote_code=S.model.trust_remote_code,
        max_prompts=S.data.pref.max_eval_prompts,
    log:
        "logs/generate_eval/{model}.log",
    threads: threads_of("generate_eval")
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
        model=one_of(EVAL_MODELS),
    params:
        reward=S.reward.to_dict(),
    log:
        "logs/score/{model}.log",
    threads: threads_of("score")
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
        win_rate=S.win_rate.to_dict(),
    log:
        "logs/win_rate/win_rate.log",
    threads: threads_of("win_rate")
    resources:
        **res("win_rate"),
    conda:
        "../../envs/plot.yaml"
    script:
        "../scripts/win_rate.py"
