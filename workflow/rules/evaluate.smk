# Stages 6-8: every model answers the held-out prompts, a reward backend scores the answers,
# and win rates against the SFT model go into one table.


rule experiments_table:
    output:
        "results/experiments.json",
    log:
        "logs/experiments_table/experiments_table.log",
    localrule: True
    params:
        experiments=[e.to_dict() for e in S.experiments.values()],
    run:
        from dppo.runtime.io import write_json

        write_json(output[0], params.experiments)


rule generate_eval:
    # One job answers for every model: one process start for the whole grid. Answers are
    # cached by content (weights, prompts, settings), so after a change to one experiment only
    # its models generate again.
    input:
        models=expand("results/models/{model}", model=EVAL_MODELS),
        test="results/data/pref/test.parquet",
        stats="results/data/pref/stats.json",
    output:
        generations=expand("results/generations/{model}.parquet", model=EVAL_MODELS),
    log:
        "logs/generate_eval/generate_eval.log",
    benchmark:
        "benchmarks/generate_eval/generate_eval.tsv"
    conda:
        "../../envs/train.yaml"
    threads: threads_of("generate_eval")
    resources:
        **res("generate_eval"),
    params:
        generation=S.generation.to_dict(),
        trust_remote_code=S.model.trust_remote_code,
        max_prompts=S.data.pref.max_eval_prompts,
        cache_dir="results/generation_cache",
    script:
        "../scripts/generate_eval.py"


rule score:
    # One job scores every model's answers: one reward-model load per pass (a 70B model takes
    # minutes to load). Scores are cached by content (answers + reward settings), so after a
    # change to one experiment only its answers are scored again.
    input:
        generations=expand("results/generations/{model}.parquet", model=EVAL_MODELS),
    output:
        scores=expand("results/scores/{model}.parquet", model=EVAL_MODELS),
    log:
        "logs/score/score.log",
    benchmark:
        "benchmarks/score/score.tsv"
    conda:
        "../../envs/train.yaml"
    threads: threads_of("score")
    resources:
        **res("score"),
    params:
        reward=S.reward.to_dict(),
        cache_dir="results/score_cache",
    script:
        "../scripts/score.py"


rule win_rate:
    input:
        scores=expand("results/scores/{model}.parquet", model=EVAL_MODELS),
        experiments="results/experiments.json",
    output:
        csv="results/tables/win_rates.csv",
        prompts="results/tables/prompt_scores.parquet",
        tex="paper/tables/win_rates.tex",
    log:
        "logs/win_rate/win_rate.log",
    conda:
        "../../envs/plot.yaml"
    threads: threads_of("win_rate")
    resources:
        **res("win_rate"),
    params:
        win_rate=S.win_rate.to_dict(),
    script:
        "../scripts/win_rate.py"


rule claims:
    input:
        win_rates="results/tables/win_rates.csv",
        prompts="results/tables/prompt_scores.parquet",
    output:
        csv="results/tables/claims.csv",
        tex="paper/tables/claims.tex",
    log:
        "logs/claims/claims.log",
    conda:
        "../../envs/plot.yaml"
    threads: 1
    resources:
        **res("claims"),
    params:
        claims=S.claims.to_dict(),
        win_rate=S.win_rate.to_dict(),
    script:
        "../scripts/claims.py"


rule penalty_scale:
    input:
        experiments="results/experiments.json",
        metrics=expand("results/metrics/{name}.jsonl", name=PENALIZED_EXPERIMENTS),
    output:
        csv="results/tables/penalty_scale.csv",
        tex="paper/tables/penalty_scale.tex",
    log:
        "logs/penalty_scale/penalty_scale.log",
    conda:
        "../../envs/plot.yaml"
    threads: 1
    resources:
        **res("penalty_scale"),
    script:
        "../scripts/penalty_scale.py"
