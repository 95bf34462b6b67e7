"""Demo files and tokenizer, tasks, local files, mixtures, truncation, collator and data errors."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import dataclasses
import json
from collections import Counter

import datasets
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from nash_ds import data as data_mod
from nash_ds.config import DataConfig, MixtureItem
from nash_ds.data import Seq2SeqCollator, build_datasets, build_text_splits
from nash_ds.demo import DEMO_DATA, DEMO_TOKENIZER


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(DEMO_TOKENIZER))


def _rows(path):
    return [json.loads(line) for line in open(path)]


def _write(path, rows):
    path = str(path)
    if path.endswith(".jsonl"):
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    elif path.endswith(".csv"):
        pd.DataFrame(rows).to_csv(path, index=False)
    elif path.endswith(".parquet"):
        pd.DataFrame(rows).to_parquet(path)
    return path


def _qa(n, tag="q"):
    return [{"question": f"{tag} {i} ?", "answer": f"answer {i}"} for i in range(n)]


# --------------------------------------------------------------------------- demo


def test_demo_files_and_tokenizer_load_offline(tok):
    sizes = {s: len(_rows(DEMO_DATA / f"{s}.jsonl")) for s in ("train", "validation", "test")}
    assert sizes == {"train": 3000, "validation": 200, "test": 200}
    assert sum((DEMO_DATA / f"{s}.jsonl").stat().st_size for s in sizes) < 1_000_000
    assert set(_rows(DEMO_DATA / "test.jsonl")[0]) == {"dialogue", "summary"}
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.bos_token_id) == (0, 1, 2, 3)
    assert [tok.pad_token, tok.eos_token, tok.unk_token, tok.bos_token] == ["<pad>", "</s>", "<unk>", "<s>"]
    assert len(tok) < 400


def test_demo_summary_round_trips_through_tokenizer(tok):
    for row in _rows(DEMO_DATA / "validation.jsonl")[:50]:
        ids = tok(row["summary"])["input_ids"]
        assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == row["summary"]
        assert tok.unk_token_id not in tok("summarize: " + row["dialogue"])["input_ids"]


def test_build_demo(tok):
    out = build_datasets(DataConfig(), tok, splits=("train", "validation", "test"))
    assert len(out["train"]) == 3000 and len(out["validation"]) == 64 and len(out["test"]) == 64
    row = out["validation"][0]
    assert set(out["train"].column_names) == {"input_ids", "attention_mask", "labels", "source", "target",
                                              "references", "task"}
    assert row["references"] == [row["target"]]
    assert row["source"].startswith("summarize: ") and row["task"] == "demo"
    assert row["labels"] == tok(row["target"])["input_ids"]
    assert row["input_ids"] == tok(row["source"])["input_ids"][:64]
    assert all(len(ids) <= 64 for ids in out["train"]["input_ids"])


def test_truncation_lengths(tok):
    cfg = DataConfig(max_source_length=8, max_target_length=5, max_eval_samples=10)
    out = build_datasets(cfg, tok, splits=("validation",))["validation"]
    for row in out:
        assert len(row["input_ids"]) == 8 and len(row["attention_mask"]) == 8 and len(row["labels"]) == 5
        assert row["input_ids"][-1] == row["labels"][-1] == tok.eos_token_id  # eos survives truncation
    assert len(build_text_splits(cfg, splits=("validation",))["validation"]) == 10


def test_max_samples_and_prefix_override(tok):
    cfg = DataConfig(max_train_samples=7, max_eval_samples=3, prefix="")
    out = build_datasets(cfg, tok)
    assert len(out["train"]) == 7 and len(out["validation"]) == 3
    first = _rows(DEMO_DATA / "train.jsonl")[0]
    assert out["train"][0]["source"] == first["dialogue"] and out["train"][0]["target"] == first["summary"]


# --------------------------------------------------------------------------- local files


@pytest.mark.parametrize("ext", ["jsonl", "csv", "parquet"])
def test_local_files_with_custom_columns(tmp_path, tok, ext):
    train = _write(tmp_path / f"train.{ext}", _qa(12))
    val = _write(tmp_path / f"val.{ext}", _qa(4, "v"))
    cfg = DataConfig(task="local", train_file=train, validation_file=val, source_column="question",
                     target_column="answer", prefix="ask: ", max_eval_samples=None)
    out = build_datasets(cfg, tok)
    assert len(out["train"]) == 12 and len(out["validation"]) == 4
    assert out["train"][3]["source"] == "ask: q 3 ?" and out["train"][3]["target"] == "answer 3"
    assert out["validation"][0]["source"] == "ask: v 0 ?"


def test_task_as_file_and_directory(tmp_path, tok):
    rows = [{"source": f"s {i}", "target": f"t {i}"} for i in range(5)]
    path = _write(tmp_path / "all.jsonl", rows)
    out = build_text_splits(DataConfig(task=path), splits=("train",))
    assert out["train"]["source"] == [r["source"] for r in rows]
    with pytest.raises(ValueError, match="no validation split.*data.validation_file"):
        build_text_splits(DataConfig(task=path))
    folder = tmp_path / "ds"
    folder.mkdir()
    _write(folder / "train.csv", rows)
    _write(folder / "validation.jsonl", rows[:2])
    out = build_text_splits(DataConfig(task=str(folder)))
    assert len(out["train"]) == 5 and out["validation"]["target"] == ["t 0", "t 1"]


def test_train_file_overrides_named_task_split(tmp_path, tok):
    rows = [{"dialogue": "A: hi\nB: bye", "summary": "A greets B."}] * 3
    cfg = DataConfig(task="demo", train_file=_write(tmp_path / "t.jsonl", rows))
    out = build_text_splits(cfg)
    assert len(out["train"]) == 3 and out["train"][0]["source"] == "summarize: A: hi\nB: bye"
    assert len(out["validation"]) == 64  # still the demo's own validation split


def test_instruction_data(tmp_path, tok):
    rows = [
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hello.", "input": "", "output": "hello"},
    ]
    path = _write(tmp_path / "inst.jsonl", rows)
    out = build_datasets(DataConfig(task="instruction", train_file=path, validation_file=path), tok)
    assert out["train"]["source"] == ["Instruction: Add the numbers.\nInput: 2 and 3", "Instruction: Say hello."]
    assert out["train"]["target"] == ["5", "hello"]
    no_input = _write(tmp_path / "inst2.jsonl", [{"instruction": "Be brief.", "output": "ok"}])
    assert build_text_splits(DataConfig(task="instruction", train_file=no_input), splits=("train",))[
        "train"]["source"] == ["Instruction: Be brief."]
    with pytest.raises(ValueError, match="data.train_file"):
        build_text_splits(DataConfig(task="instruction"))


def test_glue_from_local_file_maps_labels(tmp_path, tok):
    rows = [{"sentence": "a fine film", "label": 1, "idx": 0}, {"sentence": "dull", "label": 0, "idx": 1}]
    path = _write(tmp_path / "sst2.jsonl", rows)
    out = build_text_splits(DataConfig(task="glue/sst2", train_file=path), splits=("train",))["train"]
    assert out["source"] == ["sst2 sentence: a fine film", "sst2 sentence: dull"]
    assert out["target"] == ["positive", "negative"]
    pair = _write(tmp_path / "rte.csv", [{"sentence1": "x", "sentence2": "y", "label": 1}])
    out = build_text_splits(DataConfig(task="glue/rte", train_file=pair), splits=("train",))["train"]
    assert out[0]["source"] == "rte sentence1: x sentence2: y" and out[0]["target"] == "not_entailment"


# --------------------------------------------------------------------------- mixture


def test_mixture_weights_and_determinism(tmp_path, tok):
    a = _write(tmp_path / "a.jsonl", [{"source": f"a {i}", "target": "x"} for i in range(200)])
    b = _write(tmp_path / "b.jsonl", [{"source": f"b {i}", "target": "y"} for i in range(50)])
    mix = [MixtureItem(task=a, weight=3.0), MixtureItem(task=b, weight=1.0, prefix="B: ")]
    cfg = DataConfig(mixture=mix, max_train_samples=400)
    train = build_datasets(cfg, tok, splits=("train",), seed=1)["train"]
    counts = Counter(train["task"])
    assert counts == {a: 300, b: 100}  # b (50 rows) is repeated to reach its share
    assert all(s.startswith("B: b ") for s, t in zip(train["source"], train["task"], strict=True) if t == b)
    assert len({s for s, t in zip(train["source"], train["task"], strict=True) if t == a}) == 200  # no repeats
    assert Counter(train["task"][:100])[b] > 10  # shuffled, not task by task
    again = build_datasets(cfg, tok, splits=("train",), seed=1)["train"]["source"]
    other = build_datasets(cfg, tok, splits=("train",), seed=2)["train"]["source"]
    assert train["source"] == again and train["source"] != other
    # default size: the summed train sizes, still split 3:1
    assert Counter(build_text_splits(DataConfig(mixture=mix), splits=("train",))["train"]["task"]) == {a: 188, b: 62}


def test_mixture_eval_is_concatenation(tmp_path, tok):
    folder = tmp_path / "qa"
    folder.mkdir()
    for split in ("train", "validation"):
        _write(folder / f"{split}.jsonl", [{"question": f"{split} {i}", "answer": "x"} for i in range(20)])
    cfg = DataConfig(mixture=[MixtureItem(task="demo", weight=1.0), MixtureItem(task=str(folder), prefix="Q: ")],
                     source_column="question", target_column="answer", max_eval_samples=5)
    out = build_text_splits(cfg, splits=("train", "validation"))
    assert len(out["train"]) == 3020 and len(out["validation"]) == 10
    assert Counter(out["validation"]["task"]) == {"demo": 5, str(folder): 5}
    assert out["validation"]["source"][5] == "Q: validation 0"
    own = _write(tmp_path / "own.jsonl", [{"question": "z", "answer": "y"}])
    assert build_text_splits(dataclasses.replace(cfg, validation_file=own), splits=("validation",))[
        "validation"]["source"] == ["z"]
    with pytest.raises(ValueError, match=r"mixture\[0\].weight"):
        build_text_splits(DataConfig(mixture=[MixtureItem(task="demo", weight=0.0)]))


# --------------------------------------------------------------------------- collator


def test_collator_pads_labels_with_ignore_index(tok):
    rows = build_datasets(DataConfig(max_eval_samples=4), tok, splits=("validation",))["validation"]
    batch = Seq2SeqCollator(tok)([rows[i] for i in range(4)])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert all(v.dtype == torch.long for v in batch.values())
    for i in range(4):
        n_in, n_lab = len(rows[i]["input_ids"]), len(rows[i]["labels"])
        assert batch["input_ids"][i, :n_in].tolist() == rows[i]["input_ids"]
        assert (batch["input_ids"][i, n_in:] == tok.pad_token_id).all()
        assert (batch["attention_mask"][i, n_in:] == 0).all()
        assert batch["labels"][i, :n_lab].tolist() == rows[i]["labels"]
        assert (batch["labels"][i, n_lab:] == -100).all()
    assert (batch["labels"] == -100).any()
    assert Seq2SeqCollator(tok, pad_to_multiple_of=8)([rows[0]])["input_ids"].shape[1] % 8 == 0


# --------------------------------------------------------------------------- errors


def test_missing_column_names_column_file_and_columns(tmp_path):
    path = _write(tmp_path / "x.jsonl", _qa(3))
    with pytest.raises(ValueError) as err:
        build_text_splits(DataConfig(task=path, source_column="question", target_column="summary"), splits=("train",))
    msg = str(err.value)
    assert "'summary'" in msg and path in msg and "question" in msg and "answer" in msg


def test_empty_split_is_an_error(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("source,target\n")
    train = _write(tmp_path / "t.csv", [{"source": "a", "target": "b"}])
    with pytest.raises(ValueError, match="validation split.*empty"):
        build_text_splits(DataConfig(task="local", train_file=train, validation_file=str(empty)))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="train split.*empty.jsonl.*empty"):
        build_text_splits(DataConfig(task=str(tmp_path / "empty.jsonl")), splits=("train",))


def test_unknown_task_and_missing_file():
    with pytest.raises(ValueError, match="unknown task 'nope'.*glue/sst2.*samsum"):
        build_text_splits(DataConfig(task="nope"))
    with pytest.raises(ValueError, match="glue/mnli"):
        build_text_splits(DataConfig(task="glue/stsbx"))
    with pytest.raises(ValueError, match="does not exist"):
        build_text_splits(DataConfig(task="missing/file.jsonl"))


def test_hub_tasks_go_through_load_dataset(monkeypatch):
    calls = []

    def fake_load(name, config=None, **kw):
        calls.append((name, config, kw.get("split")))
        return datasets.Dataset.from_list([{"premise": "p", "hypothesis": "h", "label": 2, "article": "a",
                                            "highlights": "h"}])

    monkeypatch.setattr(data_mod.datasets, "load_dataset", fake_load)
    out = build_text_splits(DataConfig(task="glue/mnli"))
    assert calls == [("nyu-mll/glue", "mnli", "train"), ("nyu-mll/glue", "mnli", "validation_matched")]
    assert out["train"][0]["source"] == "mnli hypothesis: h premise: p" and out["train"][0]["target"] == "contradiction"
    calls.clear()
    build_text_splits(DataConfig(task="cnn_dailymail"), splits=("test",))
    build_text_splits(DataConfig(task="cnn_dailymail", dataset_name="my/cnn", dataset_config="x"), splits=("test",))
    assert calls == [("abisee/cnn_dailymail", "3.0.0", "test"), ("my/cnn", "x", "test")]


def test_hub_failure_offline_suggests_local_files():
    with pytest.raises(ValueError, match="task samsum.*knkarthick/samsum.*data.train_file"):
        build_text_splits(DataConfig(task="samsum"), splits=("train",))


def test_list_valued_target_keeps_every_reference(tmp_path, tok):
    """Validation rows with several references: the first is the label, all of them are kept for scoring."""
    (tmp_path / "train.jsonl").write_text('{"source": "a", "target": "x"}\n')
    (tmp_path / "validation.jsonl").write_text('{"source": "a", "target": ["x", "y z"]}\n'
                                                '{"source": "b", "target": ["w"]}\n')
    out = build_datasets(DataConfig(task=str(tmp_path)), tok, splits=("train", "validation"))
    val = out["validation"]
    assert val["target"] == ["x", "w"] and val["references"] == [["x", "y z"], ["w"]]
    assert val[0]["labels"] == tok(text_target="x")["input_ids"]
    assert out["train"]["references"] == [["x"]]
    (tmp_path / "validation.jsonl").write_text('{"source": "a", "target": []}\n')
    with pytest.raises(ValueError, match="empty list in column 'target'"):
        build_datasets(DataConfig(task=str(tmp_path)), tok, splits=("validation",))
