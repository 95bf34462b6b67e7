"""A sentencepiece unigram tokenizer for the code summarization corpus, saved as a Hugging Face tokenizer.

    python bench/realtext_tokenizer.py --corpus /work/realtext/corpus --out /work/realtext/tokenizer
    python bench/realtext_tokenizer.py --corpus /tmp/c --out /tmp/tok --vocab-size 2000 --seed 1

Trains on the ``code`` and ``docstring`` texts of ``train.jsonl`` (in file order, all of them, one
thread, fixed seed: the same corpus gives the same model bytes) with T5's conventions: ``<pad>`` 0,
``</s>`` 1, ``<unk>`` 2, no bos, ``</s>`` appended to every encoded text. The directory holds
``tokenizer.json`` / ``tokenizer_config.json`` (a plain ``TokenizersBackend``, which
``AutoTokenizer.from_pretrained`` loads offline as it does the demo's tokenizer; ``T5Tokenizer`` in
transformers 5 would rebuild its own whitespace-splitting pre-tokenizer), the sentencepiece model
itself (``sentencepiece.model``, for reference) and ``training.json`` (settings and input hashes).

Whitespace (``normalizer``): sentencepiece's default rules turn every whitespace run, newlines
included, into one space. For Python the line breaks still carry meaning (statement boundaries, the
signature line, ``return`` at the end), while indentation mostly repeats what ``:`` and the line
breaks say and would cost a token per line. So every line break, with the indentation around it,
becomes one ``↵`` word, and every other whitespace run one space. ``▁↵`` is declared a user-defined
piece: unigram pruning otherwise keeps only ``▁`` and ``↵`` (both frequent on their own), and every
line would cost two tokens instead of one. The same Hugging Face normalizer prepares the
sentencepiece training text (identity rules on the sentencepiece side), so the two agree by
construction; ``check_tokenizer`` verifies they encode alike. Docstring targets have no line breaks,
so they decode to the original text.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")
"""Ids 0, 1, 2: T5's pad, eos and unk."""
NEWLINE = "\u21b5"  # ↵
"""The word a line break (with the indentation around it) becomes."""
ASCII_CHARS = "".join(chr(c) for c in range(33, 127))
"""Always in the vocabulary: at character coverage 0.9995 code's rarer ASCII (9 ; & ? @ J ^ ~ $)
would fall below the cut and become ``<unk>``; the rest of the cut takes rare non-ASCII only."""
SPM_FILE = "sentencepiece.model"


def build_normalizer():
    """NFKC, each line break (with surrounding whitespace) -> `` ↵ ``, other whitespace runs -> one space."""
    from tokenizers import Regex, normalizers

    return normalizers.Sequence([
        normalizers.NFKC(),
        normalizers.Replace(Regex(r"\s*\n\s*"), f" {NEWLINE} "),
        normalizers.Replace(Regex(r"\s+"), " "),
        normalizers.Strip(),
    ])


def read_texts(corpus_dir: Path, split: str = "train") -> list[str]:
    """The ``code`` and ``docstring`` texts of a corpus split, in file order."""
    texts: list[str] = []
    with open(corpus_dir / f"{split}.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts += (row["code"], row["docstring"])
    return texts


def train_sentencepiece(texts: Iterable[str], *, vocab_size: int, seed: int = 0) -> bytes:
    """A serialized sentencepiece unigram model of ``texts`` (normalized first) with T5's special ids."""
    import sentencepiece as spm

    norm = build_normalizer()
    sentences = [s for s in (norm.normalize_str(t) for t in texts) if s]
    if not sentences:
        raise ValueError("no text to train the tokenizer on")
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, model_type="unigram", vocab_size=vocab_size,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        user_defined_symbols=[f"\u2581{NEWLINE}"], character_coverage=0.9995, required_chars=ASCII_CHARS,
        input_sentence_size=0, shuffle_input_sentence=False, max_sentence_length=1 << 16, num_threads=1, minloglevel=2,
    )
    return model.getvalue()


def to_hf_tokenizer(spm_model: bytes, *, model_max_length: int = 512):
    """The sentencepiece model as a ``PreTrainedTokenizerFast``: same pieces and scores, our normalizer,
    Metaspace words, ``</s>`` appended."""
    import sentencepiece as spm
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    sp = spm.SentencePieceProcessor(model_proto=spm_model)
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    assert [p for p, _ in vocab[:3]] == list(SPECIAL_TOKENS), vocab[:3]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = build_normalizer()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=model_max_length)
    assert [fast.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    return fast


def check_tokenizer(tok_dir: Path, texts: Sequence[str]) -> int:
    """Load ``tok_dir`` as ``AutoTokenizer`` and check the T5 conventions; returns how many of ``texts``
    the Hugging Face tokenizer segments worse than sentencepiece (0 expected). Two segmentations with
    the same total piece score (``F FF`` vs ``FF F``) are both optimal: Viterbi ties break differently."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    ids = (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.bos_token_id)
    if ids != (0, 1, 2, None):
        raise ValueError(f"{tok_dir}: pad/eos/unk/bos ids are {ids}, expected (0, 1, 2, None)")
    if tok("def f(x):\n    return x")["input_ids"][-1] != 1:
        raise ValueError(f"{tok_dir}: encoding does not end with </s>")
    sp = spm.SentencePieceProcessor(model_file=str(tok_dir / SPM_FILE))
    norm = build_normalizer()
    hf = tok(list(texts), add_special_tokens=False)["input_ids"]
    worse = 0
    for ids, text in zip(hf, texts, strict=True):
        ref = sp.encode(norm.normalize_str(text))
        if ids != ref and abs(sum(map(sp.get_score, ids)) - sum(map(sp.get_score, ref))) > 1e-3:
            worse += 1
    return worse


def build_tokenizer(corpus_dir: Path, out_dir: Path, *, vocab_size: int = 8000, seed: int = 0) -> dict:
    """Train on ``corpus_dir/train.jsonl`` and save the tokenizer directory ``out_dir``; returns its
    ``training.json`` record."""
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed {len(SPECIAL_TOKENS)}, got {vocab_size}")
    texts = read_texts(corpus_dir)
    model = train_sentencepiece(texts, vocab_size=vocab_size, seed=seed)
    tok = to_hf_tokenizer(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(str(out_dir))
    (out_dir / SPM_FILE).write_bytes(model)
    record = {
        "vocab_size": len(tok),
        "seed": seed,
        "model": "sentencepiece unigram, character_coverage 0.9995 + printable ASCII, no byte fallback",
        "normalizer": f"NFKC; line break with surrounding whitespace -> ' {NEWLINE} '; whitespace runs -> ' '",
        "special_ids": dict(zip(SPECIAL_TOKENS, range(3), strict=True)),
        "train_texts": len(texts),
        "train_jsonl_sha256": hashlib.sha256((corpus_dir / "train.jsonl").read_bytes()).hexdigest(),
        "sentencepiece_sha256": hashlib.sha256(model).hexdigest(),
    }
    (out_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, required=True, help="corpus directory (bench/docstring_corpus.py --out)")
    p.add_argument("--out", type=Path, required=True, help="tokenizer directory to write")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    record = build_tokenizer(args.corpus, args.out, vocab_size=args.vocab_size, seed=args.seed)
    seconds = time.perf_counter() - t0
    check = read_texts(args.corpus, "validation")
    mismatches = check_tokenizer(args.out, check)
    print(f"vocab {record['vocab_size']} from {record['train_texts']} texts in {seconds:.0f} s; "
          f"sentencepiece sha256 {record['sentencepiece_sha256'][:16]}; Hugging Face vs sentencepiece: "
          f"{mismatches} of {len(check)} validation texts segmented worse; wrote {args.out}")
    return 0 if mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
