"""Tasks, local files, instruction data, weighted mixtures, tokenisation and the collator.

Every split becomes rows of raw ``source`` / ``target`` text (the task prefix already on the
source), ``references`` (every reference text: ``[target]``, or all of them where the target column holds a
list, whose first is ``target``; metrics score the closest), a ``task`` name, and their tokenisation ``input_ids`` / ``attention_mask`` /
``labels``, truncated to ``data.max_source_length`` / ``data.max_target_length``.

Where data comes from, per split: ``data.{train,validation,test}_file`` if set, else the task's
own files (the bundled demo, or a local file or directory given as ``data.task``), else the hub
(``datasets.load_dataset(name, config)``, which needs network or a populated HF cache).

Mixtures (``data.mixture``): training draws ``max_train_samples`` examples (default: the summed
sizes of the tasks' train splits) from the tasks in proportion to their weights, without
replacement while a task lasts, repeating it when its share is larger; the draw is fixed by
``seed``. An evaluation split is ``data.validation_file`` / ``data.test_file`` when set, else
the concatenation of every task's split, each capped at ``max_eval_samples`` (the ``task``
column tells them apart). In a mixture each task keeps its own columns and prefix
(``MixtureItem.prefix`` overrides it); ``data.source_column`` / ``data.target_column`` apply to
local files only; ``data.task``, ``data.dataset_*`` and ``data.train_file`` are not used.

Nothing is cached under the user's home for local files: they are read into memory (through a
throw-away cache directory) unless ``cache_dir`` is given; transforms never write cache files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import string
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch

from nash_ds.config import DataConfig, MixtureItem
from nash_ds.demo import DEMO_DATA
from nash_ds.errors import UserError

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
INSTRUCTION_TEMPLATE = "Instruction: {instruction}"
INSTRUCTION_INPUT_TEMPLATE = "Instruction: {instruction}\nInput: {input}"


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's data lives and how a row becomes (source, target) text."""

    name: str
    """Task name as given in the config (or the local path)."""
    kind: str = "columns"
    """columns (source/target columns), glue (template + label names) or instruction."""
    hub_name: str | None = None
    """Hub data set for splits without a local file."""
    hub_config: str | None = None
    """Hub configuration name."""
    hub_splits: dict[str, str] = field(default_factory=dict)
    """Our split name -> the hub's (mnli: validation -> validation_matched)."""
    files: dict[str, str] = field(default_factory=dict)
    """Split -> local file; takes precedence over the hub."""
    source_column: str = "source"
    """Source text column (kind columns)."""
    target_column: str = "target"
    """Target column: text, or integer labels mapped through label_names (glue)."""
    template: str = ""
    """str.format template over columns that builds the source (glue)."""
    label_names: tuple[str, ...] = ()
    """Target words of integer labels (glue)."""
    prefix: str = ""
    """Text prepended to every source."""

    def required_columns(self) -> list[str]:
        if self.kind == "glue":
            fields = [f for _, f, _, _ in string.Formatter().parse(self.template) if f]
            return [*fields, self.target_column]
        if self.kind == "instruction":
            return ["instruction", self.target_column]  # "input" is optional
        return [self.source_column, self.target_column]


def _summarization(name: str, hub: str, config: str | None, source: str, target: str) -> TaskSpec:
    return TaskSpec(name=name, hub_name=hub, hub_config=config, source_column=source, target_column=target,
                    prefix="summarize: ")


# GLUE as text-to-text in T5's format: "<task> <field>: ... <field>: ..." -> label word.
GLUE_TASKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sst2": ("sentence: {sentence}", ("negative", "positive")),
    "cola": ("sentence: {sentence}", ("unacceptable", "acceptable")),
    "mrpc": ("sentence1: {sentence1} sentence2: {sentence2}", ("not_equivalent", "equivalent")),
    "qqp": ("question1: {question1} question2: {question2}", ("not_duplicate", "duplicate")),
    "qnli": ("question: {question} sentence: {sentence}", ("entailment", "not_entailment")),
    "rte": ("sentence1: {sentence1} sentence2: {sentence2}", ("entailment", "not_entailment")),
    "wnli": ("sentence1: {sentence1} sentence2: {sentence2}", ("not_entailment", "entailment")),
    "mnli": ("hypothesis: {hypothesis} premise: {premise}", ("entailment", "neutral", "contradiction")),
}

NAMED_TASKS: dict[str, TaskSpec] = {
    "demo": TaskSpec(name="demo", files={s: str(DEMO_DATA / f"{s}.jsonl") for s in ("train", "validation", "test")},
                     source_column="dialogue", target_column="summary", prefix="summarize: "),
    "samsum": _summarization("samsum", "knkarthick/samsum", None, "dialogue", "summary"),
    "cnn_dailymail": _summarization("cnn_dailymail", "abisee/cnn_dailymail", "3.0.0", "article", "highlights"),
    "xsum": _summarization("xsum", "EdinburghNLP/xsum", None, "document", "summary"),
    "instruction": TaskSpec(name="instruction", kind="instruction", target_column="output"),
    "local": TaskSpec(name="local"),
}
for _glue, (_template, _labels) in GLUE_TASKS.items():
    NAMED_TASKS[f"glue/{_glue}"] = TaskSpec(
        name=f"glue/{_glue}", kind="glue", hub_name="nyu-mll/glue", hub_config=_glue, target_column="label",
        template=_template, label_names=_labels, prefix=f"{_glue} ",
        hub_splits={"validation": "validation_matched", "test": "test_matched"} if _glue == "mnli" else {},
    )


def task_names() -> list[str]:
    return sorted(NAMED_TASKS)


def get_task(task: str) -> TaskSpec:
    """The spec of a named task, or of a local file (its train split) or directory ({split}.<ext> files)."""
    if task in NAMED_TASKS:
        return NAMED_TASKS[task]
    path = Path(task)
    if path.is_dir():
        files = {p.stem: str(p) for p in sorted(path.iterdir()) if p.suffix in LOCAL_FORMATS and p.is_file()}
        if not files:
            raise UserError(
                f"data directory {task} holds no {'/'.join(LOCAL_FORMATS)} files (expected train.jsonl etc.)"
            )
        return TaskSpec(name=task, files=files)
    if path.suffix in LOCAL_FORMATS:
        if not path.is_file():
            raise UserError(f"data file {task} does not exist")
        return TaskSpec(name=task, files={"train": task})
    raise UserError(
        f"unknown task {task!r}; named tasks: {', '.join(task_names())}; "
        f"or a local {'/'.join(LOCAL_FORMATS)} file or a directory of them"
    )


def _with_overrides(spec: TaskSpec, data_cfg: DataConfig) -> TaskSpec:
    """Apply the single-task overrides of ``data_cfg`` (hub names, columns, prefix, files)."""
    changes: dict = {}
    if data_cfg.dataset_name is not None:
        changes["hub_name"] = data_cfg.dataset_name
    if data_cfg.dataset_config is not None:
        changes["hub_config"] = data_cfg.dataset_config
    if data_cfg.source_column is not None:
        if spec.kind != "columns":
            raise UserError(
                f"data.source_column does not apply to task {spec.name}, whose source is built from the "
                f"columns {spec.required_columns()[:-1]}"
            )
        changes["source_column"] = data_cfg.source_column
    if data_cfg.target_column is not None:
        changes["target_column"] = data_cfg.target_column
    if data_cfg.prefix is not None:
        changes["prefix"] = data_cfg.prefix
    files = dict(spec.files)
    for split in ("train", "validation", "test"):
        path = getattr(data_cfg, f"{split}_file")
        if path is not None:
            files[split] = path
    changes["files"] = files
    return dataclasses.replace(spec, **changes)


def _mixture_spec(item: MixtureItem, index: int, data_cfg: DataConfig) -> TaskSpec:
    if not item.task:
        raise UserError(f"data.mixture[{index}].task is empty; give a task name or a local file")
    if item.weight <= 0:
        raise UserError(f"data.mixture[{index}].weight must be > 0, got {item.weight}")
    spec = get_task(item.task)
    if item.task not in NAMED_TASKS:  # local file or directory: the run's column names apply
        spec = dataclasses.replace(spec, source_column=data_cfg.source_column or spec.source_column,
                                   target_column=data_cfg.target_column or spec.target_column)
    if item.prefix is not None:
        spec = dataclasses.replace(spec, prefix=item.prefix)
    return spec


# --------------------------------------------------------------------------- loading


def _load_raw(spec: TaskSpec, split: str, cache_dir: str | None) -> datasets.Dataset:
    """One split as the source stores it; errors name the task, the split and where it looked."""
    if split in spec.files:
        path = Path(spec.files[split])
        where = str(path)
        if not path.is_file():
            raise UserError(f"data file {path} ({split} split of task {spec.name}) does not exist")
        if path.suffix not in LOCAL_FORMATS:
            raise UserError(f"data file {path}: unsupported format {path.suffix!r}; use {', '.join(LOCAL_FORMATS)}")
        with tempfile.TemporaryDirectory(prefix="nash_ds_data_") as tmp:
            try:
                ds = datasets.load_dataset(
                    LOCAL_FORMATS[path.suffix], data_files={split: str(path)}, split=split,
                    cache_dir=cache_dir or tmp, keep_in_memory=cache_dir is None,
                )
            except Exception as e:
                if path.stat().st_size == 0 or "no data" in str(e):  # "no data": a csv with a header only
                    raise UserError(f"the {split} split of task {spec.name} ({where}) is empty") from e
                cause = e.__cause__ or e.__context__ or e  # datasets wraps the parser's error
                raise UserError(
                    f"could not read {where} ({split} split of task {spec.name}): {type(cause).__name__}: "
                    + " ".join(str(cause).split())[:300]
                ) from e
    elif spec.hub_name is not None:
        hub_split = spec.hub_splits.get(split, split)
        where = f"hub data set {spec.hub_name}" + (f" ({spec.hub_config})" if spec.hub_config else "")
        try:
            ds = datasets.load_dataset(spec.hub_name, spec.hub_config, split=hub_split, cache_dir=cache_dir)
        except Exception as e:  # offline, unknown name, missing split: all end the same way for the user
            raise UserError(
                f"task {spec.name}: could not load split {hub_split!r} of {where}: {type(e).__name__}: {e}. "
                f"Without network access, pass local files instead: data.train_file=..., "
                f"data.validation_file=..., data.test_file=... (jsonl/json/csv/parquet)"
            ) from e
    elif split not in ("train", "validation", "test"):  # only these have a data.<split>_file key
        raise UserError(
            f"task {spec.name} has no split {split!r} (data.eval_split); its splits: {', '.join(sorted(spec.files))}. "
            f"Use data.eval_split=validation, or data.task=<directory holding {split}.jsonl>"
        )
    else:
        raise UserError(
            f"task {spec.name} has no {split} split: set data.{split}_file=path/to/{split}.jsonl"
            + (" (or data.dataset_name for a hub data set)" if spec.kind == "instruction" else "")
        )
    if len(ds) == 0:
        raise UserError(f"the {split} split of task {spec.name} ({where}) is empty")
    missing = [c for c in spec.required_columns() if c not in ds.column_names]
    if missing:
        raise UserError(
            f"column {missing[0]!r} not found in the {split} split of task {spec.name} ({where}); "
            f"its columns are {ds.column_names}. Set data.source_column / data.target_column to pick others"
        )
    return ds


def _label_text(spec: TaskSpec, label) -> str:
    if isinstance(label, str):
        return label
    if label == -1:  # GLUE test splits hide their labels
        return ""
    if not 0 <= label < len(spec.label_names):
        raise UserError(f"task {spec.name}: label {label} outside 0..{len(spec.label_names) - 1} {spec.label_names}")
    return spec.label_names[label]


def _fingerprint(ds: datasets.Dataset, step: str, key: str) -> str:
    """An explicit map fingerprint: datasets would otherwise hash the closure (slow for tokenizers)."""
    return hashlib.sha1(f"{ds._fingerprint}|{step}|{key}".encode()).hexdigest()[:16]


def _to_text(ds: datasets.Dataset, spec: TaskSpec) -> datasets.Dataset:
    """Rows -> ``source`` (prefixed), ``target``, ``task`` text columns only."""

    def convert(batch: dict) -> dict:
        num = len(batch[spec.target_column])
        if spec.kind == "glue":
            sources = [spec.template.format(**{k: batch[k][i] for k in batch}) for i in range(num)]
            targets = [_label_text(spec, v) for v in batch[spec.target_column]]
        elif spec.kind == "instruction":
            inputs = batch.get("input") or [None] * num
            sources = [
                INSTRUCTION_INPUT_TEMPLATE.format(instruction=ins, input=inp) if inp and inp.strip()
                else INSTRUCTION_TEMPLATE.format(instruction=ins)
                for ins, inp in zip(batch["instruction"], inputs, strict=True)
            ]
            targets = [t or "" for t in batch[spec.target_column]]
        else:
            sources = [s or "" for s in batch[spec.source_column]]
            targets = [t if isinstance(t, list) else t or "" for t in batch[spec.target_column]]
        # a list-valued target holds every reference: the first is the training label, the closest is scored
        references = [[str(r) for r in t] if isinstance(t, list) else [str(t)] for t in targets]
        for i, refs in enumerate(references):
            if not refs:
                raise UserError(f"task {spec.name}: row {i} of a batch has an empty list in column "
                                f"{spec.target_column!r}; give at least one reference")
        return {
            "source": [spec.prefix + str(s) for s in sources],
            "target": [refs[0] for refs in references],
            "references": references,
            "task": [spec.name] * num,
        }

    return ds.map(convert, batched=True, remove_columns=ds.column_names, keep_in_memory=True,
                  new_fingerprint=_fingerprint(ds, "text", repr(spec)))


def _head(ds: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    return ds if limit is None or limit >= len(ds) else ds.select(range(limit))


def _mixture_counts(weights: Sequence[float], total: int) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainder, so the counts sum to total)."""
    shares = np.asarray(weights, dtype=np.float64) / sum(weights) * total
    counts = np.floor(shares).astype(int)
    for i in np.argsort(-(shares - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def _sample_mixture(
    parts: list[datasets.Dataset], specs: list[TaskSpec], weights: Sequence[float], total: int, seed: int
) -> datasets.Dataset:
    """``total`` rows drawn from ``parts`` by weight, as text, in a seeded random order."""
    rng = np.random.default_rng(seed)
    chosen = []
    for ds, spec, count in zip(parts, specs, _mixture_counts(weights, total), strict=True):
        # whole passes in fresh random orders, so no example repeats before all were drawn
        idx = np.concatenate([rng.permutation(len(ds)) for _ in range(max(1, math.ceil(count / len(ds))))])[:count]
        chosen.append(_to_text(ds.select(idx.tolist()), spec))  # format only the drawn rows
    mixed = datasets.concatenate_datasets(chosen)
    return mixed.select(rng.permutation(len(mixed)).tolist())


def _tokenize(ds: datasets.Dataset, tokenizer, data_cfg: DataConfig) -> datasets.Dataset:
    src_len, tgt_len = data_cfg.max_source_length, data_cfg.max_target_length

    def encode(batch: dict) -> dict:
        enc = tokenizer(batch["source"], max_length=src_len, truncation=True)
        labels = tokenizer(text_target=batch["target"], max_length=tgt_len, truncation=True)["input_ids"]
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}

    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    return ds.map(encode, batched=True, keep_in_memory=True,
                  new_fingerprint=_fingerprint(ds, "tok", f"{name}|{len(tokenizer)}|{src_len}|{tgt_len}"))


def _mixture_split(data_cfg: DataConfig, split: str, seed: int, cache_dir: str | None) -> datasets.Dataset:
    eval_file = None if split == "train" else getattr(data_cfg, f"{split}_file", None)
    if eval_file is not None:  # one local evaluation file for the whole mixture
        spec = _with_overrides(NAMED_TASKS["local"], data_cfg)
        return _to_text(_head(_load_raw(spec, split, cache_dir), data_cfg.max_eval_samples), spec)
    specs = [_mixture_spec(item, i, data_cfg) for i, item in enumerate(data_cfg.mixture)]
    parts = [_load_raw(spec, split, cache_dir) for spec in specs]
    if split == "train":
        total = data_cfg.max_train_samples or sum(len(p) for p in parts)
        return _sample_mixture(parts, specs, [item.weight for item in data_cfg.mixture], total, seed)
    return datasets.concatenate_datasets(
        [_to_text(_head(p, data_cfg.max_eval_samples), s) for p, s in zip(parts, specs, strict=True)]
    )


def build_text_splits(
    data_cfg: DataConfig, *, splits: Sequence[str] = ("train", "validation"), seed: int = 0,
    cache_dir: str | None = None,
) -> dict[str, datasets.Dataset]:
    """The splits as ``source`` / ``target`` / ``task`` text, capped and (train) mixed; no tokenizer needed."""
    for key in ("max_train_samples", "max_eval_samples"):
        if getattr(data_cfg, key) is not None and getattr(data_cfg, key) < 1:
            raise UserError(f"data.{key} must be >= 1 or null (all), got {getattr(data_cfg, key)}")
    if data_cfg.mixture:
        return {split: _mixture_split(data_cfg, split, seed, cache_dir) for split in splits}
    spec = _with_overrides(get_task(data_cfg.task), data_cfg)
    out: dict[str, datasets.Dataset] = {}
    for split in splits:
        limit = data_cfg.max_train_samples if split == "train" else data_cfg.max_eval_samples
        out[split] = _to_text(_head(_load_raw(spec, split, cache_dir), limit), spec)
    return out


def build_datasets(
    data_cfg: DataConfig, tokenizer, *, splits: Sequence[str] = ("train", "validation"), seed: int = 0,
    cache_dir: str | None = None,
) -> dict[str, datasets.Dataset]:
    """Tokenised splits with columns input_ids, attention_mask, labels (int lists), source, target, task.

    Training examples keep the stored order (single task) or a seeded shuffle (mixture); the
    trainer's sampler shuffles per epoch. ``cache_dir`` (e.g. under the run directory) keeps
    downloaded and parsed data between runs; None reads local files into memory.
    """
    texts = build_text_splits(data_cfg, splits=splits, seed=seed, cache_dir=cache_dir)
    return {split: _tokenize(ds, tokenizer, data_cfg) for split, ds in texts.items()}


class Seq2SeqCollator:
    """Pads a list of tokenised rows into tensors: inputs with the pad id, labels with -100.

    Text columns (source, target, task) are dropped; the loss ignores label positions of -100.
    """

    def __init__(self, tokenizer, *, pad_to_multiple_of: int | None = None, label_pad_id: int = -100):
        if tokenizer.pad_token_id is None:
            raise UserError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no pad token")
        self.pad_id = tokenizer.pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.label_pad_id = label_pad_id

    def _pad(self, seqs: list[list[int]], value: int) -> torch.Tensor:
        length = max(len(s) for s in seqs)
        if self.pad_to_multiple_of:
            length = math.ceil(length / self.pad_to_multiple_of) * self.pad_to_multiple_of
        out = torch.full((len(seqs), length), value, dtype=torch.long)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        return out

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = {
            "input_ids": self._pad([f["input_ids"] for f in features], self.pad_id),
            "attention_mask": self._pad([f["attention_mask"] for f in features], 0),
        }
        if "labels" in features[0]:
            batch["labels"] = self._pad([f["labels"] for f in features], self.label_pad_id)
        return batch
