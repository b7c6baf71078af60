# On-policy DPPO (experiments with rounds: R > 1; dppo.train.rounds): round k trains steps
# [(k-1)T/R, kT/R) of the one-round run's schedule from round k-1's state, on y_gen regenerated
# greedily by round k-1's policy; the reference stays the SFT model. One job per round and stage,
# each reading only what its round reads: refresh_max_new_tokens (rounds >= 2) reruns rounds 2..R
# only. The last round writes the experiment's usual model and metrics.


rule pregenerate_round:
    # y_gen of round k >= 2 (every seed) by round k-1's models, and how far it moved.
    input:
        model=lambda wc: f"{round_dir(wc.name, int(wc.k) - 1)}/model",
        old_ygen=lambda wc: round_ygen(wc.name, int(wc.k) - 1),
        train="results/data/pref/train.parquet",
        stats="results/data/pref/stats.json",
    output:
        ygen=directory("results/rounds/{name}/round-{k}/ygen"),
        drift="results/rounds/{name}/round-{k}/drift.json",
    log:
        "logs/pregenerate_round/{name}-{k}.log",
    benchmark:
        "benchmarks/pregenerate_round/{name}-{k}.tsv"
    wildcard_constraints:
        name=one_of(ROUND_EXPERIMENTS),
        k="[0-9]+",
    conda:
        "../../envs/train.yaml"
    threads: threads_of("pregenerate")
    resources:
        **round_res("pregenerate_round", "pregenerate"),
    params:
        generation=S.generation.to_dict(),
        seeds=lambda wc: list(S.experiments[wc.name].seeds),
        refresh_max_new_tokens=lambda wc: S.experiments[wc.name].refresh_max_new_tokens,
        trust_remote_code=S.model.trust_remote_code,
    script:
        "../scripts/pregenerate_round.py"


rule ref_logps_round:
    # The SFT model's log-probs of round k's regenerated y_gen (y_w's and y_l's: the shared cache).
    input:
        model="results/models/sft",
        train="results/data/pref/train.parquet",
        base_ygen="results/ygen/train.parquet",
        base_ref="results/ref_logps/train.parquet",
        ygen="results/rounds/{name}/round-{k}/ygen",
    output:
        ref=directory("results/rounds/{name}/round-{k}/ref"),
    log:
        "logs/ref_logps_round/{name}-{k}.log",
    benchmark:
        "benchmarks/ref_logps_round/{name}-{k}.tsv"
    wildcard_constraints:
        name=one_of(ROUND_EXPERIMENTS),
        k="[0-9]+",
    conda:
        "../../envs/train.yaml"
    threads: threads_of("ref_logps")
    resources:
        **round_res("ref_logps_round", "ref_logps"),
    params:
        seeds=lambda wc: list(S.experiments[wc.name].seeds),
        batch_size=S.generation.batch_size,
        trust_remote_code=S.model.trust_remote_code,
    script:
        "../scripts/ref_logps_round.py"


rule train_round:
    # Rounds 1..R-1: their models (the next round's y_gen), states (its start) and metrics.
    input:
        unpack(lambda wc: round_training_inputs(wc.name, wc.k)),
        train="results/data/pref/train.parquet",
    output:
        model=directory("results/rounds/{name}/round-{k}/model"),
        state=directory("results/rounds/{name}/round-{k}/state"),
        metrics="results/rounds/{name}/round-{k}/metrics.jsonl",
    log:
        "logs/train_round/{name}-{k}.log",
    benchmark:
        "benchmarks/train_round/{name}-{k}.tsv"
    wildcard_constraints:
        name=one_of(ROUND_EXPERIMENTS),
        k="[0-9]+",
    priority: lambda wc: S.training_priority(wc.name)
    conda:
        "../../envs/train.yaml"
    threads: threads_of("train_preference")
    resources:
        **round_res("train_round", "train_preference"),
    params:
        experiment=lambda wc: S.experiments[wc.name].training_dict(),
        round_k=lambda wc: int(wc.k),
        subset_seed=S.data.subset_seed,
        checkpoint_dir=lambda wc: f"results/checkpoints/rounds/{wc.name}/round-{wc.k}",
        trust_remote_code=S.model.trust_remote_code,
        distributed=S.model.distributed,
    script:
        "../scripts/train_round.py"


rule train_last_round:
    # Round R: the experiment's model and metrics (every round's lines, a `round` field on each).
    input:
        unpack(lambda wc: round_training_inputs(wc.name, S.experiments[wc.name].rounds)),
        train="results/data/pref/train.parquet",
        earlier_metrics=lambda wc: [
            f"{round_dir(wc.name, k)}/metrics.jsonl" for k in range(1, S.experiments[wc.name].rounds)
        ],
    output:
        model=directory("results/models/{name}"),
        metrics="results/metrics/{name}.jsonl",
    log:
        "logs/train_round/{name}.log",
    benchmark:
        "benchmarks/train_round/{name}.tsv"
    wildcard_constraints:
        name=one_of(ROUND_EXPERIMENTS),
    priority: lambda wc: S.training_priority(wc.name)
    conda:
        "../../envs/train.yaml"
    threads: threads_of("train_preference")
    resources:
        **round_res("train_last_round", "train_preference"),
    params:
        experiment=lambda wc: S.experiments[wc.name].training_dict(),
        round_k=lambda wc: S.experiments[wc.name].rounds,
        subset_seed=S.data.subset_seed,
        checkpoint_dir=lambda wc: f"results/checkpoints/rounds/{wc.name}/last",
        trust_remote_code=S.model.trust_remote_code,
        distributed=S.model.distributed,
    script:
        "../scripts/train_round.py"


rule ygen_drift:
    # How far y_gen moved in each round of every on-policy experiment.
    input:
        [
            f"{round_dir(name, k)}/drift.json"
            for name in ROUND_EXPERIMENTS
            for k in range(2, S.experiments[name].rounds + 1)
        ],
    output:
        "results/tables/ygen_drift.csv",
    log:
        "logs/ygen_drift/ygen_drift.log",
    conda:
        "../../envs/plot.yaml"
    threads: 1
    resources:
        **res("ygen_drift"),
    script:
        "../scripts/ygen_drift.py"
