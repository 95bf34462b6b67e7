"""Code summarization corpus built offline: a Python function's code -> its docstring's first sentence.

The task of CodeSearchNet / CodeT5, built from the source of the installed packages (by default the
running interpreter's standard library and its site-packages), so a real-text quality benchmark
needs no network:

    python bench/docstring_corpus.py --out /work/realtext/corpus
    python bench/docstring_corpus.py --out /tmp/c --roots path/to/src --seed 1 --max-train 50000

Per function or method with a docstring: ``code`` is its source from the ``def`` line (decorators
left out, as CodeSearchNet does) with the docstring lines removed, dedented; ``docstring`` is the
first sentence of the docstring with reST/markdown markup stripped and no trailing period. Trivial
pairs and duplicates are dropped (see ``Filters``); splits are drawn **per file** from a hash of its
path relative to its root and the seed, so no file's functions land in two splits. Writes
``train.jsonl`` / ``validation.jsonl`` / ``test.jsonl`` (fields ``code``, ``docstring``, ``module``,
``name``) and ``manifest.json`` (counts, drop reasons, file hashes, roots with versions, filters)
into a temporary directory renamed into place. Nothing in the output depends on the time or the
absolute paths, so the same machine image always gives the same bytes.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import keyword
import os
import platform
import re
import shutil
import sys
import sysconfig
import tempfile
import textwrap
import time
import tokenize
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "validation", "test")
SKIP_DIRS = frozenset({
    "test", "tests", "testing", "idle_test",  # test suites and their helpers (torch/testing/_internal)
    "site-packages",  # the base interpreter's packages nested in the stdlib directory
    "_vendor", "vendor", "_distutils",  # vendored copies (pip, setuptools, pkg_resources)
    "__pycache__",
})
"""Directory names never entered (also any ``*-info`` and hidden directory)."""
ABBREVIATIONS = frozenset({"e.g", "i.e", "etc", "vs", "cf", "resp", "approx", "incl", "esp", "viz"})
"""Words whose period does not end a sentence."""
BAD_TARGET_STARTS = ("deprecated", "todo", "fixme", "xxx", "see ", "see:", ":", "..", ">>>", "args", "arguments",
                     "parameters", "params", "returns:", "example", "note:", "warning:", "@")
"""Lower-cased target prefixes that mark notes, parameter lists or markup rather than a summary."""


@dataclass(frozen=True)
class Filters:
    """What makes a (code, docstring) pair worth keeping."""

    min_code_lines: int = 3
    """Fewest non-blank code lines, signature included (CodeSearchNet dropped shorter functions)."""
    max_code_chars: int = 1000
    """Longest code kept, in characters of the dedented code (~256 tokens of the 8k tokenizer)."""
    min_target_words: int = 3
    """Fewest words in the target."""
    max_target_words: int = 30
    """Most words in the target."""


@dataclass(frozen=True)
class Pair:
    """One kept example and where it came from."""

    code: str
    """The function's source without its docstring, dedented."""
    docstring: str
    """The cleaned first sentence of its docstring."""
    module: str
    """Dotted module name (``json.decoder``)."""
    name: str
    """Qualified name inside the module (``JSONDecoder.decode``)."""
    relpath: str
    """Path of the file relative to its root: the split key."""
    root: str
    """Description of the root (``stdlib``, ``site-packages`` or the directory name)."""

    def row(self) -> dict[str, str]:
        """The fields written to the jsonl files."""
        return {"code": self.code, "docstring": self.docstring, "module": self.module, "name": self.name}


# --------------------------------------------------------------------------- files


def default_roots() -> list[Path]:
    """The running interpreter's standard library and site-packages directories."""
    paths = sysconfig.get_paths()
    return [Path(paths["stdlib"]), Path(paths["purelib"])]


def describe_root(root: Path) -> dict:
    """A path-free description of ``root``: stdlib with the Python version, site-packages with its
    distributions' versions, else the directory name."""
    paths = sysconfig.get_paths()
    if root.resolve() == Path(paths["stdlib"]).resolve():
        return {"name": "stdlib", "python": platform.python_version()}
    if root.resolve() == Path(paths["purelib"]).resolve():
        dists = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions(path=[str(root)])}
        return {"name": "site-packages", "packages": dict(sorted(dists.items(), key=lambda kv: kv[0].lower()))}
    return {"name": root.name}


def iter_source_files(root: Path) -> Iterator[Path]:
    """``.py`` files under ``root`` in sorted order, without test suites, test files and vendored copies."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames
                             if d not in SKIP_DIRS and not d.endswith("-info") and not d.startswith("."))
        for name in sorted(filenames):
            if (name.endswith(".py") and not name.startswith("test_") and not name.endswith("_test.py")
                    and name != "conftest.py"):
                yield Path(dirpath, name)


def module_name(relpath: str) -> str:
    """``json/decoder.py`` -> ``json.decoder``; ``json/__init__.py`` -> ``json``."""
    parts = relpath[: -len(".py")].split("/")
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def split_of(relpath: str, seed: int, fractions: Sequence[float] = (0.9, 0.05, 0.05)) -> str:
    """The split of a whole file: a uniform draw from sha256(seed, path relative to its root)."""
    digest = hashlib.sha256(f"{seed}:{relpath}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    bound = 0.0
    for split, fraction in zip(SPLITS, fractions, strict=True):
        bound += fraction
        if u < bound:
            return split
    return SPLITS[-1]


# --------------------------------------------------------------------------- docstrings


_ROLE = re.compile(r"(?::[\w.+-]+)+:`([^`]*)`")
_LITERAL = re.compile(r"``([^`]*)``")
_INTERPRETED = re.compile(r"`([^`]*)`_{0,2}")
_STRONG = re.compile(r"\*\*([^*]+)\*\*")
_EMPHASIS = re.compile(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])")
_MD_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
_SIGNATURE = re.compile(r"^[\w.]+\(.*\)\s*(->.*)?$")
# a line that opens a section (Args:, Returns:, a field list, a doctest, an underline) ends the summary
_SECTION = re.compile(r"^\s*(?:[A-Z][\w ]{0,24}:\s*$|:\w[^:`]*:(?:\s|$)|>>>|\.\. |[-=~^]{3,}\s*$)")
# "name (type, optional): ..." or "name: ...": a parameter description, not a summary
_PARAMETER = re.compile(r"^(?:[\w*]+\s*\([^)]*\)\s*:|[a-z_][\w.]*\s*:\s)")


def _role_text(match: re.Match) -> str:
    """:class:`X` -> X, :func:`~a.b.f` -> f, :ref:`text <target>` -> text."""
    inner = match.group(1).lstrip("!")
    if inner.endswith(">") and "<" in inner:
        return inner[: inner.rindex("<")].strip()
    return inner[1:].rsplit(".", 1)[-1] if inner.startswith("~") else inner


def strip_markup(text: str) -> str:
    """Plain text of reST / markdown inline markup: roles, literals, emphasis, links."""
    text = _ROLE.sub(_role_text, text)
    text = _LITERAL.sub(r"\1", text)
    text = _INTERPRETED.sub(r"\1", text)
    text = _STRONG.sub(r"\1", text)
    text = _EMPHASIS.sub(r"\1", text)
    return _MD_LINK.sub(r"\1", text)


def first_sentence(docstring: str) -> str:
    """The cleaned summary of a docstring: its first paragraph, markup stripped, whitespace collapsed,
    cut at the first sentence end (not after e.g. / i.e. / etc.), without the final period."""
    lines: list[str] = []
    for line in docstring.strip().split("\n"):
        if not line.strip() or _SECTION.match(line):
            break
        lines.append(line)
    text = " ".join(strip_markup(" ".join(lines)).split())
    for match in _SENTENCE_END.finditer(text):
        word = text[: match.start()].rsplit(" ", 1)[-1].lstrip("(").lower()
        if match.group() == "." and word in ABBREVIATIONS:
            continue
        text = text[: match.start() + (match.group() != ".")]  # keep ! and ?
        break
    return text.rstrip(" .")


def target_problem(target: str, name: str, filters: Filters) -> str | None:
    """Why ``target`` is no summary of function ``name`` (a drop reason), or None if it is one."""
    words = target.split()
    if len(words) < filters.min_target_words:
        return "target_short"
    if len(words) > filters.max_target_words:
        return "target_long"
    if not target.isascii():
        return "target_non_ascii"
    if target.lower().startswith(BAD_TARGET_STARTS):
        return "target_note"
    if _PARAMETER.match(target):
        return "target_parameter"
    if target.endswith((":", ",", ";")):
        return "target_intro"  # "Return one of:" introduces a list the cut sentence lacks
    bare = name.rsplit(".", 1)[-1]
    if _SIGNATURE.match(target) or target.startswith(f"{bare}(") or target.lower() == bare.lower():
        return "target_signature"
    return None


# --------------------------------------------------------------------------- code


def _is_trivial(body: list[ast.stmt]) -> bool:
    """Only ``pass``, ``...`` / a bare string, or ``raise NotImplementedError``: nothing to summarise."""
    def trivial(stmt: ast.stmt) -> bool:
        if isinstance(stmt, ast.Pass):
            return True
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            return True
        if isinstance(stmt, ast.Raise) and stmt.exc is not None:
            exc = stmt.exc.func if isinstance(stmt.exc, ast.Call) else stmt.exc
            return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"
        return False

    return all(trivial(s) for s in body)


def code_without_docstring(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """The function's lines (``def`` to its end) without the docstring's lines and the blank lines
    after it, dedented; None if the docstring shares a line with code."""
    doc = node.body[0]
    first, last = lines[doc.lineno - 1].encode(), lines[doc.end_lineno - 1].encode()  # offsets are utf-8 bytes
    if first[: doc.col_offset].strip() or last[doc.end_col_offset:].strip()[:1] not in (b"", b"#"):
        return None
    head = lines[node.lineno - 1: doc.lineno - 1]
    tail = lines[doc.end_lineno: node.end_lineno]
    while tail and not tail[0].strip():
        tail.pop(0)
    return textwrap.dedent("\n".join(head + tail)).strip("\n")


def code_keys(code: str) -> tuple[str, str]:
    """Duplicate keys of ``code``: sha256 of its Python tokens (comments and layout ignored), and of
    its *shape*, the same tokens with identifiers renamed in order of appearance (v0, v1, ...), which
    is equal for copies that only rename things (transformers' "Copied from ... with Llama->Qwen")."""
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.ENDMARKER}
    try:
        tokens = [(t.type, t.string or tokenize.tok_name[t.type])
                  for t in tokenize.generate_tokens(io.StringIO(code).readline) if t.type not in skip]
    except (tokenize.TokenError, SyntaxError):  # dedent left a continuation line alone; rare
        tokens = [(tokenize.OP, word) for word in code.split()]
    names: dict[str, str] = {}
    shape = [names.setdefault(s, f"v{len(names)}") if kind == tokenize.NAME and not keyword.iskeyword(s) else s
             for kind, s in tokens]
    return (hashlib.sha256("\x00".join(s for _, s in tokens).encode()).hexdigest(),
            hashlib.sha256("\x00".join(shape).encode()).hexdigest())


def _functions(tree: ast.Module) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name, node) of every function and method, nested ones included, in source order."""
    stack: list[tuple[str, ast.AST]] = [("", tree)]
    out: list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]] = []
    while stack:
        prefix, parent = stack.pop()
        for child in ast.iter_child_nodes(parent):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    out.append((name, child))
                stack.append((f"{name}.", child))
            elif not isinstance(child, ast.expr):
                stack.append((prefix, child))  # functions inside if / try / with blocks
    return sorted(out, key=lambda item: (item[1].lineno, item[1].col_offset))


def extract_pairs(source: str, filters: Filters, drops: Counter) -> Iterator[tuple[str, str, str]]:
    """(name, code, target) of every function in ``source`` that passes ``filters``; ``drops``
    counts the others by reason. Raises SyntaxError / ValueError when ``source`` does not parse."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid escape sequences and the like in old code
        tree = ast.parse(source)
    lines = source.split("\n")  # ast counts lines by \n only (decode_source made newlines \n)
    for name, node in _functions(tree):
        docstring = ast.get_docstring(node, clean=True)
        if not docstring:
            drops["no_docstring"] += 1
            continue
        body = node.body[1:]
        if not body or _is_trivial(body):
            drops["trivial_body"] += 1
            continue
        code = code_without_docstring(lines, node)
        if code is None:
            drops["docstring_inline"] += 1
            continue
        if sum(1 for line in code.split("\n") if line.strip()) < filters.min_code_lines:
            drops["code_short"] += 1
            continue
        if len(code) > filters.max_code_chars:
            drops["code_long"] += 1
            continue
        target = first_sentence(docstring)
        problem = target_problem(target, name, filters)
        if problem:
            drops[problem] += 1
            continue
        yield name, code, target


# --------------------------------------------------------------------------- corpus


def collect_pairs(roots: Sequence[Path], filters: Filters, drops: Counter, files: Counter) -> list[Pair]:
    """Every kept pair under ``roots`` in walk order; of duplicates (the same code, or the same target
    and the same code up to renaming) the first one is kept."""
    seen: set[str] = set()
    pairs: list[Pair] = []
    for root in roots:
        label = describe_root(root)["name"]
        for path in iter_source_files(root):
            relpath = path.relative_to(root).as_posix()
            try:
                source = importlib.util.decode_source(path.read_bytes())
            except (SyntaxError, UnicodeDecodeError, LookupError):  # bad coding cookie or bytes
                files["undecodable"] += 1
                continue
            try:
                found = list(extract_pairs(source, filters, drops))
            except (SyntaxError, ValueError, RecursionError, MemoryError):  # py2 files, null bytes, deep nesting
                files["unparsable"] += 1
                continue
            files["parsed"] += 1
            for name, code, target in found:
                exact, shape = code_keys(code)
                renamed = hashlib.sha256(f"{target}\x00{shape}".encode()).hexdigest()
                if exact in seen or renamed in seen:
                    drops["duplicate_code" if exact in seen else "duplicate_renamed"] += 1
                    continue
                seen.update((exact, renamed))
                pairs.append(Pair(code, target, module_name(relpath), name, relpath, label))
    return pairs


def _cap(rows: list[Pair], limit: int | None, seed: int) -> list[Pair]:
    """At most ``limit`` rows: those with the lowest sha256(seed, code), in their original order."""
    if limit is None or len(rows) <= limit:
        return rows
    rank = sorted(range(len(rows)), key=lambda i: hashlib.sha256(f"{seed}:{rows[i].code}".encode()).digest())
    return [rows[i] for i in sorted(rank[:limit])]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_atomically(out_dir: Path, files: dict[str, str]) -> None:
    """Write ``files`` (name -> text) into a temporary sibling of ``out_dir``, then rename it into place
    (a previous ``out_dir`` is moved aside first and removed after), so readers never see half a corpus."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the corpus is not
    try:
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        old = None
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_corpus(
    roots: Sequence[Path] | None, out_dir: Path, *, seed: int = 0, filters: Filters = Filters(),
    max_train: int | None = None, max_eval: int | None = None,
) -> dict:
    """Build the corpus from ``roots`` (default: stdlib and site-packages) into ``out_dir``; returns
    the manifest. ``max_train`` / ``max_eval`` cap the train / each evaluation split (lowest hash first)."""
    roots = [Path(r) for r in (roots or default_roots())]
    for key, value in (("max_train", max_train), ("max_eval", max_eval)):
        if value is not None and value < 1:
            raise ValueError(f"{key} must be >= 1 or None (no cap), got {value}")
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing:
        raise ValueError(f"root(s) {missing} are not directories")
    drops: Counter = Counter()
    files: Counter = Counter()
    pairs = collect_pairs(roots, filters, drops, files)
    full: dict[str, list[Pair]] = {s: [] for s in SPLITS}
    for pair in pairs:
        full[split_of(pair.relpath, seed)].append(pair)
    kept = {s: _cap(rows, max_train if s == "train" else max_eval, seed) for s, rows in full.items()}
    texts = {f"{s}.jsonl": "".join(json.dumps(p.row()) + "\n" for p in rows) for s, rows in kept.items()}
    train_targets = {p.docstring for p in kept["train"]}
    packages = Counter(f"{p.root}:{p.module.split('.')[0]}" for p in pairs)
    by_root = Counter(p.root for p in pairs)
    manifest = {
        "task": "code summarization: function code without its docstring -> first docstring sentence",
        "fields": ["code", "docstring", "module", "name"],
        "seed": seed,
        "roots": [describe_root(r) for r in roots],
        "filters": dataclasses.asdict(filters),
        "skip_dirs": sorted(SKIP_DIRS),
        "split": "per file: sha256('<seed>:<path relative to root>') -> train 0.90 / validation 0.05 / test 0.05",
        "caps": {"max_train": max_train, "max_eval": max_eval, "order": "lowest sha256('<seed>:<code>') first"},
        "files": dict(sorted(files.items())),
        "dropped": dict(sorted(drops.items())),
        "counts_full": {s: len(rows) for s, rows in full.items()},
        "counts": {s: len(rows) for s, rows in kept.items()},
        "modules": {s: len({p.relpath for p in rows}) for s, rows in kept.items()},
        "eval_targets_in_train": {s: sum(p.docstring in train_targets for p in kept[s]) for s in SPLITS[1:]},
        "pairs_by_root": dict(sorted(by_root.items())),
        "top_packages": dict(packages.most_common(20)),
        "sha256": {name: hashlib.sha256(text.encode()).hexdigest() for name, text in texts.items()},
    }
    texts["manifest.json"] = json.dumps(manifest, indent=2) + "\n"
    _write_atomically(out_dir, texts)
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output directory (replaced atomically)")
    p.add_argument("--roots", type=Path, nargs="+", default=None,
                   help="source roots (default: this interpreter's stdlib and site-packages)")
    p.add_argument("--seed", type=int, default=0, help="split and cap hash seed")
    p.add_argument("--max-train", type=int, default=None, help="cap the train split (lowest hash first)")
    p.add_argument("--max-eval", type=int, default=None, help="cap the validation and test splits")
    p.add_argument("--max-code-chars", type=int, default=Filters.max_code_chars, help="longest code kept")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    manifest = build_corpus(args.roots, args.out, seed=args.seed, max_train=args.max_train, max_eval=args.max_eval,
                            filters=Filters(max_code_chars=args.max_code_chars))
    seconds = time.perf_counter() - t0
    print(f"files: {manifest['files']}")
    print(f"dropped: {manifest['dropped']}")
    print(f"pairs by root: {manifest['pairs_by_root']}; top packages: {manifest['top_packages']}")
    print(f"pairs (full): {manifest['counts_full']}")
    print(f"pairs (written): {manifest['counts']} in {manifest['modules']} modules")
    print(f"eval targets also in train: {manifest['eval_targets_in_train']}")
    print(f"wrote {args.out} in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
