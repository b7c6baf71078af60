"""Data preparation refuses what is not what it looks like: a tokenizer's own code without
``model.trust_remote_code``, pairs that are no preference (ties, answers equal in token ids),
rows equal in token ids, test prompts also in the train split, an unsafe chat template and a
shard with other columns. Real ``datasets`` loading of local hub-layout files, real tokenizers."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dppo.data import prepare as data

TIE = "chosen and rejected score the same (tie)"


def turn(user, assistant):
    return [{"content": user, "role": "user"}, {"content": assistant, "role": "assistant"}]


def sft_row(user, assistant):
    return {"messages": turn(user, assistant), "source": "t"}


def pref_row(pid, prompt, chosen, rejected, score_chosen=2.0, score_rejected=1.0):
    return {"prompt": prompt, "prompt_id": pid, "chosen": turn(prompt, chosen), "rejected": turn(prompt, rejected),
            "messages": turn(prompt, chosen), "score_chosen": score_chosen, "score_rejected": score_rejected}


def words(n: int, offset: int = 0) -> str:
    return " ".join("abcdefghijklmnop"[(offset + k) % 16] for k in range(n))


GOOD_SFT = [sft_row(f"sort : {words(1 + k % 12, k)}", words(1 + k % 12, k)) for k in range(30)]
GOOD_PREF = [pref_row(f"p{k}", f"sort : {words(2 + k % 12, k)}", words(2 + k % 12, k)[::-1], words(2 + k % 12, k))
             for k in range(30)]
# test splits: other prompts than the train rows (test prompts found in train are dropped)
TEST_SFT = [sft_row(f"copy : {words(1 + k, k)}", words(1 + k, k)) for k in range(3)]
TEST_PREF = [pref_row(f"c{k}", f"copy : {words(2 + k, k)}", words(2 + k, k), words(2 + k, k)[::-1]) for k in range(3)]


def write_hub(root: Path, splits: dict[str, list[dict]]) -> Path:
    for split, rows in splits.items():
        path = root / "data" / f"{split}-00000-of-00001.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path)
    return root


def prepare_sft(hub, tok, out):
    return data.prepare("sft", str(hub), str(tok), out, "train", "test", percentile=95, overlong="truncate")


def prepare_pref(hub, tok, out):
    return data.prepare("pref", str(hub), str(tok), out, "train_prefs", "test_prefs", percentile=95, overlong="truncate")


# --- 1. the tokenizer's own code ----------------------------------------------------------------


def _tokenizer_with_code(tiny_model_dir: Path, root: Path, marker: Path) -> Path:
    """The tiny tokenizer whose tokenizer_config.json maps AutoTokenizer to a class in a .py file
    that writes ``marker`` when run. No config.json: with a known model type transformers would
    use its own class and never ask."""
    tok = root / "tok_with_code"
    tok.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tiny_model_dir / name).exists():
            shutil.copy(tiny_model_dir / name, tok / name)
    config = json.loads((tok / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="CustomTokenizer", auto_map={"AutoTokenizer": [None, "custom_tok.CustomTokenizer"]})
    (tok / "tokenizer_config.json").write_text(json.dumps(config))
    (tok / "custom_tok.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('custom code ran')\n"
        "from transformers import PreTrainedTokenizerFast\n\n\n"
        "class CustomTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )
    return tok


@pytest.mark.parametrize("how", ["config default", "trust_remote_code=False"])
def test_tokenizer_code_never_runs_without_trust_remote_code(tmp_path, tiny_model_dir, how):
    marker = tmp_path / "RAN"
    tok = _tokenizer_with_code(Path(tiny_model_dir), tmp_path, marker)
    hub = write_hub(tmp_path / "hub", {"train": GOOD_SFT, "test": TEST_SFT})
    extra = ", trust_remote_code=False" if how == "trust_remote_code=False" else ""
    code = (
        "from dppo.data.prepare import prepare_dataset\n"
        "from dppo.settings import DatasetSettings, DataSettings\n"
        f"prepare_dataset('sft', DatasetSettings(path={str(hub)!r}), DataSettings(), {str(tok)!r}, "
        f"{str(tmp_path / 'out')!r}{extra})\n"
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    # "y" on stdin: what `echo y | snakemake ...` gave transformers' [y/N] question
    done = subprocess.run([sys.executable, "-c", code], input="y\n", capture_output=True, text=True, timeout=300, env=env)
    output = done.stdout + done.stderr
    assert not marker.exists(), "the tokenizer's own code ran"
    assert "[y/N]" not in output  # nothing asked on stdin
    assert done.returncode != 0
    assert f"the tokenizer of {str(tok)!r} needs its own code to load" in done.stderr
    assert "model.trust_remote_code is false" in done.stderr
    assert not (tmp_path / "out").exists()


# --- 2. pairs that are no preference ------------------------------------------------------------


def test_ties_are_dropped_and_counted(tmp_path, tiny_model_dir):
    ties = [pref_row(f"t{k}", f"sort : {words(3, k)} q", words(3, k), words(3, k)[::-1], 3.0, 3.0) for k in range(4)]
    test_tie = pref_row("tc", "copy : q r s", "q r s", "s r q", 3.0, 3.0)
    hub = write_hub(tmp_path / "hub", {"train_prefs": GOOD_PREF + ties, "test_prefs": TEST_PREF + [test_tie]})
    stats = prepare_pref(hub, tiny_model_dir, tmp_path / "out")
    assert stats.dropped["train"] == {TIE: 4} and stats.dropped["test"] == {TIE: 1}
    assert stats.rows_kept == {"train": 30, "test": 3}
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["dropped"]["train"] == {TIE: 4}


def test_a_split_of_ties_only_is_refused(tmp_path, tiny_model_dir):
    ties = [{**row, "score_rejected": row["score_chosen"]} for row in GOOD_PREF]
    hub = write_hub(tmp_path / "hub", {"train_prefs": ties, "test_prefs": TEST_PREF})
    with pytest.raises(data.DataError, match=rf"no valid pair with a strict preference in split 'train_prefs' of "
                                             rf"'{re.escape(str(hub))}': .*'{re.escape(TIE)}': 30"):
        prepare_pref(hub, tiny_model_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_split_with_no_preference_left_after_the_cut_is_refused(tmp_path, tiny_model_dir):
    # every test pair differs only past the train split's cut-off: equal once cut
    long_pairs = [pref_row(f"l{k}", f"sort : {words(3, k)} r", words(80) + " a", words(80) + " b") for k in range(3)]
    hub = write_hub(tmp_path / "hub", {"train_prefs": GOOD_PREF, "test_prefs": long_pairs})
    with pytest.raises(data.DataError, match=r"no row of split 'test_prefs' of .* is left after the cut at \d+ tokens: "
                                             r".*'chosen equals rejected after truncation': 3"):
        prepare_pref(hub, tiny_model_dir, tmp_path / "out")


def test_chosen_equal_to_rejected_in_token_ids_is_dropped(tmp_path, tiny_model_dir):
    chosen = "a b caf\u00e9"
    rejected = unicodedata.normalize("NFD", chosen)
    assert rejected != chosen
    same = pref_row("nfd", "sort : c a b", chosen, rejected)
    hub = write_hub(tmp_path / "hub", {"train_prefs": GOOD_PREF + [same], "test_prefs": TEST_PREF})
    stats = prepare_pref(hub, tiny_model_dir, tmp_path / "out")
    assert stats.dropped["train"] == {"chosen equals rejected": 1}
    assert stats.rows_kept["train"] == 30


@pytest.mark.parametrize("kind", ["sft", "pref"])
def test_rows_equal_in_token_ids_are_duplicates(tmp_path, tiny_model_dir, kind):
    nfc = "sort : b a caf\u00e9"
    if kind == "sft":
        twins = [sft_row(nfc, "a b"), sft_row(unicodedata.normalize("NFD", nfc), "a b")]
        hub = write_hub(tmp_path / "hub", {"train": GOOD_SFT + twins, "test": TEST_SFT})
        stats = prepare_sft(hub, tiny_model_dir, tmp_path / "out")
    else:
        twins = [pref_row("nfc", nfc, "a b", "b a"), pref_row("nfd", unicodedata.normalize("NFD", nfc), "a b", "b a")]
        hub = write_hub(tmp_path / "hub", {"train_prefs": GOOD_PREF + twins, "test_prefs": TEST_PREF})
        stats = prepare_pref(hub, tiny_model_dir, tmp_path / "out")
    assert stats.dropped["train"] == {"duplicate row": 1}
    assert stats.rows_kept["train"] == 31


def test_test_prompts_in_the_train_split_are_counted_and_dropped(tmp_path, tiny_model_dir, caplog):
    train_prompt = GOOD_SFT[5]["messages"][0]["content"]
    overlapping = [
        GOOD_SFT[0],  # the same row
        sft_row(GOOD_SFT[1]["messages"][0]["content"], "z z"),  # the same prompt, another answer
        sft_row(unicodedata.normalize("NFD", train_prompt + " caf\u00e9"), "a"),  # equal in token ids only
    ]
    train = [*GOOD_SFT, sft_row(train_prompt + " caf\u00e9", "a")]  # NFC twin of the last one
    held_out = [sft_row("copy : p o n", "p o n"), sft_row("copy : o", "o")]
    hub = write_hub(tmp_path / "hub", {"train": train, "test": overlapping + held_out})
    with caplog.at_level(logging.WARNING, logger="dppo.data.prepare"):
        stats = prepare_sft(hub, tiny_model_dir, tmp_path / "out")
    assert stats.dropped["test"] == {"prompt also in the train split": 3}
    assert stats.rows_kept["test"] == 2
    saved = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert saved["dropped"]["test"] == {"prompt also in the train split": 3}
    assert "3 rows of split 'test'" in caplog.text and "also in split 'train'" in caplog.text


# --- 3. errors that name what is wrong ----------------------------------------------------------


def test_an_unsafe_chat_template_names_the_tokenizer(tmp_path, tiny_model_dir):
    tok = tmp_path / "tok_unsafe"
    shutil.copytree(tiny_model_dir, tok)
    payload = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    (tok / "chat_template.jinja").write_text(payload)
    config = json.loads((tok / "tokenizer_config.json").read_text())
    if "chat_template" in config:
        config["chat_template"] = payload
        (tok / "tokenizer_config.json").write_text(json.dumps(config))
    hub = write_hub(tmp_path / "hub", {"train": GOOD_SFT, "test": TEST_SFT})
    with pytest.raises(data.DataError, match=rf"the chat template of '{re.escape(str(tok))}' cannot be used: SecurityError: .*unsafe"):
        prepare_sft(hub, tok, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_shard_with_other_columns_is_named(tmp_path, tiny_model_dir):
    hub = tmp_path / "hub"
    write_hub(hub, {"test": TEST_SFT})
    pq.write_table(pa.Table.from_pylist(GOOD_SFT[:15]), hub / "data" / "train-00000-of-00002.parquet")
    renamed = [{"messages": r["messages"], "origin": r["source"]} for r in GOOD_SFT[15:]]
    pq.write_table(pa.Table.from_pylist(renamed), hub / "data" / "train-00001-of-00002.parquet")
    with pytest.raises(data.DataError) as err:
        prepare_sft(hub, tiny_model_dir, tmp_path / "out")
    message = str(err.value)
    assert ("other columns: data/train-00001-of-00002.parquet (against data/test-00000-of-00001.parquet: "
            "extra column 'origin', no column 'source')") in message
    assert "child 0" not in message  # no schema dump
