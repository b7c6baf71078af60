"""The embedded default's synthetic chat task and its programmatic ground-truth reward.

Each prompt asks for one operation on a list of symbols ("sort : c a f b"); the correct
answer is the transformed list ("a b c f"). The reward is graded: +1 for an exact answer,
falling with every wrong position and every missing or extra symbol, below zero once fewer
than half the positions are right.

The generator writes local dataset files in the exact schemas (and file layout) of the hub
datasets the poster uses, so the real `datasets` loading code reads them unchanged:

- ``HuggingFaceTB/smoltalk``: ``messages`` = list of ``{"content", "role"}``, ``source``;
  splits ``train`` / ``test``.
- ``HuggingFaceH4/ultrafeedback_binarized``: ``prompt``, ``prompt_id``, ``chosen`` and
  ``rejected`` (message lists), ``messages``, ``score_chosen``, ``score_rejected``; splits
  ``train_prefs`` / ``test_prefs``.

Demonstrations include flawed answers and the preference pairs contrast a better with a worse
answer, so a tiny model learns the task quickly yet leaves headroom for preference training.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from dppo.settings import TaskSpec

SYMBOLS = tuple("abcdefghijklmnop")
# Order-free operations: the answer depends on the multiset of symbols only, which a tiny
# transformer learns in a minute of CPU (copying by position takes far longer).
OPERATIONS = {
    "sort": lambda items: sorted(items),
    "rsort": lambda items: sorted(items, reverse=True),
    "unique": lambda items: sorted(set(items)),
}
# Words the tokenizer must know besides the symbols.
TASK_WORDS = (*OPERATIONS, ":")
MIN_REWARD = -2.0


def parse_prompt(prompt: str) -> tuple[str, list[str]]:
    """Split ``"<op> : <items>"`` into the operation and its items; ValueError if malformed."""
    op, sep, rest = prompt.partition(":")
    op = op.strip()
    if not sep or op not in OPERATIONS:
        raise ValueError(f"not a synthetic-task prompt: {prompt!r}")
    return op, rest.split()


def answer(prompt: str) -> list[str]:
    op, items = parse_prompt(prompt)
    return OPERATIONS[op](items)


def reward(prompt: str, response: str) -> float:
    """Ground-truth reward in [MIN_REWARD, 1]: 2 * (share of right positions) - 1, minus the
    share of missing or extra symbols. Exact answer: 1; nothing right: -1 or lower."""
    target = answer(prompt)
    produced = response.split()
    n = len(target)
    right = sum(a == b for a, b in zip(produced, target))
    value = 2.0 * right / n - 1.0 - abs(len(produced) - n) / n
    return max(MIN_REWARD, value)


def corrupt(rng: np.random.Generator, items: list[str], n_edits: int) -> list[str]:
    """Apply ``n_edits`` random edits (substitute, swap neighbours, drop, duplicate)."""
    out = list(items)
    for _ in range(n_edits):
        kind = rng.integers(4) if len(out) > 1 else 0
        i = int(rng.integers(len(out)))
        if kind == 0:
            out[i] = SYMBOLS[int(rng.integers(len(SYMBOLS)))]
        elif kind == 1:
            j = min(i + 1, len(out) - 1) if i + 1 < len(out) else i - 1
            out[i], out[j] = out[j], out[i]
        elif kind == 2:
            del out[i]
        else:
            out.insert(i, out[i])
    return out


def sample_prompt(rng: np.random.Generator, spec: TaskSpec) -> str:
    n_items = min(spec.max_items, spec.min_items + int(rng.geometric(spec.length_geometric_p)) - 1)
    op = list(OPERATIONS)[int(rng.integers(len(OPERATIONS)))]
    items = [SYMBOLS[int(i)] for i in rng.integers(len(SYMBOLS), size=n_items)]
    return f"{op} : {' '.join(items)}"


def _messages(prompt: str, response: str) -> list[dict[str, str]]:
    return [{"content": prompt, "role": "user"}, {"content": response, "role": "assistant"}]


def _prompt_id(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()


def _fresh_prompt(rng: np.random.Generator, spec: TaskSpec, used: set[str] | None) -> str:
    """A prompt not in ``used`` (then added to it), so held-out splits share no prompt with
    training and a preference split asks each prompt once."""
    while True:
        prompt = sample_prompt(rng, spec)
        if used is None or prompt not in used:
            break
    if used is not None:
        used.add(prompt)
    return prompt


def sft_rows(rng: np.random.Generator, spec: TaskSpec, n: int, used: set[str] | None = None) -> list[dict]:
    rows = []
    for _ in range(n):
        prompt = _fresh_prompt(rng, spec, used)
        response = answer(prompt)
        if rng.random() < spec.flawed_demo_rate:
            response = corrupt(rng, response, int(rng.integers(1, 4)))
        if len(response) > 1 and rng.random() < spec.truncated_demo_rate:
            response = response[:-1]
        rows.append({"messages": _messages(prompt, " ".join(response)), "source": "synthetic"})
    return rows


def preference_rows(rng: np.random.Generator, spec: TaskSpec, n: int, used: set[str] | None = None) -> list[dict]:
    """Pairs whose chosen answer has strictly higher ground-truth reward than the rejected;
    one pair per prompt, prompts outside ``used``."""
    rows = []
    used = set() if used is None else used
    while len(rows) < n:
        prompt = _fresh_prompt(rng, spec, used)
        target = answer(prompt)
        chosen_items = corrupt(rng, target, int(rng.choice(3, p=[0.5, 0.3, 0.2])))
        # The SFT data's systematic flaw, stopping one item short, in chosen and rejected answers
        # at the task's rates (a rate of 0 draws nothing, so a design keeps its data stream).
        if spec.chosen_flaw_rate > 0 and rng.random() < spec.chosen_flaw_rate and len(chosen_items) > 1:
            chosen_items = chosen_items[:-1]
        chosen = " ".join(chosen_items)
        if spec.rejected_flaw_rate > 0 and rng.random() < spec.rejected_flaw_rate:
            rejected = " ".join(corrupt(rng, target, int(rng.integers(0, 3)))[:-1])
        else:
            rejected = " ".join(corrupt(rng, target, int(rng.integers(2, 6))))
        score_chosen, score_rejected = reward(prompt, chosen), reward(prompt, rejected)
        if not rejected or score_chosen <= score_rejected:
            continue  # resample: ground truth must prefer chosen in every pair
        rows.append(
            {
                "prompt": prompt,
                "prompt_id": _prompt_id(prompt),
                "chosen": _messages(prompt, chosen),
                "rejected": _messages(prompt, rejected),
                "messages": _messages(prompt, chosen),
                "score_chosen": score_chosen,
                "score_rejected": score_rejected,
            }
        )
    return rows


def _write_hub_layout(root: Path, splits: dict[str, list[dict]]) -> None:
    """Write ``data/<split>-00000-of-00001.parquet`` as on the hub, so ``load_dataset(root)``
    finds the splits by name exactly as it does for the hub repository."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        pd.DataFrame(rows).to_parquet(root / "data" / f"{split}-00000-of-00001.parquet", index=False)


def write_datasets(spec: TaskSpec, smoltalk_dir: Path, ultrafeedback_dir: Path) -> None:
    """Write both datasets deterministically from ``spec.seed``. Training prompts may repeat
    in the SFT split (as in real corpora); no test prompt appears in any training split."""
    rng = np.random.default_rng(spec.seed)
    sft_train = sft_rows(rng, spec, spec.n_sft_train)
    pref_train = preference_rows(rng, spec, spec.n_pref_train)
    seen = {r["messages"][0]["content"] for r in sft_train} | {r["prompt"] for r in pref_train}
    sft_test = sft_rows(rng, spec, spec.n_sft_test, used=set(seen))
    pref_test = preference_rows(rng, spec, spec.n_pref_test, used=set(seen))
    _write_hub_layout(Path(smoltalk_dir), {"train": sft_train, "test": sft_test})
    _write_hub_layout(Path(ultrafeedback_dir), {"train_prefs": pref_train, "test_prefs": pref_test})


def vocabulary() -> list[str]:
    """Every word the synthetic task can produce (for the locally trained tokenizer)."""
    return [*SYMBOLS, *TASK_WORDS, "user", "assistant", "system"]
