"""Data preparation: hub-schema loading, row validation, templating, the percentile cut."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dppo.data import prepare as data
from dppo.data import synthetic


def _write_hub(root, split_rows: dict[str, list[dict]]):
    (root / "data").mkdir(parents=True)
    for split, rows in split_rows.items():
        pd.DataFrame(rows).to_parquet(root / "data" / f"{split}-00000-of-00001.parquet", index=False)
    return root


def _sft_row(user, assistant):
    return {"messages": [{"content": user, "role": "user"}, {"content": assistant, "role": "assistant"}], "source": "t"}


def _held_out(n):
    """Test rows with prompts no train row has (test prompts found in train are dropped)."""
    return [_sft_row(f"reverse : {' '.join('b' * k)}", " ".join("b" * k)) for k in range(1, n + 1)]


def test_percentile_cutoff_matches_numpy_and_rounds_up():
    lengths = [3, 7, 8, 10, 11, 15, 40, 41, 42, 100]
    assert data.percentile_cutoff(lengths, 95) == int(np.ceil(np.percentile(lengths, 95)))  # 74
    assert data.percentile_cutoff(lengths, 95) == 74
    assert data.percentile_cutoff(lengths, 100) == 100
    assert data.percentile_cutoff([5, 5, 5], 50) == 5


@pytest.mark.parametrize("bad", [0, -1, 100.5])
def test_percentile_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="max_len_percentile"):
        data.percentile_cutoff([1, 2, 3], bad)


def test_cut_response_keeps_prompt_and_fills_budget():
    assert data.cut_response([1, 2, 3], [4, 5, 6, 7], cutoff=5) == [4, 5]
    assert data.cut_response([1, 2, 3], [4], cutoff=5) == [4]
    assert data.cut_response([1, 2, 3, 4, 5], [6], cutoff=5) is None


@pytest.mark.parametrize(
    "messages, reason",
    [
        (None, "messages is not a list"),
        ([{"role": "user", "content": "copy : a"}], "not a single user/assistant turn"),
        ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}, {"role": "user", "content": "z"}],
         "not a single user/assistant turn"),
        ([{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}], "wrong roles"),
        ([{"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}], "wrong roles"),
        ([{"role": "user", "content": ""}, {"role": "assistant", "content": "y"}], "user content is empty"),
        ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "   "}], "assistant content is empty"),
        ([{"role": "user", "content": None}, {"role": "assistant", "content": "y"}], "user content is missing"),
        ([{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}], "user content is not a string"),
        ([{"role": "user", "content": "a\x00b"}, {"role": "assistant", "content": "y"}], "control characters"),
        ([{"role": "user"}, {"role": "assistant", "content": "y"}], "message without role/content"),
    ],
)
def test_single_turn_rejects_malformed_rows_with_reason(messages, reason):
    with pytest.raises(data.RowError, match=reason):
        data.single_turn(messages)


def test_preference_fields_rejects_identical_and_mismatched_pairs():
    msg = lambda u, a: [{"role": "user", "content": u}, {"role": "assistant", "content": a}]  # noqa: E731
    assert data.preference_fields({"chosen": msg("p", "a"), "rejected": msg("p", "b")}) == ("p", "a", "b")
    with pytest.raises(data.RowError, match="chosen equals rejected"):
        data.preference_fields({"chosen": msg("p", "a"), "rejected": msg("p", "a")})
    with pytest.raises(data.RowError, match="different prompts"):
        data.preference_fields({"chosen": msg("p", "a"), "rejected": msg("q", "b")})


def test_prompt_and_response_split_matches_the_full_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt_ids, response_ids = data.prompt_and_response_ids(tok, "reverse : a b c", "c b a")
    full = data.chat_ids(tok, [{"role": "user", "content": "reverse : a b c"}, {"role": "assistant", "content": "c b a"}])
    assert prompt_ids + response_ids == full
    assert tok.convert_ids_to_tokens(response_ids) == ["c", "b", "a", "<|im_end|>"]
    assert tok.convert_ids_to_tokens(prompt_ids)[-2:] == ["<|im_start|>", "assistant"]


def test_prepare_sft_counts_skips_and_truncates_at_the_percentile(tmp_path, tiny_model_dir):
    good = [_sft_row(f"copy : {' '.join('a' * n)}", " ".join("a" * n)) for n in range(1, 21)]
    bad = [
        {"messages": [{"content": "copy : a", "role": "user"}], "source": "t"},  # missing turn
        {"messages": [{"content": "a", "role": "assistant"}, {"content": "b", "role": "user"}], "source": "t"},
        _sft_row("copy : b", ""),  # empty answer
        good[0],  # duplicate
    ]
    root = _write_hub(tmp_path / "hub", {"train": good + bad, "test": _held_out(5)})
    stats = data.prepare("sft", str(root), str(tiny_model_dir), tmp_path / "out", "train", "test", percentile=90, overlong="truncate")

    # prompt = im_start user copy : + n items + im_end im_start assistant = n + 7; response = n + 1
    lengths = [2 * n + 8 for n in range(1, 21)]
    assert pd.read_parquet(tmp_path / "out" / "lengths.parquet")["length"].tolist() == lengths
    assert stats.cutoff == int(np.ceil(np.percentile(lengths, 90)))
    assert stats.rows_in["train"] == 24
    assert stats.dropped["train"] == {
        "not a single user/assistant turn": 1, "wrong roles": 1, "assistant content is empty": 1, "duplicate row": 1,
    }
    train = pd.read_parquet(tmp_path / "out" / "train.parquet")
    n_over = sum(length > stats.cutoff for length in lengths)
    assert stats.rows_truncated["train"] == n_over == 2
    assert len(train) == 20
    assert max(len(p) + len(r) for p, r in zip(train["prompt_ids"], train["response_ids"])) == stats.cutoff
    saved = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert saved["cutoff"] == stats.cutoff and saved["dropped"]["train"]["wrong roles"] == 1


def test_prepare_drop_mode_removes_overlong_rows(tmp_path, tiny_model_dir):
    good = [_sft_row(f"copy : {' '.join('a' * n)}", " ".join("a" * n)) for n in range(1, 21)]
    root = _write_hub(tmp_path / "hub", {"train": good, "test": _held_out(3)})
    stats = data.prepare("sft", str(root), str(tiny_model_dir), tmp_path / "out", "train", "test",
                         percentile=90, overlong="drop")
    assert stats.rows_kept["train"] == 18 and stats.rows_truncated["train"] == 0
    assert sum(stats.dropped["train"].values()) == 2


def test_synthetic_datasets_load_in_the_hub_schemas(tmp_path, tiny_model_dir):
    spec = synthetic.TaskSpec(n_sft_train=300, n_sft_test=20, n_pref_train=200, n_pref_test=20)
    synthetic.write_datasets(spec, tmp_path / "smoltalk", tmp_path / "uf")
    sft = data.load_split(str(tmp_path / "smoltalk"), "train")
    assert set(sft.column_names) == {"messages", "source"}
    assert [m["role"] for m in sft[0]["messages"]] == ["user", "assistant"]
    pref = data.load_split(str(tmp_path / "uf"), "train_prefs")
    assert set(pref.column_names) == {"prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected"}
    assert len(data.load_split(str(tmp_path / "uf"), "test_prefs")) == 20
    # ground truth prefers chosen in every pair
    assert all(r["score_chosen"] > r["score_rejected"] for r in pref)

    stats = data.prepare("pref", str(tmp_path / "uf"), str(tiny_model_dir), tmp_path / "pref", "train_prefs", "test_prefs", percentile=95, overlong="truncate")
    assert stats.rows_kept["train"] + sum(stats.dropped["train"].values()) == 200
    assert 0 < stats.rows_truncated["train"] <= 0.1 * 200


def test_missing_path_and_split_fail_clearly(tmp_path, tiny_model_dir):
    with pytest.raises(data.DataError, match="does not exist"):
        data.prepare("sft", str(tmp_path / "nowhere"), str(tiny_model_dir), tmp_path / "o", "train", "test", percentile=95, overlong="truncate")
    root = _write_hub(tmp_path / "hub", {"train": [_sft_row("copy : a", "a")]})
    with pytest.raises(data.DataError, match="split 'test'"):
        data.prepare("sft", str(root), str(tiny_model_dir), tmp_path / "o", "train", "test", percentile=95, overlong="truncate")
    assert not (tmp_path / "o").exists()  # nothing half-written
