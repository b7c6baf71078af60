"""Prepare one dataset (SFT or preference): filter, template, tokenize, cut at the percentile."""
import json
import logging
from pathlib import Path

from dppo.data import prepare
from dppo.stage import stage

with stage(snakemake):
    p = snakemake.params
    stats = prepare(
        kind=p.kind, dataset_path=p.dataset["path"], tokenizer_dir=p.tokenizer,
        out_dir=Path(snakemake.output.stats).parent, train_split=p.dataset["train_split"],
        test_split=p.dataset["test_split"], dataset_name=p.dataset.get("name"),
        max_train_rows=p.dataset.get("max_train_rows"), max_test_rows=p.dataset.get("max_test_rows"),
        percentile=p.percentile, overlong=p.overlong,
    )
    logging.info("%s data: %s", p.kind, json.dumps(stats.to_json()))
