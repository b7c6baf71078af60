"""The reference log-prob stage: log pi_ref of y_w, y_l and y_gen for every preference
training row, computed once with the SFT model, so preference training never runs it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from dppo.runtime.io import load_causal_lm, load_tokenizer, pad_token_id, write_parquet
from dppo.train.logprobs import response_logps
from dppo.train.rows import REF_COLUMNS, ids


@torch.no_grad()
def cache_reference_logps(model_dir, pref_file, ygen_file, out_file, batch_size: int,
                          trust_remote_code: bool = False) -> pd.DataFrame:
    """``prompt_id`` and the three reference log-probs (:data:`REF_COLUMNS`) of every row of
    ``pref_file``, in row order, written to ``out_file``."""
    # float32 like the policy's weights (a bf16 checkpoint would otherwise score in bf16)
    model = load_causal_lm(model_dir, trust_remote_code, dtype=torch.float32).eval()
    if torch.cuda.is_available():
        model = model.cuda()
    pad = pad_token_id(load_tokenizer(model_dir, trust_remote_code))
    rows = pd.read_parquet(pref_file)
    ygen = pd.read_parquet(ygen_file)
    sums = []
    # Length-sorted batches waste little compute on padding; results go back in row order.
    order = np.argsort([len(p) for p in rows["prompt_ids"]], kind="stable")
    for start in tqdm(range(0, len(order), batch_size), desc="reference log-probs"):
        idx = order[start : start + batch_size]
        prompts = [ids(rows["prompt_ids"].iloc[i]) for i in idx]
        responses = [
            [ids(rows["chosen_ids"].iloc[i]), ids(rows["rejected_ids"].iloc[i]), ids(ygen["gen_ids"].iloc[i])]
            for i in idx
        ]
        sums.append((idx, response_logps(model, prompts, responses, pad).sums.float().cpu().numpy()))
    values = np.zeros((len(rows), 3))
    for idx, block in sums:
        values[idx] = block
    out = pd.DataFrame({"prompt_id": rows["prompt_id"], **{c: values[:, k] for k, c in enumerate(REF_COLUMNS)}})
    write_parquet(out_file, out)
    return out
