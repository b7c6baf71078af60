"""Bad input through the real loader (``dppo.data.prepare.prepare`` on local hub-layout parquet files,
in both hub schemas) and through one Snakemake run: every bad row is skipped and counted under
its reason in the stats file, every unusable dataset stops the run with a clear DataError."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from dppo.data import prepare as data

ROOT = Path(__file__).resolve().parents[1]
BAD_UTF8_MARK = "@@BADUTF8@@"  # patched into invalid bytes of the same length after writing


def turn(user, assistant):
    return [{"content": user, "role": "user"}, {"content": assistant, "role": "assistant"}]


def items(n: int, offset: int = 0) -> str:
    return " ".join("abcdefghijklmnop"[(offset + k) % 16] for k in range(n))


# --- the corpora: (row, reason it is dropped or None when kept) -------------------------------

# 60 rows of 1-20 items: the two 3000-token outliers stay above the 95th percentile
GOOD_SFT = [({"messages": turn(f"sort : {items(1 + k % 20, k)}", items(1 + k % 20, k)), "source": "t"}, None) for k in range(60)]
LONG_ANSWER = 3000  # far past the 95th percentile: the response is truncated, the row kept

BAD_SFT = [
    ({"messages": turn("sort : a", "a")[:1], "source": "t"}, "not a single user/assistant turn"),  # missing turn
    ({"messages": turn("sort : b", "b") + turn("sort : c", "c")[:1], "source": "t"}, "not a single user/assistant turn"),
    ({"messages": [{"content": "be brief", "role": "system"}, *turn("sort : d", "d")], "source": "t"},
     "not a single user/assistant turn"),  # system prompt = extra turn
    ({"messages": [], "source": "t"}, "not a single user/assistant turn"),
    ({"messages": None, "source": "t"}, "messages is not a list"),
    ({"messages": turn("sort : e", "e")[::-1], "source": "t"}, "wrong roles"),
    ({"messages": [{"content": "sort : f", "role": None}, turn("x", "f")[1]], "source": "t"}, "wrong roles"),
    ({"messages": [{"content": "sort : g", "role": "user"}, {"content": "g", "role": "gpt"}], "source": "t"}, "wrong roles"),
    ({"messages": turn("", "h"), "source": "t"}, "user content is empty"),
    ({"messages": turn("sort : i", " \n\t"), "source": "t"}, "assistant content is empty"),
    ({"messages": turn(None, "j"), "source": "t"}, "user content is missing"),
    ({"messages": turn("sort : k", None), "source": "t"}, "assistant content is missing"),
    ({"messages": turn("sort : l\x00", "l"), "source": "t"}, "user content has control characters"),
    ({"messages": turn("sort : m", "\x1b[31mm"), "source": "t"}, "assistant content has control characters"),
    ({"messages": turn(f"sort : n {BAD_UTF8_MARK}", "n"), "source": "t"}, "invalid UTF-8"),
    (GOOD_SFT[3][0], "duplicate row"),
    ({"messages": turn("sort : " + items(LONG_ANSWER), "a"), "source": "t"}, "prompt alone reaches the cut-off"),
    ({"messages": turn("sort : o", items(LONG_ANSWER)), "source": "t"}, None),  # kept, truncated
]


def pref_row(pid, prompt, chosen, rejected):
    return {
        "prompt": prompt, "prompt_id": pid, "chosen": chosen, "rejected": rejected,
        "messages": chosen, "score_chosen": 2.0, "score_rejected": 1.0,
    }


def pair(pid, prompt, good, bad):
    return pref_row(pid, prompt, turn(prompt, good), turn(prompt, bad))


GOOD_PREF = [(pair(f"p{k}", f"sort : {items(2 + k % 20, k)}", items(2 + k % 20, k)[::-1], items(2 + k % 20, k)), None)
             for k in range(60)]
BAD_PREF = [
    (pair("b1", "sort : a b", "a b", "a b"), "chosen equals rejected"),
    (pref_row("b2", "sort : c", turn("sort : c", "c"), turn("sort : d", "d")), "chosen and rejected answer different prompts"),
    (pref_row("b3", "sort : e", turn("sort : e", "e") + turn("more", "e"), turn("sort : e", "f")), "not a single user/assistant turn"),
    (pref_row("b4", "sort : f", turn("sort : f", "f"), turn("sort : f", "g")[:1]), "not a single user/assistant turn"),
    (pref_row("b5", "sort : g", turn("sort : g", "g"), turn("sort : g", "h")[::-1]), "wrong roles"),
    (pref_row("b6", "sort : h", None, turn("sort : h", "i")), "messages is not a list"),
    (pair("b7", "sort : i", "i", ""), "assistant content is empty"),
    (pair("b8", "sort : j", "j", None), "assistant content is missing"),
    (pair("b9", "sort : k\x07", "k", "l"), "user content has control characters"),
    (pair("b10", f"sort : l {BAD_UTF8_MARK}", "l", "m"), "invalid UTF-8"),
    (GOOD_PREF[0][0], "duplicate row"),
    (pair("p3", "sort : m n", "m n", "n m"), "duplicate prompt_id"),  # p3 is a good row's id
    (pair("b11", "sort : " + items(LONG_ANSWER), "a", "b"), "prompt alone reaches the cut-off"),
    # chosen and rejected differ only past the cut-off: equal once truncated
    (pair("b12", "sort : o", items(LONG_ANSWER) + " a", items(LONG_ANSWER) + " b"), "chosen equals rejected after truncation"),
    ({**pair("b13", "sort : q r", "q r", "r q"), "score_chosen": 1.0, "score_rejected": 4.5}, "chosen scores below rejected"),
]
EXPECTED_REASONS = {"sft": BAD_SFT, "pref": BAD_PREF}
# test splits: prompts no train row has (test prompts found in train are dropped)
TEST_ROWS = {
    "sft": [{"messages": turn(f"copy : {items(1 + k, k)}", items(1 + k, k)), "source": "t"} for k in range(6)],
    "pref": [pair(f"t{k}", f"copy : {items(2 + k, k)}", items(2 + k, k), items(2 + k, k)[::-1]) for k in range(6)],
}


def write_split(path: Path, rows: list[dict]) -> None:
    """One hub-layout parquet file; BAD_UTF8_MARK becomes bytes that are not UTF-8 (Arrow
    stores them without complaint, as a broken upstream file can)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, compression="none", use_dictionary=False)
    raw = path.read_bytes()
    bad = b"\xff\xfe" + BAD_UTF8_MARK.encode()[2:]
    path.write_bytes(raw.replace(BAD_UTF8_MARK.encode(), bad))


def write_hub(root: Path, kind: str) -> Path:
    good, bad = (GOOD_SFT, BAD_SFT) if kind == "sft" else (GOOD_PREF, BAD_PREF)
    train, test = ("train", "test") if kind == "sft" else ("train_prefs", "test_prefs")
    write_split(root / "data" / f"{train}-00000-of-00001.parquet", [r for r, _ in good + bad])
    write_split(root / "data" / f"{test}-00000-of-00001.parquet", TEST_ROWS[kind])
    return root


@pytest.fixture(scope="module")
def bad_hubs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_hubs")
    return {kind: write_hub(root / kind, kind) for kind in ("sft", "pref")}


@pytest.fixture(scope="module")
def prepared(bad_hubs, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    splits = {"sft": ("train", "test"), "pref": ("train_prefs", "test_prefs")}
    stats = {
        kind: data.prepare(kind, str(bad_hubs[kind]), str(tiny_model_dir), out / kind, *splits[kind], percentile=95, overlong="truncate")
        for kind in ("sft", "pref")
    }
    stats["out"] = out
    return stats


def _reason_counts(stats) -> Counter:
    """Drop counts by reason, with the cut-off number taken out of the message."""
    return Counter({reason.split(" (")[0]: n for reason, n in stats.dropped["train"].items()})


@pytest.mark.parametrize("kind", ["sft", "pref"])
def test_every_bad_row_is_skipped_and_counted_under_its_reason(prepared, kind):
    stats = prepared[kind]
    expected = Counter(reason for _, reason in EXPECTED_REASONS[kind] if reason)
    assert _reason_counts(stats) == expected
    n_rows = len(GOOD_SFT if kind == "sft" else GOOD_PREF) + len(EXPECTED_REASONS[kind])
    assert stats.rows_in["train"] == n_rows
    assert stats.rows_kept["train"] == n_rows - sum(expected.values())
    assert stats.dropped["test"] == {}


def test_the_long_rows_are_cut_not_kept_whole(prepared):
    import pandas as pd

    stats = prepared["sft"]
    # the cut-off comes from the good rows (at most 2 x 20 items + template), not the outliers
    assert stats.cutoff < 60
    assert stats.rows_truncated["train"] == 1
    train = pd.read_parquet(prepared["out"] / "sft" / "train.parquet")
    assert max(len(p) + len(r) for p, r in zip(train["prompt_ids"], train["response_ids"])) == stats.cutoff


def test_kept_rows_are_clean_and_ids_unique(prepared):
    import pandas as pd

    pref = pd.read_parquet(prepared["out"] / "pref" / "train.parquet")
    assert pref["prompt_id"].is_unique
    assert all(len(c) + len(p) <= prepared["pref"].cutoff for c, p in zip(pref["chosen_ids"], pref["prompt_ids"]))
    assert not any(list(c) == list(r) for c, r in zip(pref["chosen_ids"], pref["rejected_ids"]))


def _write_rows(root: Path, split: str, rows: list[dict] | None) -> Path:
    path = root / "data" / f"{split}-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows) if rows else pa.table({"messages": pa.array([], type=pa.list_(pa.struct(
        [("content", pa.string()), ("role", pa.string())])))})
    pq.write_table(table, path)
    return root


def _truncate(root: Path) -> Path:
    """Cut the train file in half, as an interrupted download leaves it."""
    path = root / "data" / "train-00000-of-00001.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return root


GOOD_ROWS = [r for r, _ in GOOD_SFT]


@pytest.mark.parametrize(
    "case, make, message",
    [
        ("missing path", lambda d: d / "nowhere", "dataset path does not exist"),
        ("missing split", lambda d: _write_rows(d, "train", GOOD_ROWS), "cannot load split 'test'"),
        ("empty train split", lambda d: _write_rows(_write_rows(d, "train", None), "test", GOOD_ROWS),
         r"cannot prepare dataset .*; unreadable: data/train-00000-of-00001.parquet \(0 rows\)"),
        # datasets reads every split at once: the message must name the test file, not "train"
        ("empty test split", lambda d: _write_rows(_write_rows(d, "train", GOOD_ROWS), "test", None),
         r"cannot prepare dataset .*; unreadable: data/test-00000-of-00001.parquet \(0 rows\)"),
        ("integer content in a whole column",
         lambda d: _write_rows(_write_rows(d, "train", [{"messages": [{"content": 1, "role": "user"},
                                                                      {"content": 2, "role": "assistant"}],
                                                         "source": "t"}] * 4),
                               "test", GOOD_ROWS),
         r"data/train-00000-of-00001.parquet: column messages.content holds int64, not text"),
        ("truncated parquet file", lambda d: _truncate(_write_rows(_write_rows(d, "train", GOOD_ROWS), "test", GOOD_ROWS)),
         r"cannot load split 'train' of dataset .*: Parquet magic bytes not found .* the file is corrupted"),
        ("only bad rows", lambda d: _write_rows(_write_rows(d, "train", [r for r, _ in BAD_SFT[:5]]), "test", GOOD_ROWS),
         r"no valid row in split 'train'.*'not a single user/assistant turn': 4"),
        ("wrong schema (plain text, no conversations)",
         lambda d: _write_rows(_write_rows(d, "train", [{"text": "a b"}]), "test", [{"text": "c"}]),
         r"has no column 'messages'.*HuggingFaceTB/smoltalk schema"),
    ],
)
def test_unusable_datasets_stop_with_a_clear_message(tmp_path, tiny_model_dir, case, make, message):
    hub = make(tmp_path / "hub")
    with pytest.raises(data.DataError, match=message):
        data.prepare("sft", str(hub), str(tiny_model_dir), tmp_path / "out", "train", "test", percentile=95, overlong="truncate")
    assert not (tmp_path / "out").exists()  # nothing half-written


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def _config_with_data(workdir: Path, sft_path: str, pref_path: str) -> Path:
    config = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    config["data"]["sft"].update(path=sft_path, train_split="train", test_split="test")
    config["data"]["pref"].update(path=pref_path, train_split="train_prefs", test_split="test_prefs")
    path = workdir / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_snakemake_run_on_bad_datasets_counts_the_skips(bad_hubs, prepared, tmp_path):
    config = _config_with_data(tmp_path, str(bad_hubs["sft"]), str(bad_hubs["pref"]))
    targets = ["results/data/sft/stats.json", "results/data/pref/stats.json"]
    done = _snakemake(tmp_path, *targets, "--configfile", str(config))
    assert done.returncode == 0, done.stderr[-4000:]
    for kind in ("sft", "pref"):
        stats = json.loads((tmp_path / f"results/data/{kind}/stats.json").read_text())
        assert stats["dropped"] == prepared[kind].dropped  # the rule writes what prepare counts

    # a dataset path that does not exist: the job stops with the reason, no result appears
    missing = str(tmp_path / "no_such_dataset")
    config = _config_with_data(tmp_path, missing, str(bad_hubs["pref"]))
    before = (tmp_path / "results/data/sft/stats.json").read_text()
    done = _snakemake(tmp_path, "results/data/sft/stats.json", "--forcerun", "prepare_data", "--configfile", str(config))
    assert done.returncode != 0
    # The Snakefile checks local paths before any job (dppo.config.check_local_paths), so
    # the run stops naming the key and the previous results stay as they were.
    assert f"config key data.sft.path: local path {missing!r} does not exist" in done.stderr
    assert (tmp_path / "results/data/sft/stats.json").read_text() == before
    # The stage itself also refuses the path, for callers that skip the Snakefile check.
    with pytest.raises(data.DataError, match="dataset path does not exist"):
        data.load_split(missing, "train")
