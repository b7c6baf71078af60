"""Data preparation: load with ``datasets``, keep valid single-turn rows, chat-template,
tokenize, and cut at a percentile of the TRAIN split's token lengths.

One code path serves a hub id (``HuggingFaceTB/smoltalk``) and a local directory in the hub
layout (the embedded default), so the loader tested here is the one the paper run uses.
Malformed rows, and pairs that are no preference, are skipped and counted by reason; nothing
malformed crashes the run.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dppo.runtime.io import atomic_output_dir, load_tokenizer
from dppo.settings import DatasetSettings, DataSettings

log = logging.getLogger(__name__)

REPORTED_PERCENTILES = (50, 90, 95, 99)
REQUIRED_COLUMNS = {"sft": ("messages",), "pref": ("chosen", "rejected")}
SCHEMA_NAMES = {"sft": "HuggingFaceTB/smoltalk", "pref": "HuggingFaceH4/ultrafeedback_binarized"}


class DataError(ValueError):
    """A dataset cannot be used at all (missing path, empty split, no valid row)."""


# ---------------------------------------------------------------------------------------------
# Loading


def load_split(path: str, split: str, name: str | None = None):
    """``datasets.load_dataset`` for a hub id or a local directory, with a clear message when
    the path or split does not exist."""
    import datasets

    local = Path(path)
    looks_local = path.startswith((".", "/")) or local.exists()
    if looks_local and not local.exists():
        raise DataError(f"dataset path does not exist: {path}")
    if local.is_dir():
        check_text_columns(local)
    try:
        return datasets.load_dataset(path, name=name, split=split)
    except ValueError as err:  # unknown split name
        raise DataError(f"cannot load split {split!r} of dataset {path!r}: {err}") from err
    except FileNotFoundError as err:
        raise DataError(f"dataset not found: {path!r} ({err})") from err
    except datasets.exceptions.DatasetGenerationError as err:  # unreadable files, e.g. empty or truncated parquet
        cause = err.__cause__ or err
        # `datasets` prepares every split at once, so the file at fault may belong to another split.
        unreadable = unreadable_files(local) if local.is_dir() else []
        odd = odd_schema_files(local) if local.is_dir() else []
        culprits = ([f"unreadable: {', '.join(unreadable)}"] if unreadable else []) + \
            ([f"other columns: {', '.join(odd)}"] if odd else [])
        where = f"; {'; '.join(culprits)}" if culprits else " (datasets reads every split at once)"
        # a CastError's text is both whole schemas; the shard named above says what differs
        reason = "columns differ" if odd and type(cause).__name__ == "CastError" else f"{type(cause).__name__}: {cause}"
        raise DataError(f"cannot prepare dataset {path!r}{where}: {reason}") from err


MESSAGE_COLUMNS = ("messages", "chosen", "rejected")


def check_text_columns(root: Path) -> None:
    """Every local parquet file's conversations must hold text: ``datasets`` casts every file to
    the first one's types, so a file of integer messages would otherwise be read as the strings
    "1", "2"... and trained on. A wrong column stops the run, naming the file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in sorted(root.rglob("*.parquet")):
        try:
            schema = pq.read_schema(path)
        except Exception:  # noqa: BLE001  (unreadable files are reported by the loader)
            continue
        for column in MESSAGE_COLUMNS:
            if column not in schema.names:
                continue
            kind = schema.field(column).type
            item = kind.value_type if pa.types.is_list(kind) or pa.types.is_large_list(kind) else None
            content = item.field("content").type if item is not None and pa.types.is_struct(item) and \
                item.get_field_index("content") >= 0 else None
            if content is not None and not (pa.types.is_string(content) or pa.types.is_large_string(content)
                                            or pa.types.is_null(content)):
                raise DataError(f"{path.relative_to(root)}: column {column}.content holds {content}, not text")


def unreadable_files(root: Path) -> list[str]:
    """The parquet files under ``root`` that hold no rows or cannot be read, with the reason."""
    import pyarrow.parquet as pq

    bad = []
    for path in sorted(root.rglob("*.parquet")):
        try:
            rows = pq.read_metadata(path).num_rows
        except Exception as err:  # noqa: BLE001  (any reader error makes the file unusable)
            bad.append(f"{path.relative_to(root)} ({type(err).__name__}: {err})")
            continue
        if rows == 0:
            bad.append(f"{path.relative_to(root)} (0 rows)")
    return bad


def odd_schema_files(root: Path) -> list[str]:
    """The parquet files under ``root`` whose columns differ from those of most files (``datasets``
    casts every file, of every split, to one schema), each with how it differs."""
    import pyarrow.parquet as pq

    schemas = {}
    for path in sorted(root.rglob("*.parquet")):
        try:
            meta = pq.read_metadata(path)
        except Exception:  # noqa: BLE001  (unreadable files are reported by unreadable_files)
            continue
        if meta.num_rows:  # empty files are reported by unreadable_files
            schemas[path.relative_to(root)] = meta.schema.to_arrow_schema().remove_metadata()
    groups: dict = {}
    for name, schema in schemas.items():
        groups.setdefault(schema, []).append(name)
    if len(groups) < 2:
        return []
    common, ref_files = max(groups.items(), key=lambda g: len(g[1]))  # ties: the first file's schema
    odd = []
    for schema, names in groups.items():
        if schema == common:
            continue
        diff = [f"extra column {n!r}" for n in schema.names if n not in common.names]
        diff += [f"no column {n!r}" for n in common.names if n not in schema.names]
        diff += [f"column {n!r} is {schema.field(n).type}, not {common.field(n).type}"
                 for n in schema.names if n in common.names and schema.field(n).type != common.field(n).type]
        odd += [f"{name} (against {ref_files[0]}: {', '.join(diff)})" for name in names]
    return odd


# ---------------------------------------------------------------------------------------------
# Row validation: each returns the clean fields, or raises RowError with a countable reason.


class RowError(ValueError):
    """A row to skip; ``str(err)`` is the reason it is counted under."""


def _text(value, what: str) -> str:
    if value is None:
        raise RowError(f"{what} is missing")
    if not isinstance(value, str):
        raise RowError(f"{what} is not a string")
    if not value.strip():
        raise RowError(f"{what} is empty")
    if any(ord(c) < 32 and c not in "\n\t\r" for c in value):
        raise RowError(f"{what} has control characters")
    return value


def single_turn(messages) -> tuple[str, str]:
    """(user, assistant) of a one-turn conversation; RowError for anything else.

    A leading system message is not part of the poster's "one-turn conversation between user
    and assistant", so such rows are skipped too.
    """
    if not isinstance(messages, (list, tuple)):
        raise RowError("messages is not a list")
    if len(messages) != 2:
        raise RowError("not a single user/assistant turn")
    roles = []
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise RowError("message without role/content")
        roles.append(m["role"])
    if roles != ["user", "assistant"]:
        raise RowError("wrong roles")
    return _text(messages[0]["content"], "user content"), _text(messages[1]["content"], "assistant content")


def sft_fields(row: dict) -> tuple[str, str]:
    return single_turn(row.get("messages"))


def preference_fields(row: dict) -> tuple[str, str, str]:
    """(prompt, chosen response, rejected response) of an UltraFeedback-binarized row."""
    prompt_c, chosen = single_turn(row.get("chosen"))
    prompt_r, rejected = single_turn(row.get("rejected"))
    if prompt_c != prompt_r:
        raise RowError("chosen and rejected answer different prompts")
    if chosen == rejected:
        raise RowError("chosen equals rejected")
    scores = row.get("score_chosen"), row.get("score_rejected")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) and v == v for v in scores):
        if scores[0] < scores[1]:
            raise RowError("chosen scores below rejected")  # a swapped pair would teach the opposite
        if scores[0] == scores[1]:
            raise RowError("chosen and rejected score the same (tie)")  # no preference to learn
    return prompt_c, chosen, rejected


# ---------------------------------------------------------------------------------------------
# Tokenization


def chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except TemplateError as err:  # e.g. a SecurityError from the sandbox, which names nothing
        raise DataError(f"the chat template of {tokenizer.name_or_path!r} cannot be used: "
                        f"{type(err).__name__}: {err}") from err
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prompt_and_response_ids(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """Token ids of the templated prompt (ending with the assistant header) and of the
    assistant's turn, split where the full conversation's ids extend the prompt's ids.

    Everything after the header (the answer, its end-of-turn token and any trailing template
    text) is the response, the only part that carries loss."""
    user = [{"role": "user", "content": prompt}]
    prompt_ids = chat_ids(tokenizer, user, add_generation_prompt=True)
    full_ids = chat_ids(tokenizer, [*user, {"role": "assistant", "content": response}])
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise RowError("chat template does not extend the prompt (tokenization boundary)")
    response_ids = full_ids[len(prompt_ids) :]
    if not response_ids:
        raise RowError("response tokenizes to nothing")
    return prompt_ids, response_ids


# ---------------------------------------------------------------------------------------------
# The percentile cut


def percentile_cutoff(lengths, percentile: float) -> int:
    """The cut-off in tokens: the ``percentile``-th percentile of ``lengths``, rounded up."""
    if not 0 < percentile <= 100:
        raise ValueError(f"max_len_percentile must be in (0, 100], got {percentile}")
    if len(lengths) == 0:
        raise DataError("no valid training row to compute a length percentile from")
    return int(np.ceil(np.percentile(np.asarray(lengths), percentile)))


def cut_response(prompt_ids: list[int], response_ids: list[int], cutoff: int) -> list[int] | None:
    """The response truncated so prompt + response fits in ``cutoff`` tokens; None when the
    prompt alone leaves no room for a single response token."""
    room = cutoff - len(prompt_ids)
    return response_ids[:room] if room > 0 else None


@dataclass
class PrepStats:
    percentile: float
    cutoff: int = 0
    percentiles: dict = field(default_factory=dict)
    rows_in: dict = field(default_factory=dict)
    rows_kept: dict = field(default_factory=dict)
    rows_truncated: dict = field(default_factory=dict)
    dropped: dict = field(default_factory=dict)  # split -> {reason: count}

    def to_json(self) -> dict:
        return {
            "percentile": self.percentile,
            "cutoff": self.cutoff,
            "percentiles": self.percentiles,
            "rows_in": self.rows_in,
            "rows_kept": self.rows_kept,
            "rows_truncated": self.rows_truncated,
            "dropped": self.dropped,
        }


UNDECODABLE = object()  # a row whose strings are not valid UTF-8
_DECODE_BATCH = 1000


def _decoded_rows(rows):
    """The rows of a ``datasets.Dataset`` (or any sequence of dicts) as Python dicts, with
    ``UNDECODABLE`` in place of a row holding invalid UTF-8: Arrow stores such bytes without
    complaint and only raises when the row is read, which would otherwise end the whole run.
    Batched reads keep this fast; only a batch that fails is re-read row by row."""
    if not hasattr(rows, "select"):  # a plain list of dicts has nothing to decode
        yield from rows
        return
    for start in range(0, len(rows), _DECODE_BATCH):
        stop = min(start + _DECODE_BATCH, len(rows))
        try:
            batch = rows[start:stop]
        except UnicodeDecodeError:
            for i in range(start, stop):
                try:
                    yield rows[i]
                except UnicodeDecodeError:
                    yield UNDECODABLE
            continue
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns)):
            yield dict(zip(columns, values))


def _tokenize_split(rows, kind: str, tokenizer) -> tuple[list[dict], Counter]:
    """Validate and tokenize every row; returns the clean rows and the skip reasons."""
    kept, dropped = [], Counter()
    seen, seen_ids = set(), set()
    for i, row in enumerate(_decoded_rows(rows)):
        try:
            if row is UNDECODABLE:
                raise RowError("invalid UTF-8")
            if kind == "sft":
                prompt, response = sft_fields(row)
                prompt_ids, response_ids = prompt_and_response_ids(tokenizer, prompt, response)
                out = {"prompt": prompt, "response": response, "prompt_ids": prompt_ids, "response_ids": response_ids}
                length = len(prompt_ids) + len(response_ids)
                key = (tuple(prompt_ids), tuple(response_ids))
            else:
                prompt, chosen, rejected = preference_fields(row)
                prompt_ids, chosen_ids = prompt_and_response_ids(tokenizer, prompt, chosen)
                _, rejected_ids = prompt_and_response_ids(tokenizer, prompt, rejected)
                if chosen_ids == rejected_ids:  # different strings (e.g. NFC / NFD), one answer to the model
                    raise RowError("chosen equals rejected")
                out = {
                    "prompt": prompt,
                    "chosen": chosen,
                    "rejected": rejected,
                    "prompt_ids": prompt_ids,
                    "chosen_ids": chosen_ids,
                    "rejected_ids": rejected_ids,
                }
                length = len(prompt_ids) + max(len(chosen_ids), len(rejected_ids))
                key = (tuple(prompt_ids), tuple(chosen_ids), tuple(rejected_ids))
        except RowError as err:
            dropped[str(err)] += 1
            continue
        if key in seen:  # on token ids: strings that differ only in what the model never sees are one row
            dropped["duplicate row"] += 1
            continue
        seen.add(key)
        out["prompt_id"] = str(row.get("prompt_id") or f"{i}")
        # prompt_id joins y_gen, reference log-probs and scores: a repeated one would pair the
        # wrong rows (win rates refuse repeated ids), so only its first row is kept.
        if out["prompt_id"] in seen_ids:
            dropped["duplicate prompt_id"] += 1
            continue
        seen_ids.add(out["prompt_id"])
        out["length"] = length
        kept.append(out)
    return kept, dropped


def _apply_cut(rows: list[dict], kind: str, cutoff: int, overlong: str) -> tuple[list[dict], int, Counter]:
    response_keys = ("response_ids",) if kind == "sft" else ("chosen_ids", "rejected_ids")
    kept, truncated, dropped = [], 0, Counter()
    for row in rows:
        if row["length"] <= cutoff:
            kept.append(row)
            continue
        if overlong == "drop":
            dropped[f"longer than the cut-off ({cutoff} tokens)"] += 1
            continue
        cut = [cut_response(row["prompt_ids"], row[k], cutoff) for k in response_keys]
        if any(c is None for c in cut):
            dropped[f"prompt alone reaches the cut-off ({cutoff} tokens)"] += 1
            continue
        row = {**row, **dict(zip(response_keys, cut))}
        if kind == "pref" and row["chosen_ids"] == row["rejected_ids"]:
            dropped["chosen equals rejected after truncation"] += 1
            continue
        kept.append(row)
        truncated += 1
    return kept, truncated, dropped


def prepare_dataset(kind: str, dataset: DatasetSettings, data: DataSettings, tokenizer_dir: str,
                    out_dir: str | Path, trust_remote_code: bool = False) -> PrepStats:
    """:func:`prepare` with a config's dataset and data settings (the rule's entry point);
    ``trust_remote_code`` is the config's ``model.trust_remote_code``."""
    return prepare(
        kind, dataset.path, tokenizer_dir, out_dir, dataset.train_split, dataset.test_split,
        percentile=data.max_len_percentile, overlong=data.overlong, dataset_name=dataset.name,
        max_train_rows=dataset.max_train_rows, max_test_rows=dataset.max_test_rows,
        trust_remote_code=trust_remote_code,
    )


def open_tokenizer(tokenizer_dir: str, trust_remote_code: bool = False):
    """The tokenizer of ``tokenizer_dir`` with a chat template; its own code (``auto_map``) runs
    only when ``trust_remote_code`` is true, and is refused (never asked about) otherwise."""
    try:
        tokenizer = load_tokenizer(tokenizer_dir, trust_remote_code)
    except ValueError as err:
        if trust_remote_code or "trust_remote_code" not in str(err):
            raise
        raise DataError(f"the tokenizer of {tokenizer_dir!r} needs its own code to load, and config key "
                        "model.trust_remote_code is false: not run (set it to true only for code you trust)") from err
    if not tokenizer.chat_template:
        raise DataError(f"the tokenizer of {tokenizer_dir!r} has no chat template")
    return tokenizer


TEST_PROMPT_IN_TRAIN = "prompt also in the train split"


def drop_train_prompts(test_rows: list[dict], train_rows: list[dict]) -> tuple[list[dict], int]:
    """The test rows whose templated prompt (token ids) no train row has, and how many were not.

    Test prompts are the held-out prompts every model answers: one trained on (with its
    chosen answer) would favour the models that fit the train set hardest."""
    train_prompts = {tuple(r["prompt_ids"]) for r in train_rows}
    kept = [r for r in test_rows if tuple(r["prompt_ids"]) not in train_prompts]
    return kept, len(test_rows) - len(kept)


def prepare(
    kind: str,
    dataset_path: str,
    tokenizer_dir: str,
    out_dir: str | Path,
    train_split: str,
    test_split: str,
    *,
    percentile: float,
    overlong: str,
    dataset_name: str | None = None,
    max_train_rows: int | None = None,
    max_test_rows: int | None = None,
    trust_remote_code: bool = False,
) -> PrepStats:
    """Prepare ``kind`` ("sft" or "pref") data into ``out_dir``: ``train.parquet``,
    ``test.parquet``, ``lengths.parquet`` (train lengths before the cut) and ``stats.json``.

    The cut-off is the ``percentile`` of the TRAIN split's token lengths (prompt + longest
    response); the test split is cut at the same number. ``overlong="truncate"`` (the
    poster's "context token length is truncated to N") shortens the response end;
    ``"drop"`` removes the row instead. Test rows whose prompt is in the train split are
    dropped (counted in ``stats.json``), so the test prompts stay held out.
    """
    if kind not in ("sft", "pref"):
        raise ValueError(f"kind must be 'sft' or 'pref', got {kind!r}")
    if overlong not in ("truncate", "drop"):
        raise ValueError(f"overlong must be 'truncate' or 'drop', got {overlong!r}")
    tokenizer = open_tokenizer(tokenizer_dir, trust_remote_code)
    stats = PrepStats(percentile=percentile)
    splits = {}
    for split_key, split, limit in (("train", train_split, max_train_rows), ("test", test_split, max_test_rows)):
        raw = load_split(dataset_path, split, dataset_name)
        if limit is not None:
            raw = raw.select(range(min(limit, len(raw))))
        if len(raw) == 0:
            raise DataError(f"split {split!r} of {dataset_path!r} is empty")
        missing = [c for c in REQUIRED_COLUMNS[kind] if c not in raw.column_names]
        if missing:
            raise DataError(
                f"split {split!r} of {dataset_path!r} has no column {', '.join(map(repr, missing))} (it has "
                f"{raw.column_names}); data.{kind} must be in the {SCHEMA_NAMES[kind]} schema"
            )
        rows, dropped = _tokenize_split(raw, kind, tokenizer)
        if split_key == "test":
            rows, overlap = drop_train_prompts(rows, splits["train"])
            if overlap:
                dropped[TEST_PROMPT_IN_TRAIN] = overlap
                log.warning("%d rows of split %r of %s have a prompt that is also in split %r; dropped from %r",
                            overlap, split, dataset_path, train_split, split)
        if not rows:
            what = "row" if kind == "sft" else "pair with a strict preference"
            raise DataError(f"no valid {what} in split {split!r} of {dataset_path!r}: {dict(dropped)}")
        stats.rows_in[split_key] = len(raw)
        stats.dropped[split_key] = dict(dropped)
        splits[split_key] = rows

    train_lengths = [r["length"] for r in splits["train"]]
    stats.cutoff = percentile_cutoff(train_lengths, percentile)
    stats.percentiles = {str(q): float(np.percentile(train_lengths, q)) for q in REPORTED_PERCENTILES}
    out_dir = Path(out_dir)
    with atomic_output_dir(out_dir) as tmp:
        pd.DataFrame({"length": train_lengths}).to_parquet(tmp / "lengths.parquet", index=False)
        for split_key, rows in splits.items():
            kept, truncated, dropped = _apply_cut(rows, kind, stats.cutoff, overlong)
            for reason, count in dropped.items():
                stats.dropped[split_key][reason] = stats.dropped[split_key].get(reason, 0) + count
            if not kept:
                split = train_split if split_key == "train" else test_split
                raise DataError(f"no row of split {split!r} of {dataset_path!r} is left after the cut at "
                                f"{stats.cutoff} tokens: {stats.dropped[split_key]}")
            stats.rows_kept[split_key] = len(kept)
            stats.rows_truncated[split_key] = truncated
            pd.DataFrame(kept).drop(columns="length").to_parquet(tmp / f"{split_key}.parquet", index=False)
        (tmp / "stats.json").write_text(json.dumps(stats.to_json(), indent=2))
    return stats
