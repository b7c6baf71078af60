"""Build the embedded default's tiny model and tokenizer (logic in dppo.data.tiny_model)."""
from dppo.data import synthetic
from dppo.data.tiny_model import save_tiny_model
from dppo.runtime.io import atomic_output_dir
from dppo.runtime.stage import stage
from dppo.settings import TinyModelSpec

with stage(snakemake):
    with atomic_output_dir(snakemake.output.model) as tmp:
        save_tiny_model(tmp, synthetic.vocabulary(), TinyModelSpec.from_dict(snakemake.params.spec, "tiny_model"))
