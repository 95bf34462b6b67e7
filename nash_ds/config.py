"""One typed config tree for every stage.

YAML files set only what differs from these defaults; ``key=value`` overrides on the command
line come last (``train.lr=1e-4``, ``prune.decoder_layers=[0,5,11]``). Unknown keys are an
error that lists the valid ones; a value of the wrong type names the key and what was
expected. The defaults are the embedded demo.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PACKAGE_DIR = Path(__file__).resolve().parent
DEMO_DIR = PACKAGE_DIR / "demo"


@dataclass
class ModelConfig:
    """Which model to start from."""

    name_or_path: str = "preset:demo-t5"
    """Hub name (t5-large, facebook/bart-large), local HF directory, or preset:<name> (random init)."""
    tokenizer: str | None = None
    """Tokenizer hub name or directory; None uses name_or_path (presets use the demo tokenizer)."""
    export_dtype: str = "float32"
    """dtype of exported weights: float32, bfloat16 or float16."""


@dataclass
class MixtureItem:
    """One task of a weighted multi-task mixture."""

    task: str = ""
    """Task name (as data.task) or a local file."""
    weight: float = 1.0
    """Relative sampling weight."""
    prefix: str | None = None
    """Task prefix for this task; None uses the task's default."""


@dataclass
class DataConfig:
    """What to train and evaluate on, and how to tokenise it."""

    task: str = "demo"
    """demo, samsum, cnn_dailymail, xsum, glue/<name>, instruction, or a local .jsonl/.json/.csv/.parquet file."""
    dataset_name: str | None = None
    """Override the hub data set for a named task (e.g. knkarthick/samsum)."""
    dataset_config: str | None = None
    """Hub data set configuration name (e.g. 3.0.0 for cnn_dailymail)."""
    train_file: str | None = None
    """Local training file (jsonl/json/csv/parquet); overrides the task's train split."""
    validation_file: str | None = None
    """Local validation file."""
    test_file: str | None = None
    """Local test file."""
    source_column: str | None = None
    """Input text column; None uses the task's default."""
    target_column: str | None = None
    """Target text column; None uses the task's default."""
    prefix: str | None = None
    """Text prepended to every source (T5 style, e.g. 'summarize: '); None uses the task's default."""
    mixture: list[MixtureItem] = field(default_factory=list)
    """Weighted multi-task mixture; when set, replaces task (training samples by weight; evaluation uses every task's eval split)."""
    max_source_length: int = 64
    """Source tokens kept (the same in every stage)."""
    max_target_length: int = 32
    """Target tokens kept (the same in every stage)."""
    max_train_samples: int | None = None
    """Cap on training examples (None = all)."""
    max_eval_samples: int | None = 64
    """Cap on evaluation examples (None = all)."""
    eval_split: str = "validation"
    """Split used for periodic evaluation and the evaluate stage."""
    num_workers: int = 0
    """DataLoader worker processes."""


@dataclass
class TrainConfig:
    """The DeepSpeed training loop shared by finetune and prune."""

    ds_config: str = "ds_configs/zero2_fp32.json"
    """DeepSpeed JSON (ZeRO stage, precision, buckets, offload); relative to the repo or cwd."""
    micro_batch_size: int = 16
    """Samples per rank per forward pass."""
    grad_accum: int = 1
    """Gradient accumulation steps."""
    lr: float = 2e-3
    """Peak learning rate of the model parameters."""
    weight_decay: float = 0.0
    """AdamW weight decay of the model parameters."""
    warmup_steps: int = 20
    """Linear warm-up steps of the model learning rate."""
    lr_decay: str = "linear"
    """After warm-up: linear (to 0 at max_steps), cosine, or constant."""
    max_steps: int = 400
    """Optimizer steps."""
    grad_clip: float = 1.0
    """Gradient norm clipping (0 disables)."""
    log_every: int = 10
    """Steps between TensorBoard / progress updates."""
    eval_every: int = 100
    """Steps between evaluations (0: only at the end)."""
    save_every: int = 100
    """Steps between DeepSpeed checkpoints (0: only at the end)."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept on disk."""
    metric_for_best: str = "rougeL"
    """Eval metric that picks the best checkpoint (rouge1/2/L/Lsum, bleu, exact_match, accuracy, wer, per, loss;
    for wer, per and loss set greater_is_better=false)."""
    greater_is_better: bool = True
    """Whether a larger metric_for_best is better."""
    resume: bool = True
    """Resume from the newest complete checkpoint in the stage directory when there is one."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (large models)."""
    distill: bool = False
    """Final fine-tune only: add logit KD from prune.teacher (weights and temperature from distill)."""
    eval_at_start: bool = False
    """Evaluate the starting model at step 0 and let it compete for the best checkpoint (the pipeline's final
    fine-tune does: it can then never publish a model worse than the one it started from)."""


@dataclass
class GenerationConfig:
    """Generation used by evaluation."""

    num_beams: int = 1
    """Beam size (1 = greedy)."""
    max_new_tokens: int = 32
    """Tokens generated per example."""
    eval_batch_size: int = 32
    """Examples per generation batch."""


@dataclass
class DistillConfig:
    """Distillation from the fine-tuned dense teacher."""

    ce_weight: float = 0.5
    """Weight of the task cross-entropy."""
    kd_weight: float = 0.5
    """Weight of the logit KD loss KL(teacher/T || student/T) * T^2 over target tokens."""
    hidden_weight: float = 0.001
    """Weight of the hidden-state MSE (student through a learned projection)."""
    temperature: float = 2.0
    """KD temperature T."""


@dataclass
class PruneConfig:
    """Mask learning (nash, cofi) or the decoder cut alone (sft)."""

    method: str = "nash"
    """nash, cofi or sft."""
    teacher: str = "runs/demo/finetune/model"
    """Fine-tuned dense model (HF directory or hub name); the student starts as its copy."""
    decoder_layers: int | list[int] | None = None
    """k, the decoder layers kept (nash, sft), or an explicit list of teacher layer indices; None: 2, or with
    target_speedup the largest k whose target is reachable."""
    decoder_selection: str = "uniform"
    """uniform (NASH), low or high; ignored when decoder_layers is a list."""
    target_sparsity: float = 0.3
    """Target sparsity of the prunable encoder (nash) or whole model (cofi), in [0, 1)."""
    sparsity_warmup_steps: int = 100
    """Steps over which the target ramps linearly from 0."""
    droprate_init: float = 0.5
    """Initial drop rate of fine-grained masks (log_alpha mean log(1-p) - log p)."""
    mask_lr: float = 0.1
    """Learning rate of log_alpha."""
    lambda_lr: float = 0.1
    """Learning rate of the Lagrange multipliers (gradient ascent)."""
    target_speedup: float | None = None
    """nash only: prune to a generation speedup X over the teacher instead of a parameter sparsity; the
    Lagrangian holds the expected latency (a measured latency model, see latency_profile) at 1/X."""
    latency_profile: str | None = None
    """latency.json of 'run.py profile' for the teacher's shape (measured on the deployment machine); None:
    profiled on the spot on rank 0 with the evaluate settings (cached in <output_dir>/profile/)."""
    max_encoder_sparsity: float = 0.6
    """With target_speedup: the most encoder pruning counted on when choosing k."""
    sft_distill: bool = False
    """sft only: distil from the teacher (logit KD + hidden states, weights from distill) instead of plain
    cross-entropy (DistilBART's shrink-and-fine-tune is CE only); results are labelled sft+kd."""
    deterministic: str = "global"
    """How deterministic masks round the expected zeros: global (once per mask type over all layers) or
    per_layer (CoFi's rule: each layer apart)."""
    uniform_widths: bool = False
    """nash, cofi: every layer of a stack keeps the same number of heads and FFN dims (each layer its own best
    units; T5 self-attention: one head set per stack), so the export is the stock class (what its config cannot
    express is kept as zeros) and serving engines (CTranslate2) take it; False: per-layer widths (NASH's method)."""


@dataclass
class FinalizeConfig:
    """Turning masks into a smaller model."""

    checkpoint: str | None = None
    """DeepSpeed checkpoint directory of the prune stage; None uses <output_dir>/prune/checkpoints."""
    atol: float = 1e-4
    """Self-check: allowed |masked - pruned| logit difference (fp32) is ``atol + rtol * max |masked logit|``."""
    rtol: float = 1e-3
    """Self-check: the part of the allowed difference that scales with the largest masked logit. float32 rounding
    grows with the logits and with training: on the G2P benchmark's trained 3.6 M models (logits 17-19) masked
    and pruned differed by up to 6.5e-4 (NASH) and 3.0e-3 (CoFi, 1.6e-4 of the largest logit) in float32, and by
    at most 2e-11 in float64 (CoFi: with its norms in float64 too; ``bench/finalize_precision.py``). A wrong
    unit or tensor moves the logits by about their own size."""
    check_batches: int = 2
    """Evaluation batches compared in the self-check."""


@dataclass
class EvalConfig:
    """The evaluate stage."""

    model: str | None = None
    """HF directory to evaluate; None uses the pipeline's newest model."""
    reference: str | None = None
    """Dense reference model for parameter counts and sparsity."""
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    """Batch sizes for latency."""
    latency_source_length: int = 64
    """Input tokens for latency runs."""
    latency_new_tokens: int = 16
    """Generated tokens for latency runs (fixed: no early stop)."""
    warmup: int = 2
    """Untimed warm-up repeats."""
    repeats: int = 5
    """Timed repeats (median reported)."""
    device: str = "auto"
    """cpu, cuda or auto."""
    dtype: str = "float32"
    """float32 or bfloat16 for latency."""
    engine: str | list[str] = "transformers"
    """Engine(s) whose generation is timed: transformers, ctranslate2 (the models converted on the fly; per-layer
    widths are refused), or a list of both; every engine's speedup is against the first model in that engine."""


@dataclass
class EstimateConfig:
    """The ``estimate`` stage: what to size and on which machines."""

    model: str | None = None
    """Named shape (t5-base, t5-large, t5-3b, t5-xl, bart-large, ...), hub name, local dir or preset:<name>;
    None: model.name_or_path (finetune) or prune.teacher (prune)."""
    stage: str = "finetune"
    """finetune or prune (prune adds the teacher, masks and Lagrangian; decoder cut from prune.*)."""
    world_size: int = 8
    """Ranks (GPUs, or CPU processes) in the whole job."""
    ranks_per_node: int = 8
    """Ranks sharing one host (host RAM and offload are per node)."""
    device: str = "gpu"
    """gpu (bf16 configs) or cpu (fp32 configs)."""
    memory_gb: float = 80.0
    """Memory per rank in GiB: the GPU's (device=gpu) or host RAM / ranks_per_node (device=cpu)."""
    host_memory_gb: float | None = None
    """Host RAM per node in GiB for offload and start-up checks; None: not checked."""
    headroom: float = 0.9
    """Fraction of memory_gb a plan may use (allocator fragmentation, spikes)."""
    zero_init: bool = True
    """ZeRO-3 builds models under deepspeed.zero.Init (no full copy per rank at start-up)."""
    candidates: list[str] = field(default_factory=list)
    """ds_configs to compare; empty: the shipped ones of the device's precision, cheapest first."""


@dataclass
class ProfileConfig:
    """``run.py profile``: the latency model of a model shape on this machine (timing settings from evaluate.*)."""

    model: str | None = None
    """Hub name, directory, preset:<name> or named shape (t5-base, bart-large, ...) to profile (random weights
    of its shape); None: prune.teacher when it exists, else model.name_or_path."""


@dataclass
class ExportConfig:
    """``run.py export``: a finished model for a serving engine, under <output_dir>/export/<format>/."""

    model: str | None = None
    """HF directory to export; None: the pipeline's newest model (final, then finalize, then finetune)."""
    format: str = "ctranslate2"
    """Serving engine: ctranslate2."""
    quantization: str = "none"
    """Weight type in the engine: none (float32), int8, int8_float32, float16, bfloat16 or int8_float16."""


@dataclass
class PipelineConfig:
    """What ``pipeline`` runs after finetune -> prune -> finalize."""

    prune_max_steps: int | None = None
    """train.max_steps for the prune stage (None: train.max_steps)."""
    prune_lr: float | None = None
    """train.lr for the prune stage (None: train.lr)."""
    final_finetune: bool = True
    """Fine-tune the pruned export (stage directory 'final')."""
    final_max_steps: int | None = 200
    """train.max_steps for the final fine-tune (None: train.max_steps)."""
    final_lr: float | None = None
    """Peak lr of the final fine-tune (None: train.lr)."""
    final_warmup_steps: int = 10
    """Warm-up steps of the final fine-tune (short: the model is already trained)."""
    final_distill: bool = True
    """Distil the teacher's logits during the final fine-tune (as DistilBART and CoFi do after pruning)."""
    evaluate: bool = True
    """Evaluate teacher and pruned model side by side and print the table."""


@dataclass
class RunConfig:
    """Root of the config tree."""

    output_dir: str = "runs/demo"
    """Stage outputs go to <output_dir>/<stage>/."""
    seed: int = 42
    """Seed for initialisation, data order and masks."""
    overwrite: bool = False
    """Replace a finished stage output instead of refusing."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    finalize: FinalizeConfig = field(default_factory=FinalizeConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    estimate: EstimateConfig = field(default_factory=EstimateConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


# --------------------------------------------------------------------------- loading


def _fields(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _type_name(tp) -> str:
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert where unambiguous (int -> float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping with keys {sorted(_fields(tp))}, got {value!r}")
        return _build(tp, value, prefix=key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{key}: expected a string, got {value!r}")
    raise AssertionError(f"unsupported config type {tp} for {key}")


def _build(cls, data: dict, *, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    fields = _fields(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys under '{prefix.rstrip('.') or '<root>'}': {', '.join(sorted(fields))}"
        )
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> dict:
    """``a.b.c=value`` -> {"a": {"b": {"c": value}}}; the value is parsed as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not of the form key=value (e.g. train.lr=1e-4)")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ValueError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ValueError(f"override {text!r}: the value is not valid YAML ({_yaml_problem(e)}); quote strings "
                         "and close brackets, e.g. prune.decoder_layers=[0,3] or data.prefix='summarize: '") from e
    # YAML reads 1e-4 as a string; numbers the user meant should be numbers
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            pass
    out: dict = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line: what and where (line/column as YAML counts them, from 1)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).split("\n")[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def read_yaml_file(path: str) -> dict:
    """A config file's mapping ({} when empty); ValueError naming the file for anything else."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"config file {path} is a directory; pass a YAML file, e.g. configs/demo.yaml")
    if not p.is_file():
        raise ValueError(f"config file {path} does not exist (pass a YAML file, e.g. configs/demo.yaml)")
    try:
        loaded = yaml.safe_load(p.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ValueError(f"config file {path} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8 "
                         "YAML") from e
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {_yaml_problem(e)}") from e
    except OSError as e:
        raise ValueError(f"config file {path} cannot be read: {e.strerror or e}") from e
    if not isinstance(loaded, dict):  # the user's file, not a caller's type error
        example = "'train:' then '  lr: 1.0e-4'"
        raise ValueError(f"config file {path} must hold a mapping of keys (e.g. {example}), "  # noqa: TRY004
                         f"got {type(loaded).__name__}")
    return loaded


def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults, then the YAML file (if any), then ``key=value`` overrides; validated."""
    data: dict = {}
    if path is not None:
        data = read_yaml_file(path)
    for text in overrides:
        data = _merge(data, parse_override(text))
    cfg = _build(RunConfig, data)
    validate(cfg)
    return cfg


def to_dict(cfg: RunConfig) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def validate(cfg: RunConfig) -> None:
    """Value checks that types alone do not catch; every message names the key."""
    def positive(key: str, value: int) -> None:
        if value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")

    _check_finite(cfg)
    t = cfg.train
    for key in ("micro_batch_size", "grad_accum", "max_steps", "log_every", "keep_checkpoints"):
        positive(f"train.{key}", getattr(t, key))
    for key in ("eval_every", "save_every", "warmup_steps"):
        if getattr(t, key) < 0:
            raise ValueError(f"train.{key} must be >= 0, got {getattr(t, key)}")
    if t.lr_decay not in ("linear", "cosine", "constant"):
        raise ValueError(f"train.lr_decay must be linear, cosine or constant, got {t.lr_decay!r}")
    if t.lr <= 0:
        raise ValueError(f"train.lr must be > 0, got {t.lr}")
    d = cfg.data
    positive("data.max_source_length", d.max_source_length)
    positive("data.max_target_length", d.max_target_length)
    p = cfg.prune
    if p.method not in ("nash", "cofi", "sft"):
        raise ValueError(f"prune.method must be nash, cofi or sft, got {p.method!r}")
    if not 0.0 <= p.target_sparsity < 1.0:
        raise ValueError(f"prune.target_sparsity must be in [0, 1), got {p.target_sparsity}")
    if p.decoder_selection not in ("uniform", "low", "high"):
        raise ValueError(f"prune.decoder_selection must be uniform, low or high, got {p.decoder_selection!r}")
    if p.target_speedup is not None:
        if p.method != "nash":
            raise ValueError(f"prune.target_speedup is for prune.method=nash (encoder masks + decoder cut), got "
                             f"prune.method={p.method}; set prune.target_sparsity for {p.method}")
        if not p.target_speedup > 1.0 or p.target_speedup != p.target_speedup or p.target_speedup == float("inf"):
            raise ValueError(f"prune.target_speedup must be a number > 1 (e.g. 2.0 for twice as fast), got "
                             f"{p.target_speedup}")
    if not 0.0 <= p.max_encoder_sparsity < 1.0:
        raise ValueError(f"prune.max_encoder_sparsity must be in [0, 1), got {p.max_encoder_sparsity}")
    if isinstance(p.decoder_layers, int) and p.decoder_layers < 1:
        raise ValueError(f"prune.decoder_layers must be >= 1 (k of L decoder layers), got {p.decoder_layers}")
    pl = cfg.pipeline
    if pl.final_lr is not None and not pl.final_lr > 0:
        raise ValueError(f"pipeline.final_lr must be > 0 (or null for train.lr), got {pl.final_lr}")
    if pl.final_warmup_steps < 0:
        raise ValueError(f"pipeline.final_warmup_steps must be >= 0, got {pl.final_warmup_steps}")
    if p.deterministic not in ("global", "per_layer"):
        raise ValueError(f"prune.deterministic must be global or per_layer, got {p.deterministic!r}")
    if not 0.0 < p.droprate_init < 1.0:
        raise ValueError(f"prune.droprate_init must be in (0, 1), got {p.droprate_init}")
    if cfg.distill.temperature <= 0:
        raise ValueError(f"distill.temperature must be > 0, got {cfg.distill.temperature}")
    if cfg.model.export_dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"model.export_dtype must be float32, bfloat16 or float16, got {cfg.model.export_dtype!r}")
    g = cfg.generation
    positive("generation.num_beams", g.num_beams)
    positive("generation.max_new_tokens", g.max_new_tokens)
    e = cfg.evaluate
    if e.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"evaluate.device must be auto, cpu or cuda, got {e.device!r}")
    if e.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"evaluate.dtype must be float32 or bfloat16, got {e.dtype!r}")
    engines = [e.engine] if isinstance(e.engine, str) else e.engine
    if not engines or any(name not in ("transformers", "ctranslate2") for name in engines):
        raise ValueError(f"evaluate.engine must be transformers, ctranslate2 or a list of them, got {e.engine!r}")
    x = cfg.export
    if x.format not in ("ctranslate2",):
        raise ValueError(f"export.format must be ctranslate2, got {x.format!r}")
    if x.quantization not in ("none", "int8", "int8_float32", "float16", "bfloat16", "int8_float16"):
        raise ValueError("export.quantization must be none, int8, int8_float32, float16, bfloat16 or int8_float16, "
                         f"got {x.quantization!r}")
    _validate_more(cfg)


def _check_finite(node, key: str = "") -> None:
    """Every float in the tree (lists and mixtures included) is a finite number: NaN and inf are refused."""
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            _check_finite(getattr(node, f.name), f"{key}.{f.name}" if key else f.name)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _check_finite(item, f"{key}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ValueError(f"{key} must be a finite number, got {node}")


def _validate_more(cfg: RunConfig) -> None:
    """Signs and ranges of the remaining numeric keys; each message names the key and the allowed range."""
    def at_least(key: str, value, low, what: str = "") -> None:
        if value is not None and value < low:
            raise ValueError(f"{key} must be >= {low}{what}, got {value}")

    def above(key: str, value, low, what: str = "") -> None:
        if value is not None and not value > low:
            raise ValueError(f"{key} must be > {low}{what}, got {value}")

    t, d, p, g, e = cfg.train, cfg.data, cfg.prune, cfg.generation, cfg.evaluate
    at_least("train.weight_decay", t.weight_decay, 0)
    at_least("train.grad_clip", t.grad_clip, 0, " (0 disables clipping)")
    at_least("data.num_workers", d.num_workers, 0)
    at_least("data.max_train_samples", d.max_train_samples, 1, " or null (all)")
    at_least("data.max_eval_samples", d.max_eval_samples, 1, " or null (all)")
    if not d.eval_split:
        raise ValueError("data.eval_split is empty; use validation (or test, or the name of a split of data.task)")
    for i, item in enumerate(d.mixture):
        above(f"data.mixture[{i}].weight", item.weight, 0)
        if not item.task:
            raise ValueError(f"data.mixture[{i}].task is empty; give a task name or a local file")
    at_least("generation.eval_batch_size", g.eval_batch_size, 1)
    for key in ("ce_weight", "kd_weight", "hidden_weight"):
        at_least(f"distill.{key}", getattr(cfg.distill, key), 0)
    at_least("prune.sparsity_warmup_steps", p.sparsity_warmup_steps, 0)
    above("prune.mask_lr", p.mask_lr, 0)
    above("prune.lambda_lr", p.lambda_lr, 0)
    if isinstance(p.decoder_layers, list) and not p.decoder_layers:
        raise ValueError("prune.decoder_layers is an empty list; give k (e.g. 3) or the teacher layers to keep "
                         "(e.g. [0,5,11])")
    at_least("finalize.atol", cfg.finalize.atol, 0)
    at_least("finalize.rtol", cfg.finalize.rtol, 0)
    at_least("finalize.check_batches", cfg.finalize.check_batches, 1,
             " (the self-check compares the masked and the pruned model on that many batches; it cannot be skipped)")
    if not e.batch_sizes:
        raise ValueError("evaluate.batch_sizes is empty; give at least one latency batch size, e.g. [1] or [1,8]")
    for i, bs in enumerate(e.batch_sizes):
        at_least(f"evaluate.batch_sizes[{i}]", bs, 1)
    at_least("evaluate.latency_source_length", e.latency_source_length, 1)
    at_least("evaluate.latency_new_tokens", e.latency_new_tokens, 2,
             " (the per-token decoder time is a difference of two lengths)")
    at_least("evaluate.warmup", e.warmup, 0)
    at_least("evaluate.repeats", e.repeats, 1)
    est = cfg.estimate
    at_least("estimate.world_size", est.world_size, 1)
    at_least("estimate.ranks_per_node", est.ranks_per_node, 1)
    above("estimate.memory_gb", est.memory_gb, 0)
    above("estimate.host_memory_gb", est.host_memory_gb, 0, " or null (not checked)")
    if not 0 < est.headroom <= 1:
        raise ValueError(f"estimate.headroom must be in (0, 1], got {est.headroom}")
    pl = cfg.pipeline
    at_least("pipeline.prune_max_steps", pl.prune_max_steps, 1, " or null (train.max_steps)")
    at_least("pipeline.final_max_steps", pl.final_max_steps, 1, " or null (train.max_steps)")
    above("pipeline.prune_lr", pl.prune_lr, 0, " or null (train.lr)")
    if not cfg.output_dir:
        raise ValueError("output_dir is empty; give a directory, e.g. output_dir=runs/my-run")
