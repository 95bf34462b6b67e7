"""The code summarization corpus (bench/docstring_corpus.py) and its tokenizer (bench/realtext_tokenizer.py)
on a small source tree of their own."""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from bench.docstring_corpus import SPLITS, build_corpus, first_sentence
from bench.realtext_tokenizer import build_tokenizer, check_tokenizer, read_texts

ALPHA = '''\
"""Module docstring (not a function)."""


def add(a, b):
    """Add two numbers and return their sum.

    More text that is not part of the summary.
    """
    total = a + b
    return total


def no_doc(x):
    y = x * 2
    return y


def stub(self):
    """Do something useful in a subclass."""
    pass


def abstract(self):
    """Compute the thing in subclasses."""
    raise NotImplementedError("subclass")


def terse(x):
    """Do it."""
    y = x + 1
    return y


def old(x):
    """Deprecated: use add instead."""
    y = x + 1
    return y


def described(x):
    """x (int): the value to double."""
    y = x * 2
    return y


class Greeter:
    def greet(self, name):
        """Return a greeting for :class:`~people.Person` ``name``, e.g. a **friendly** one. Then more."""
        # a comment stays in the code
        text = "Hello " + name
        return text
'''

BETA = '''\
def add(a, b):
    """Add two numbers and return their sum."""
    # the same code as alpha.add: a duplicate
    total = a + b
    return total


def plus(x, y):
    """Add two numbers and return their sum."""
    result = x + y
    return result


def sub(a, b):
    """Subtract b from a and return the difference
    Args:
        a: the minuend.
    """
    diff = a - b
    return diff
'''

SKIPPED = 'def helper(x):\n    """Help the tests with many things."""\n    y = x\n    return y\n'

KEPT = {
    ("pkg.alpha", "add", "Add two numbers and return their sum"),
    ("pkg.alpha", "Greeter.greet", "Return a greeting for Person name, e.g. a friendly one"),
    ("pkg.beta", "sub", "Subtract b from a and return the difference"),
}


def _write_tree(root: Path, num_modules: int = 30) -> None:
    """pkg/{alpha,beta} (the hand-written cases), a broken file, skipped test files and ``num_modules``
    generated modules with two documented functions each (enough text for a tokenizer)."""
    files = {
        "pkg/__init__.py": "",
        "pkg/alpha.py": ALPHA,
        "pkg/beta.py": BETA,
        "pkg/broken.py": "def f(:\n    return 1\n",
        "pkg/test_gamma.py": SKIPPED,
        "pkg/tests/helpers.py": SKIPPED,
    }
    verbs = ["Compute", "Return", "Build", "Parse", "Load", "Check"]
    nouns = ["matrix", "token", "config", "record", "buffer", "graph", "window", "vector"]
    for i in range(num_modules):
        funcs = []
        for j in range(2):
            verb, noun = verbs[(i + j) % len(verbs)], nouns[(3 * i + j) % len(nouns)]
            funcs.append(textwrap.dedent(f'''\
                def {verb.lower()}_{noun}_{i}_{j}(data, size={i + j}):
                    """{verb} the {noun} number {i} from data of the given size."""
                    values = [item * {j + 1} for item in data[:size]]
                    return {{"{noun}": values, "count": len(values) + {i}}}
                '''))
        files[f"gen/mod_{i:02d}.py"] = "\n\n".join(funcs)
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def _rows(out: Path) -> dict[str, list[dict]]:
    return {s: [json.loads(line) for line in (out / f"{s}.jsonl").read_text().splitlines()] for s in SPLITS}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path, dict]:
    tmp = tmp_path_factory.mktemp("corpus")
    _write_tree(tmp / "src")
    out = tmp / "out"
    manifest = build_corpus([tmp / "src"], out, seed=0)
    return tmp, out, manifest


def test_kept_pairs_targets_and_code(corpus):
    _, out, manifest = corpus
    rows = [r for split in _rows(out).values() for r in split]
    hand = {(r["module"], r["name"], r["docstring"]) for r in rows if r["module"].startswith("pkg")}
    assert hand == KEPT
    add = next(r for r in rows if r["name"] == "add")
    assert add["code"] == "def add(a, b):\n    total = a + b\n    return total"
    greet = next(r for r in rows if r["name"] == "Greeter.greet")
    assert greet["code"] == ('def greet(self, name):\n    # a comment stays in the code\n'
                             '    text = "Hello " + name\n    return text')
    assert sum(r["module"].startswith("gen.") for r in rows) == 60
    dropped = manifest["dropped"]
    assert dropped["trivial_body"] == 2  # stub (pass), abstract (raise NotImplementedError)
    assert dropped["no_docstring"] == 1
    assert dropped["target_short"] == 1  # "Do it"
    assert dropped["target_note"] == 1  # "Deprecated: ..."
    assert dropped["target_parameter"] == 1  # "x (int): ..."
    assert dropped["duplicate_code"] == 1  # beta.add: alpha.add with another comment and docstring
    assert dropped["duplicate_renamed"] == 1  # beta.plus: alpha.add renamed, same summary
    assert manifest["files"] == {"parsed": 33, "unparsable": 1}  # test_gamma.py and tests/ never read
    assert manifest["counts"] == manifest["counts_full"]
    assert sum(manifest["counts"].values()) == len(rows) == 63


def test_splits_are_per_module_and_deterministic(corpus):
    tmp, out, manifest = corpus
    rows = _rows(out)
    modules = {s: {r["module"] for r in split} for s, split in rows.items()}
    assert all(modules[s] for s in SPLITS), modules  # this seed puts modules in every split
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1:]:
            assert not modules[a] & modules[b]
    again = build_corpus([tmp / "src"], tmp / "again", seed=0)
    assert again == manifest
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "manifest.json"):
        assert (tmp / "again" / name).read_bytes() == (out / name).read_bytes()
    other = build_corpus([tmp / "src"], tmp / "seed1", seed=1)
    assert other["sha256"] != manifest["sha256"]


def test_caps_keep_a_deterministic_subset(corpus):
    tmp, out, manifest = corpus
    capped = build_corpus([tmp / "src"], tmp / "capped", seed=0, max_train=10, max_eval=1)
    assert capped["counts_full"] == manifest["counts_full"]
    assert capped["counts"] == {"train": 10, "validation": 1, "test": 1}
    full, kept = _rows(out), _rows(tmp / "capped")
    for split in SPLITS:
        assert all(r in full[split] for r in kept[split])
    build_corpus([tmp / "src"], tmp / "capped", seed=0, max_train=10, max_eval=1)  # replaces the directory
    assert _rows(tmp / "capped") == kept


def test_first_sentence():
    assert first_sentence("Return the value.\n\nMore.") == "Return the value"
    assert first_sentence("Return the value\nover two lines. Then more.") == "Return the value over two lines"
    assert first_sentence("Load it, i.e. read the file. Then parse.") == "Load it, i.e. read the file"
    assert first_sentence("Is it :meth:`x.y` or `z`?") == "Is it x.y or z?"
    assert first_sentence("Link to [docs](http://x). More.") == "Link to docs"
    assert first_sentence("Compute the rate\n:param x: rate") == "Compute the rate"


def test_tokenizer_t5_conventions_and_round_trip(corpus):
    from transformers import AutoTokenizer

    tmp, out, _ = corpus
    record = build_tokenizer(out, tmp / "tok", vocab_size=200, seed=0)
    tok = AutoTokenizer.from_pretrained(str(tmp / "tok"))
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.bos_token_id) == (0, 1, 2, None)
    assert len(tok) == record["vocab_size"] == 200
    target = "Compute the matrix number 3 from data of the given size"
    ids = tok(text_target=target)["input_ids"]
    assert ids[-1] == 1 and 2 not in ids
    assert tok.decode(ids, skip_special_tokens=True) == target
    code = "def f(x):\n    if x:\n        return x"
    pieces = tok.convert_ids_to_tokens(tok(code)["input_ids"])
    assert pieces.count("\u2581\u21b5") == 2  # one piece per line break, indentation dropped
    assert check_tokenizer(tmp / "tok", read_texts(out, "validation") + read_texts(out)) == 0
    again = build_tokenizer(out, tmp / "tok2", vocab_size=200, seed=0)
    assert again == record
    assert (tmp / "tok2" / "tokenizer.json").read_bytes() == (tmp / "tok" / "tokenizer.json").read_bytes()


def test_realtext_refuses_a_teacher_that_ignores_its_input(corpus):
    """bench/realtext.py checks its teacher before any recipe runs: one that writes the same text for every
    function is refused with one message (or allowed with --allow-weak-teacher), and the check is kept."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from bench import realtext

    tmp, out, _ = corpus
    tok = tmp / "tok-teacher"
    build_tokenizer(out, tok, vocab_size=200, seed=0)
    bench = tmp / "rt"
    teacher = bench / "teacher" / "finetune" / "model"
    init = realtext.init_teacher(bench, tok, smoke=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(init)
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()  # every logit 0: the same (empty) output for any input
    model.save_pretrained(teacher)
    AutoTokenizer.from_pretrained(tok).save_pretrained(teacher)
    args = realtext.parse_args(["--out", str(bench), "--threads", "1", "--val-samples", "16"])
    common = realtext.common_overrides(args, out, tok)
    with pytest.raises(SystemExit, match="has not learnt the task: only .* differ.*no better than.*--teacher-steps"):
        realtext.check_teacher(args, teacher, common, out)
    check = json.loads((bench / "teacher" / "check.json").read_text())
    assert check["distinct"] == pytest.approx(1 / check["num_examples"]) and check["num_examples"] > 1
    assert check["value"] == 0 < check["baseline"]  # a fixed text such as "Compute the" beats an empty one
    args.allow_weak_teacher = True
    assert realtext.check_teacher(args, teacher, common, out)["weak"] is True


def test_constant_baseline_is_the_best_fixed_text(corpus):
    from bench.realtext import constant_baseline
    from nash_ds.metrics import compute_metrics

    _, out, _ = corpus
    refs = [row["docstring"] for row in _rows(out)["validation"]]
    score, text = constant_baseline(out, refs, "rougeL")
    assert text and score == compute_metrics([text] * len(refs), refs, names=("rougeL",))["rougeL"] > 0
    first_words = Counter(row["docstring"].split()[0] for row in _rows(out)["train"]).most_common(1)[0][0]
    for other in (first_words, "x"):  # a candidate, and a text no target starts with
        assert compute_metrics([other] * len(refs), refs, names=("rougeL",))["rougeL"] <= score
