# Stage 1: datasets (the synthetic task where a path is "synthetic"), the initial model, and
# prepare_sft / prepare_pref (filter, chat template, tokenize, cut at the percentile).

SYNTHETIC_DIRS = {"sft": "results/data/raw/smoltalk", "pref": "results/data/raw/ultrafeedback"}


rule make_synthetic:
    output:
        smoltalk=directory(SYNTHETIC_DIRS["sft"]),
        ultrafeedback=directory(SYNTHETIC_DIRS["pref"]),
    params:
        spec=config.get("synthetic", {}),
    log:
        "logs/make_synthetic/make_synthetic.log",
    resources:
        **res("make_synthetic"),
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/make_synthetic.py"


rule init_model:
    output:
        model=directory("results/models/init"),
    params:
        spec=config.get("tiny_model", {}),
    log:
        "logs/init_model/init_model.log",
    resources:
        **res("init_model"),
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/init_model.py"


rule prepare_data:
    input:
        unpack(lambda wc: _local_inputs(wc.kind)),
        model=lambda wc: init_model_dir() if config["model"]["init"] == "tiny" else [],
    output:
        train="results/data/{kind}/train.parquet",
        test="results/data/{kind}/test.parquet",
        lengths="results/data/{kind}/lengths.parquet",
        stats="results/data/{kind}/stats.json",
    wildcard_constraints:
        kind="sft|pref",
    params:
        kind=lambda wc: wc.kind,
        tokenizer=init_model_dir(),
        dataset=lambda wc: {**config["data"][wc.kind], "path": dataset_path(wc.kind)},
        percentile=config["data"]["max_len_percentile"],
        overlong=config["data"].get("overlong", "truncate"),
    log:
        "logs/prepare_data/{kind}.log",
    resources:
        **res("prepare_data"),
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/prepare_data.py"
