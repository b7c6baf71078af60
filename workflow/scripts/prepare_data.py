"""Prepare one dataset (SFT or preference): filter, template, tokenize, cut at the percentile."""
import json
import logging
from pathlib import Path

from dppo.data.prepare import prepare_dataset
from dppo.runtime.stage import stage
from dppo.settings import DatasetSettings, DataSettings

with stage(snakemake):
    kind = snakemake.wildcards.kind
    stats = prepare_dataset(
        kind, DatasetSettings.from_dict(snakemake.params.dataset, f"data.{kind}"),
        DataSettings.from_dict(snakemake.params.data), snakemake.params.tokenizer, Path(snakemake.output.stats).parent,
        trust_remote_code=snakemake.params.trust_remote_code,
    )
    logging.info("%s data: %s", kind, json.dumps(stats.to_json()))
