"""Build the embedded default's tiny model and tokenizer (logic in dppo.tiny_model)."""
from dppo import synthetic
from dppo.io import atomic_output_dir
from dppo.settings import TinyModelSpec
from dppo.stage import stage
from dppo.tiny_model import save_tiny_model

with stage(snakemake):
    with atomic_output_dir(snakemake.output.model) as tmp:
        save_tiny_model(tmp, synthetic.vocabulary(), TinyModelSpec.from_dict(snakemake.params.spec, "tiny_model"))
