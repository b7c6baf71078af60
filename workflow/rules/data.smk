# Stage 1: datasets (the synthetic task where a path is "synthetic"), the initial model, and
# prepare_data for sft / pref (filter, chat template, tokenize, cut at the percentile).


rule make_synthetic:
    output:
        smoltalk=directory(SYNTHETIC_DIRS["sft"]),
        ultrafeedback=directory(SYNTHETIC_DIRS["pref"]),
    log:
        "logs/make_synthetic/make_synthetic.log",
    conda:
        "../../envs/train.yaml"
    threads: threads_of("make_synthetic")
    resources:
        **res("make_synthetic"),
    params:
        task=S.synthetic.to_dict(),
    script:
        "../scripts/make_synthetic.py"


rule init_model:
    output:
        model=directory("results/models/init"),
    log:
        "logs/init_model/init_model.log",
    conda:
        "../../envs/train.yaml"
    threads: threads_of("init_model")
    resources:
        **res("init_model"),
    params:
        spec=S.tiny_model.to_dict(),
    script:
        "../scripts/init_model.py"


rule prepare_data:
    input:
        unpack(lambda wc: built_locally(wc.kind)),
        model=tiny_model_input(),
    output:
        train="results/data/{kind}/train.parquet",
        test="results/data/{kind}/test.parquet",
        lengths="results/data/{kind}/lengths.parquet",
        stats="results/data/{kind}/stats.json",
    log:
        "logs/prepare_data/{kind}.log",
    wildcard_constraints:
        kind="sft|pref",
    conda:
        "../../envs/train.yaml"
    threads: threads_of("prepare_data")
    resources:
        **res("prepare_data"),
    params:
        tokenizer=lambda wc: INIT_MODEL_DIR,  # an input when built here, else a hub id
        dataset=lambda wc: dataset_settings(wc.kind),
        data=S.data.to_dict(),
        trust_remote_code=S.model.trust_remote_code,
    script:
        "../scripts/prepare_data.py"
