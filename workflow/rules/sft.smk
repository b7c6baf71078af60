# Stage 2: supervised fine-tuning on the assistant tokens (prompt masked).


rule sft:
    input:
        model=tiny_model_input(),
        train="results/data/sft/train.parquet",
    output:
        model=directory("results/models/sft"),
        metrics="results/metrics/sft.jsonl",
    log:
        "logs/sft/sft.log",
    benchmark:
        "benchmarks/sft/sft.tsv"
    conda:
        "../../envs/train.yaml"
    threads: threads_of("sft")
    resources:
        **res("sft"),
    params:
        init=lambda wc: INIT_MODEL_DIR,  # an input when built here, else a hub id
        opt=S.sft.to_dict(),
        # Not an output: Snakemake would delete it with a failed job, and a rerun resumes from it.
        checkpoint_dir="results/checkpoints/sft",
        trust_remote_code=S.model.trust_remote_code,
        distributed=S.model.distributed,
    script:
        "../scripts/sft.py"
