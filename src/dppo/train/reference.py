"""The reference log-prob stage: log pi_ref of y_w, y_l and y_gen for every preference
training row, computed once with the SFT model, so preference training never runs it; and, for
each round of on-policy DPPO, of the regenerated y_gen only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from dppo.runtime.io import atomic_output_dir, load_causal_lm, load_tokenizer, pad_token_id, write_parquet
from dppo.train.logprobs import response_logps
from dppo.train.rows import REF_COLUMNS, ids


def _reference_model(model_dir, trust_remote_code: bool):
    # float32 like the policy's weights (a bf16 checkpoint would otherwise score in bf16)
    model = load_causal_lm(model_dir, trust_remote_code, dtype=torch.float32).eval()
    if torch.cuda.is_available():
        model = model.cuda()
    return model, pad_token_id(load_tokenizer(model_dir, trust_remote_code))


def _summed_logps(model, pad: int, prompts: list[list[int]], responses: list[list[list[int]]],
                  batch_size: int) -> np.ndarray:
    """``[row, response]`` summed log-probs, in row order."""
    sums = []
    # Length-sorted batches waste little compute on padding; results go back in row order.
    order = np.argsort([len(p) for p in prompts], kind="stable")
    for start in tqdm(range(0, len(order), batch_size), desc="reference log-probs"):
        idx = order[start : start + batch_size]
        block = response_logps(model, [prompts[i] for i in idx], [responses[i] for i in idx], pad).sums
        sums.append((idx, block.float().cpu().numpy()))
    values = np.zeros((len(prompts), len(responses[0]) if responses else 0))
    for idx, block in sums:
        values[idx] = block
    return values


@torch.no_grad()
def cache_reference_logps(model_dir, pref_file, ygen_file, out_file, batch_size: int,
                          trust_remote_code: bool = False) -> pd.DataFrame:
    """``prompt_id`` and the three reference log-probs (:data:`REF_COLUMNS`) of every row of
    ``pref_file``, in row order, written to ``out_file``."""
    model, pad = _reference_model(model_dir, trust_remote_code)
    rows = pd.read_parquet(pref_file)
    ygen = pd.read_parquet(ygen_file)
    prompts = [ids(p) for p in rows["prompt_ids"]]
    responses = [[ids(w), ids(lose), ids(g)] for w, lose, g in zip(rows["chosen_ids"], rows["rejected_ids"],
                                                                  ygen["gen_ids"])]
    values = _summed_logps(model, pad, prompts, responses, batch_size)
    out = pd.DataFrame({"prompt_id": rows["prompt_id"], **{c: values[:, k] for k, c in enumerate(REF_COLUMNS)}})
    write_parquet(out_file, out)
    return out


@torch.no_grad()
def cache_round_reference_logps(model_dir, pref_file, base_ygen_file, base_ref_file, ygen_dir, out_dir,
                                seeds: list[int], batch_size: int, trust_remote_code: bool = False) -> None:
    """A round's reference log-probs (:mod:`dppo.train.rounds`): per seed, ``out_dir/seed-<s>.parquet``
    with the columns of :func:`cache_reference_logps`. y_w's and y_l's, and y_gen's where the
    regenerated answer (``ygen_dir/seed-<s>.parquet``) equals the SFT model's (``base_ygen_file``),
    come from ``base_ref_file``; the reference model scores only the answers that changed."""
    rows = pd.read_parquet(pref_file)
    base_gen = [ids(g) for g in pd.read_parquet(base_ygen_file)["gen_ids"]]
    base = pd.read_parquet(base_ref_file)
    if len(base) != len(rows) or not (base["prompt_id"].to_numpy() == rows["prompt_id"].to_numpy()).all():
        raise ValueError(f"{base_ref_file} does not match the preference rows; rerun its rule")
    prompts = [ids(p) for p in rows["prompt_ids"]]
    model = pad = None
    with atomic_output_dir(out_dir) as tmp:
        for seed in seeds:
            gen = [ids(g) for g in pd.read_parquet(Path(ygen_dir) / f"seed-{seed}.parquet")["gen_ids"]]
            changed = [i for i, (a, b) in enumerate(zip(gen, base_gen)) if a != b]
            ref_gen = base["ref_gen"].to_numpy().copy()
            if changed:
                if model is None:
                    model, pad = _reference_model(model_dir, trust_remote_code)
                values = _summed_logps(model, pad, [prompts[i] for i in changed], [[gen[i]] for i in changed],
                                       batch_size)
                ref_gen[changed] = values[:, 0]
            write_parquet(tmp / f"seed-{seed}.parquet", base.assign(ref_gen=ref_gen))
