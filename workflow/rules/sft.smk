# Stage 2: supervised fine-tuning on the assistant tokens (prompt masked).


rule sft:
    input:
        model=lambda wc: init_model_dir() if config["model"]["init"] == "tiny" else [],
        train="results/data/sft/train.parquet",
    output:
        model=directory("results/models/sft"),
        metrics="results/metrics/sft.jsonl",
    params:
        init=init_model_dir(),
        opt=config.get("sft", {}),
        # Not an output: Snakemake would delete it with a failed job, and a rerun resumes from it.
        checkpoint_dir="results/checkpoints/sft",
        trust_remote_code=config["model"].get("trust_remote_code", False),
    log:
        "logs/sft/sft.log",
    threads: lambda wc: res("sft").get("cpus_per_task", 1)
    resources:
        **res("sft"),
    benchmark:
        "benchmarks/sft/sft.tsv"
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/sft.py"
