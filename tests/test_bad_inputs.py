"""The bad-input catalogue: every case is a real command line through ``nash_ds.cli.main`` (run.py's main).

Each case must end with exit code 2 and one ``nash-ds: error:`` line that names the culprit (the fragments
below), print no traceback, and write nothing: no file or directory appears, vanishes or changes anywhere under
the case's directory, the shared inputs or $TMPDIR. Crafted checkpoints must not run their code (the marker
file stays absent).

The cases run one after the other in one worker process (tests/cli_worker.py: ``main(argv)`` per case, a fresh
launcher environment each time), started once for the module; each case is then its own test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, env, write_crafted_checkpoint


@dataclass
class Case:
    id: str
    argv: list[str]
    """Command line after run.py; ``{d}`` is the case's directory (also the working directory), ``{teacher}`` a
    real tiny teacher, ``{gpt2}`` a model directory of an unsupported family."""
    fragments: list[str]
    """Each must appear in the error line (after formatting with the same placeholders)."""
    setup: Callable[[Path], None] | None = None
    output: bool = True
    """Add output_dir={d}/run (every case writes, if at all, inside its own directory)."""
    marker: bool = False
    """The case holds a crafted pickle that would create {d}/ran."""
    extra: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- inputs the cases write


def _write(name: str, content: str | bytes) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return setup


def _rows(n: int, **cols) -> str:
    cols = cols or {"dialogue": "a: hi b: hello", "summary": "they greet"}
    return "".join(json.dumps(cols) + "\n" for _ in range(n))


def _model_copy(change: Callable[[Path], None]) -> Callable[[Path], None]:
    """A copy of the shared teacher as {d}/model, then ``change(model_dir)``."""
    def setup(d: Path) -> None:
        shutil.copytree(SHARED["teacher"], d / "model")
        change(d / "model")
    return setup


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _index_with_missing_shard(m: Path) -> None:
    (m / "model.safetensors").unlink()
    (m / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"shared.weight": "model-00001-of-00002.safetensors"}}))


def _mismatched_config(m: Path) -> None:
    config = json.loads((m / "config.json").read_text())
    config["d_ff"] = config["d_ff"] * 2
    (m / "config.json").write_text(json.dumps(config))


def _meta() -> dict:
    """A prune_meta.json as 'run.py prune' writes it for the shared teacher (the student keeps 2 layers)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(SHARED["teacher"]).to_dict()
    student = {**config, "num_decoder_layers": 2}
    return {"method": "nash", "family": "x", "teacher": str(SHARED["teacher"]), "kept_decoder_layers": [0, 3],
            "target_sparsity": 0.3, "student_config": student, "teacher_config": config, "teacher_params": {}}


def _prune_checkpoint(*, meta: dict | None | str = "full", method: str = "nash", complete: str | None = None,
                      states: bytes | None = None, crafted: str | None = None, zero_stage: int = 0):
    """{d}/run/prune/checkpoints with one checkpoint: a crafted one, or one whose parts are set here."""
    def setup(d: Path) -> None:
        ckpt_dir = d / "run" / "prune" / "checkpoints"
        if crafted:
            write_crafted_checkpoint(ckpt_dir, d / "ran", how=crafted, method=method, zero_stage=zero_stage)
        else:
            root = ckpt_dir / "step-0000001"
            root.mkdir(parents=True)
            if states is None:
                torch.save({"module": {}}, root / "mp_rank_00_model_states.pt")
            else:
                (root / "mp_rank_00_model_states.pt").write_bytes(states)
            (root / "COMPLETE").write_text(complete if complete is not None else json.dumps(
                {"step": 1, "best": {}, "world_size": 1, "zero_stage": 0, "method": method}))
        if meta == "full":
            (ckpt_dir / "prune_meta.json").write_text(json.dumps(_meta()))
        elif isinstance(meta, dict):
            (ckpt_dir / "prune_meta.json").write_text(json.dumps(meta))
        elif isinstance(meta, str):
            (ckpt_dir / "prune_meta.json").write_text(meta)
    return setup


def _finished(stage: str, marker: str = "model") -> Callable[[Path], None]:
    return _write(f"run/{stage}/{marker}" + ("/config.json" if marker == "model" else ""), "{}")


def _ds(content: dict | list | str) -> Callable[[Path], None]:
    return _write("ds.json", content if isinstance(content, str) else json.dumps(content))


ZERO2 = {"zero_optimization": {"stage": 2}}

# --------------------------------------------------------------------------- the catalogue

CASES = [
    # command line
    Case("no_stage", [], ["a stage is required first: one of estimate, evaluate, export, finalize"], output=False),
    Case("unknown_stage", ["train"], ["invalid choice: 'train'"], output=False),
    Case("unknown_option", ["finetune", "--lr", "1e-4"], ["unrecognized arguments: --lr"], output=False),
    Case("config_without_file", ["finetune", "--config"], ["--config: expected one argument"], output=False),
    Case("bad_log_level", ["finetune", "--log-level", "LOUD"], ["invalid choice: 'LOUD'"], output=False),
    # config files
    Case("config_missing", ["finetune", "--config", "{d}/nope.yaml"], ["config file {d}/nope.yaml does not exist"]),
    Case("config_is_directory", ["finetune", "--config", "{d}"], ["config file {d} is a directory"]),
    Case("config_yaml_syntax", ["finetune", "--config", "{d}/c.yaml"],
         ["config file {d}/c.yaml is not valid YAML", "line 3"], setup=_write("c.yaml", "train:\n  lr: [1,\n")),
    Case("config_tab_indent", ["finetune", "--config", "{d}/c.yaml"], ["{d}/c.yaml is not valid YAML"],
         setup=_write("c.yaml", "train:\n\tlr: 1\n")),
    Case("config_not_a_mapping", ["finetune", "--config", "{d}/c.yaml"], ["{d}/c.yaml must hold a mapping of keys"],
         setup=_write("c.yaml", "- train\n- prune\n")),
    Case("config_not_utf8", ["finetune", "--config", "{d}/c.yaml"], ["config file {d}/c.yaml is not UTF-8"],
         setup=_write("c.yaml", b"train:\n  lr: 1.0e-4 # \xe9t\xe9\n")),
    Case("config_unknown_key", ["finetune", "--config", "{d}/c.yaml"],
         ["unknown config key(s) train.lrr", "valid keys under 'train'"], setup=_write("c.yaml", "train:\n  lrr: 1\n")),
    Case("config_section_not_mapping", ["finetune", "--config", "{d}/c.yaml"], ["train: expected a mapping"],
         setup=_write("c.yaml", "train: 3\n")),
    Case("config_wrong_type", ["finetune", "--config", "{d}/c.yaml"], ["train.max_steps: expected an integer"],
         setup=_write("c.yaml", "train:\n  max_steps: ten\n")),
    # overrides
    Case("override_without_equals", ["finetune", "train.lr"], ["override 'train.lr' is not of the form key=value"]),
    Case("override_empty_key", ["finetune", "train..lr=1"], ["override 'train..lr=1' has an empty key"]),
    Case("override_yaml_syntax", ["prune", "prune.decoder_layers=[0,3"],
         ["override 'prune.decoder_layers=[0,3': the value is not valid YAML"]),
    Case("override_unknown_section", ["finetune", "trian.lr=1"], ["unknown config key(s) trian", "train"]),
    Case("override_unknown_key", ["finetune", "train.lrr=1"], ["unknown config key(s) train.lrr", "lr"]),
    Case("override_not_a_number", ["finetune", "train.lr=abc"], ["train.lr: expected a number, got 'abc'"]),
    Case("override_float_for_int", ["finetune", "train.max_steps=1.5"], ["train.max_steps: expected an integer"]),
    Case("override_not_a_bool", ["finetune", "train.resume=maybe"], ["train.resume: expected true or false"]),
    Case("override_mixture_unknown_key", ["finetune", "data.mixture=[{task: demo, wieght: 2}]"],
         ["unknown config key(s) data.mixture[0].wieght", "weight"]),
    # values
    Case("lr_nan", ["finetune", "train.lr=.nan"], ["train.lr must be a finite number, got nan"]),
    Case("lr_inf", ["finetune", "train.lr=1e999"], ["train.lr must be a finite number, got inf"]),
    Case("lr_zero", ["finetune", "train.lr=0"], ["train.lr must be > 0, got 0.0"]),
    Case("grad_clip_negative", ["finetune", "train.grad_clip=-1"], ["train.grad_clip must be >= 0"]),
    Case("weight_decay_negative", ["finetune", "train.weight_decay=-0.1"], ["train.weight_decay must be >= 0"]),
    Case("micro_batch_zero", ["finetune", "train.micro_batch_size=0"], ["train.micro_batch_size must be >= 1"]),
    Case("max_steps_negative", ["finetune", "train.max_steps=-5"], ["train.max_steps must be >= 1, got -5"]),
    Case("lr_decay_unknown", ["finetune", "train.lr_decay=step"],
         ["train.lr_decay must be linear, cosine or constant"]),
    Case("metric_for_best_typo", ["finetune", "train.metric_for_best=rogueL"],
         ["train.metric_for_best='rogueL' is not reported for data.task='demo'", "rougeL"]),
    Case("metric_for_best_not_for_task", ["prune", "train.metric_for_best=accuracy", "prune.teacher={teacher}"],
         ["train.metric_for_best='accuracy' is not reported for data.task='demo'"]),
    Case("mask_lr_zero", ["prune", "prune.mask_lr=0"], ["prune.mask_lr must be > 0"]),
    Case("lambda_lr_negative", ["prune", "prune.lambda_lr=-0.1"], ["prune.lambda_lr must be > 0"]),
    Case("target_sparsity_one", ["prune", "prune.target_sparsity=1.0"], ["prune.target_sparsity must be in [0, 1)"]),
    Case("decoder_layers_empty", ["prune", "prune.decoder_layers=[]"], ["prune.decoder_layers is an empty list"]),
    Case("method_unknown", ["prune", "prune.method=magnitude"], ["prune.method must be nash, cofi or sft"]),
    Case("sparsity_warmup_negative", ["prune", "prune.sparsity_warmup_steps=-1"],
         ["prune.sparsity_warmup_steps must be >= 0"]),
    Case("kd_weight_negative", ["prune", "distill.kd_weight=-1"], ["distill.kd_weight must be >= 0"]),
    Case("temperature_zero", ["prune", "distill.temperature=0"], ["distill.temperature must be > 0"]),
    Case("atol_negative", ["finalize", "finalize.atol=-1e-4"], ["finalize.atol must be >= 0"]),
    Case("rtol_negative", ["finalize", "finalize.rtol=-1e-4"], ["finalize.rtol must be >= 0"]),
    Case("check_batches_zero", ["finalize", "finalize.check_batches=0"],
         ["finalize.check_batches must be >= 1", "cannot be skipped"]),
    Case("export_dtype_unknown", ["finalize", "model.export_dtype=int8"],
         ["model.export_dtype must be float32, bfloat16 or float16, got 'int8'"]),
    Case("eval_batch_size_zero", ["finetune", "generation.eval_batch_size=0"],
         ["generation.eval_batch_size must be >= 1, got 0"]),
    Case("num_workers_negative", ["finetune", "data.num_workers=-1"], ["data.num_workers must be >= 0"]),
    Case("max_train_samples_zero", ["finetune", "data.max_train_samples=0"], ["data.max_train_samples must be >= 1"]),
    Case("mixture_weight_zero", ["finetune", "data.mixture=[{task: demo, weight: 0}]"],
         ["data.mixture[0].weight must be > 0"]),
    Case("repeats_zero", ["evaluate", "evaluate.repeats=0"], ["evaluate.repeats must be >= 1, got 0"]),
    Case("batch_sizes_empty", ["evaluate", "evaluate.batch_sizes=[]"], ["evaluate.batch_sizes is empty"]),
    Case("batch_sizes_zero", ["evaluate", "evaluate.batch_sizes=[1,0]"], ["evaluate.batch_sizes[1] must be >= 1"]),
    Case("latency_new_tokens_one", ["evaluate", "evaluate.latency_new_tokens=1"],
         ["evaluate.latency_new_tokens must be >= 2"]),
    Case("eval_device_unknown", ["evaluate", "evaluate.device=tpu"], ["evaluate.device must be auto, cpu or cuda"]),
    Case("pipeline_prune_lr_zero", ["pipeline", "pipeline.prune_lr=0"], ["pipeline.prune_lr must be > 0"]),
    Case("estimate_world_size_zero", ["estimate", "estimate.world_size=0"], ["estimate.world_size must be >= 1"]),
    Case("estimate_headroom_above_one", ["estimate", "estimate.headroom=1.5"], ["estimate.headroom must be in (0, 1]"]),
    Case("estimate_unknown_shape", ["estimate", "estimate.model=t5-huge"], ["estimate.model 't5-huge'"]),
    # DeepSpeed configs
    Case("ds_config_missing", ["finetune", "train.ds_config={d}/nope.json"],
         ["train.ds_config {d}/nope.json does not exist", "zero2_fp32.json"]),
    Case("ds_config_bad_json", ["finetune", "train.ds_config={d}/ds.json"],
         ["train.ds_config {d}/ds.json is not valid JSON"],
         setup=_ds('{"zero_optimization": {"stage": 2},}')),
    Case("ds_config_not_utf8", ["finetune", "train.ds_config={d}/ds.json"], ["{d}/ds.json is not UTF-8"],
         setup=_write("ds.json", b'{"zero_optimization": {"stage": 2}} \xff')),
    Case("ds_config_top_level_list", ["finetune", "train.ds_config={d}/ds.json"],
         ["{d}/ds.json must hold a JSON object", "got a list"], setup=_ds([ZERO2])),
    Case("ds_config_bf16_not_object", ["finetune", "train.ds_config={d}/ds.json"],
         ['"bf16" must be an object such as {"enabled": true}, got true'], setup=_ds({"bf16": True, **ZERO2})),
    Case("ds_config_zero_stage_text", ["finetune", "train.ds_config={d}/ds.json"],
         ['zero_optimization.stage must be 0, 1, 2 or 3, got "two"'],
         setup=_ds({"zero_optimization": {"stage": "two"}})),
    Case("ds_config_zero_stage_5", ["finetune", "train.ds_config={d}/ds.json"],
         ["zero_optimization.stage must be 0, 1, 2 or 3, got 5"], setup=_ds({"zero_optimization": {"stage": 5}})),
    Case("ds_config_bf16_on_cpu", ["finetune", "train.ds_config=ds_configs/zero2_bf16.json"],
         ["enables bf16 but no GPU is present", "zero2_fp32.json"]),
    Case("ds_config_batch_disagrees", ["finetune", "train.ds_config={d}/ds.json"],
         ["DeepSpeed config sets train_micro_batch_size_per_gpu=3 but the run gives 16"],
         setup=_ds({"train_micro_batch_size_per_gpu": 3, **ZERO2})),
    Case("ds_config_bucket_in_words", ["finetune", "train.ds_config={d}/ds.json"],
         ["train.ds_config: DeepSpeed refuses it", "reduce_bucket_size", "valid integer"],
         setup=_ds({"zero_optimization": {"stage": 2, "reduce_bucket_size": "big"}})),
    Case("ds_config_unknown_zero_key", ["finetune", "train.ds_config={d}/ds.json"],
         ["train.ds_config: DeepSpeed refuses it", "stage3_prefetch_bucket", "Extra inputs are not permitted"],
         setup=_ds({"zero_optimization": {"stage": 2, "stage3_prefetch_bucket": 5}})),
    Case("ds_config_clipping_text", ["finetune", "train.ds_config={d}/ds.json"],
         ["gradient_clipping must be a number >= 0 or \"auto\", got 'x'"],
         setup=_ds({"gradient_clipping": "x", **ZERO2})),
    Case("ds_config_optimizer_section", ["finetune", "train.ds_config={d}/ds.json"],
         ["DeepSpeed config has 'optimizer'", "remove the section"],
         setup=_ds({"optimizer": {"type": "Adam"}, **ZERO2})),
    # data
    Case("data_file_missing", ["finetune", "data.task={d}/nope.jsonl"], ["data file {d}/nope.jsonl does not exist"]),
    Case("data_column_missing", ["finetune", "data.task={d}/d.jsonl", "data.source_column=dialogue"],
         ["column 'dialogue' not found", "{d}/d.jsonl", "data.source_column"],
         setup=_write("d.jsonl", _rows(40, text="a b", summary="a"))),
    Case("data_file_empty", ["finetune", "data.task={d}/d.jsonl"], ["{d}/d.jsonl) is empty"],
         setup=_write("d.jsonl", "")),
    Case("data_file_garbage", ["finetune", "data.task={d}/d.jsonl"], ["could not read {d}/d.jsonl", "JSON"],
         setup=_write("d.jsonl", "this is not json\n{\n")),
    Case("data_dir_without_files", ["finetune", "data.task={d}/data"], ["data directory {d}/data holds no"],
         setup=_write("data/readme.txt", "nothing here")),
    Case("data_task_unknown", ["finetune", "data.task=samsun"], ["unknown task 'samsun'", "samsum"]),
    Case("data_smaller_than_a_batch", ["finetune", "data.max_train_samples=8", "train.micro_batch_size=16"],
         ["the training set has 8 examples, fewer than one global batch (16"]),
    Case("data_eval_split_unknown", ["finetune", "data.eval_split=dev"],
         ["task demo has no split 'dev' (data.eval_split)", "data.eval_split=validation"]),
    Case("data_unsupported_format", ["finetune", "data.train_file={d}/d.txt"], ["unsupported format '.txt'"],
         setup=_write("d.txt", "hello\n")),
    Case("data_validation_file_missing", ["finetune", "data.validation_file={d}/val.jsonl"],
         ["data file {d}/val.jsonl (validation split of task demo) does not exist"]),
    # model directories
    Case("model_dir_missing", ["finetune", "model.name_or_path={d}/no_model"],
         ["model.name_or_path={d}/no_model", "has no config.json"]),
    Case("model_dir_without_config", ["finetune", "model.name_or_path={d}/model"],
         ["model.name_or_path={d}/model", "has no config.json"],
         setup=_model_copy(lambda m: (m / "config.json").unlink())),
    Case("model_config_bad_json", ["finetune", "model.name_or_path={d}/model"],
         ["model.name_or_path={d}/model", "{d}/model/config.json is not a readable model config"],
         setup=_model_copy(lambda m: (m / "config.json").write_text("{"))),
    Case("model_family_unsupported", ["finetune", "model.name_or_path={gpt2}", "model.tokenizer={teacher}"],
         ["unsupported model_type 'gpt2'"]),
    Case("model_safetensors_truncated", ["finetune", "model.name_or_path={d}/model"],
         ["model weights {d}/model/model.safetensors are unreadable", "truncated"],
         setup=_model_copy(lambda m: _truncate(m / "model.safetensors"))),
    Case("model_safetensors_garbage", ["finetune", "model.name_or_path={d}/model"],
         ["model weights {d}/model/model.safetensors are unreadable"],
         setup=_model_copy(lambda m: (m / "model.safetensors").write_bytes(b"\x00garbage" * 64))),
    Case("model_safetensors_missing", ["finetune", "model.name_or_path={d}/model"],
         ["model directory {d}/model holds no weights"],
         setup=_model_copy(lambda m: (m / "model.safetensors").unlink())),
    Case("model_shard_missing", ["finetune", "model.name_or_path={d}/model"],
         ["weight file model-00001-of-00002.safetensors named by model.safetensors.index.json is missing"],
         setup=_model_copy(_index_with_missing_shard)),
    Case("model_config_disagrees_with_weights", ["finetune", "model.name_or_path={d}/model"],
         ["the weights of '{d}/model' do not match its config.json"], setup=_model_copy(_mismatched_config)),
    Case("model_preset_unknown", ["finetune", "model.name_or_path=preset:huge-t5"],
         ["model.name_or_path=preset:huge-t5: unknown preset", "preset:tiny-t5"]),
    Case("model_hub_offline", ["finetune", "model.name_or_path=t5-large"],
         ["model.name_or_path=t5-large", "a hub name needs the network or a filled HF cache"]),
    Case("tokenizer_missing", ["finetune", "model.tokenizer={d}/no_tokenizer"],
         ["tokenizer directory {d}/no_tokenizer does not exist", "model.tokenizer"]),
    # prune
    Case("teacher_missing", ["prune", "prune.teacher={d}/no_teacher"],
         ["prune.teacher={d}/no_teacher", "looks local but has no config.json"]),
    Case("prune_before_finetune", ["prune", "--config", "{repo}/configs/demo.yaml"],
         ["prune.teacher=runs/demo/finetune/model (run 'run.py finetune' with the same output_dir first)",
          "has no config.json"],
         output=False),
    Case("teacher_family_unsupported", ["prune", "prune.teacher={gpt2}"], ["unsupported model_type 'gpt2'"]),
    Case("decoder_layers_too_many", ["prune", "prune.teacher={teacher}", "prune.decoder_layers=9"],
         ["k (decoder layers to keep) must be an int in [1, L=4], got k=9"]),
    Case("decoder_layers_out_of_range", ["prune", "prune.teacher={teacher}", "prune.decoder_layers=[0,7]"],
         ["kept decoder layers must lie in [0, 4), got [0, 7]"]),
    Case("teacher_safetensors_truncated", ["prune", "prune.teacher={d}/model"],
         ["prune.teacher={d}/model", "model.safetensors are unreadable"],
         setup=_model_copy(lambda m: _truncate(m / "model.safetensors", 0.9))),
    # finalize and checkpoints
    Case("finalize_before_prune", ["finalize"], ["run 'run.py prune' with the same output_dir first",
                                                 "finalize.checkpoint"]),
    Case("finalize_checkpoint_missing", ["finalize", "finalize.checkpoint={d}/nothing"],
         ["checkpoint {d}/nothing does not exist"]),
    Case("finalize_checkpoint_incomplete", ["finalize"], ["holds no complete checkpoint"],
         setup=_write("run/prune/checkpoints/step-0000001/mp_rank_00_model_states.pt", b"")),
    Case("finalize_meta_missing", ["finalize"], ["no prune_meta.json"], setup=_prune_checkpoint(meta=None)),
    Case("finalize_meta_bad_json", ["finalize"], ["prune_meta.json is not valid JSON"],
         setup=_prune_checkpoint(meta="{not json")),
    Case("finalize_meta_missing_keys", ["finalize"],
         ["prune_meta.json lacks family, teacher, kept_decoder_layers, student_config"],
         setup=_prune_checkpoint(meta={"method": "nash"})),
    Case("finalize_method_mismatch", ["finalize", "prune.method=cofi"],
         ["was trained with method 'nash' but prune.method is 'cofi'"], setup=_prune_checkpoint()),
    Case("finalize_marker_garbage", ["finalize"], ["COMPLETE is not a readable checkpoint marker"],
         setup=_prune_checkpoint(complete="{")),
    Case("finalize_states_truncated", ["finalize"], ["could not read checkpoint file", "mp_rank_00_model_states.pt"],
         setup=_prune_checkpoint(states=b"PK\x03\x04 truncated")),
    Case("finalize_crafted_pickle_system", ["finalize"],
         ["refused to load {d}/run/prune/checkpoints/step-0000001/mp_rank_00_model_states.pt", "posix.system"],
         setup=_prune_checkpoint(crafted="system", method="nash"), marker=True),
    Case("finalize_crafted_pickle_exec_zero2", ["finalize"], ["refused to load", "model_states.pt", "exec"],
         setup=_prune_checkpoint(crafted="exec", method="nash", zero_stage=2), marker=True),
    Case("finalize_crafted_pickle_elsewhere", ["finalize", "finalize.checkpoint={d}/foreign"],
         ["refused to load {d}/foreign/step-0000001/mp_rank_00_model_states.pt"],
         setup=lambda d: (write_crafted_checkpoint(d / "foreign", d / "ran", method="nash"),
                          (d / "foreign" / "prune_meta.json").write_text(json.dumps(_meta()))), marker=True),
    Case("finalize_finished", ["finalize"], ["already holds a finished run", "overwrite=true"],
         setup=_finished("finalize")),
    # resume
    Case("resume_crafted_pickle", ["finetune"],
         ["refused to load {d}/run/finetune/checkpoints/step-0000001/mp_rank_00_model_states.pt"],
         setup=lambda d: write_crafted_checkpoint(d / "run" / "finetune" / "checkpoints", d / "ran", how="exec"),
         marker=True),
    Case("resume_other_method", ["finetune"], ["was written by method 'nash', not 'finetune'"],
         setup=_write("run/finetune/checkpoints/step-0000001/COMPLETE",
                      json.dumps({"step": 1, "best": {}, "world_size": 1, "zero_stage": 0, "method": "nash"}))),
    # output paths and finished stages
    Case("output_dir_is_a_file", ["finetune", "output_dir={d}/out.txt"], ["{d}/out.txt is a file, not a directory"],
         setup=_write("out.txt", "x"), output=False),
    Case("output_dir_under_a_file", ["finetune", "output_dir={d}/out.txt/run"], ["{d}/out.txt is a file"],
         setup=_write("out.txt", "x"), output=False),
    Case("output_dir_not_writable", ["finetune", "output_dir=/proc/nash-ds-run"],
         ["output_dir=/proc/nash-ds-run is not writable"], output=False),
    Case("finetune_finished", ["finetune"], ["already holds a finished run", "overwrite=true"],
         setup=_finished("finetune")),
    Case("overwrite_keeps_the_old_output_on_bad_input", ["finetune", "overwrite=true", "data.task={d}/nope.jsonl"],
         ["data file {d}/nope.jsonl does not exist"], setup=_finished("finetune")),
    Case("overrides_before_the_stage", ["train.lr=-1", "--config", "{repo}/configs/demo.yaml", "finetune"],
         ["train.lr must be > 0, got -1.0"]),
    Case("config_after_overrides", ["prune", "prune.method=cofi", "--config", "{d}/c.yaml", "prune.decoder_layers=x"],
         ["prune.decoder_layers: expected int or list or null, got 'x'"], setup=_write("c.yaml", "prune:\n  method: nash\n")),
    Case("evaluate_finished", ["evaluate"], ["already holds a finished evaluation", "overwrite=true"],
         setup=_finished("evaluate", "report.json")),
    # evaluate
    Case("evaluate_before_anything", ["evaluate"], ["holds no finished model", "evaluate.model"]),
    Case("evaluate_model_missing", ["evaluate", "evaluate.model={d}/nope"],
         ["evaluate.model={d}/nope", "has no config.json"]),
    Case("evaluate_model_truncated", ["evaluate", "evaluate.model={d}/model"],
         ["evaluate.model={d}/model", "model.safetensors are unreadable"],
         setup=_model_copy(lambda m: _truncate(m / "model.safetensors"))),
]

SHARED: dict[str, Path] = {}


def _fill(text: str, d: Path) -> str:
    for name, value in (("d", d), ("teacher", SHARED["teacher"]), ("gpt2", SHARED["gpt2"]), ("repo", REPO)):
        text = text.replace("{" + name + "}", str(value))
    return text


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every case through one worker process; {case id: code, stderr, changed paths, seconds}."""
    from nash_ds.demo import DEMO_TOKENIZER
    from nash_ds.models import load_model
    from nash_ds.stages.common import load_tokenizer, model_kwargs_from_tokenizer

    root = tmp_path_factory.mktemp("bad_inputs")
    SHARED["teacher"] = root / "shared" / "teacher"
    tok = load_tokenizer(str(DEMO_TOKENIZER))
    load_model("preset:tiny-t5", **model_kwargs_from_tokenizer(tok)).save_pretrained(SHARED["teacher"])
    tok.save_pretrained(SHARED["teacher"])
    SHARED["gpt2"] = root / "shared" / "gpt2"
    SHARED["gpt2"].mkdir()
    (SHARED["gpt2"] / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_embd": 8,
                                                            "n_head": 2, "vocab_size": 100}))
    (root / "tmp").mkdir()
    jobs = []
    for case in CASES:
        d = root / "cases" / case.id
        d.mkdir(parents=True)
        if case.setup:
            case.setup(d)
        argv = [_fill(a, d) for a in case.argv] + ([f"output_dir={d}/run"] if case.output else [])
        jobs.append({"id": case.id, "argv": argv, "cwd": str(d), "watch": [str(root / "cases"), str(root / "shared")]})
    (root / "cases.json").write_text(json.dumps(jobs))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(REPO / "tests" / "cli_worker.py"), str(root / "cases.json"),
                        str(root / "results.json")], check=False, capture_output=True, text=True, timeout=900,
                       env=env(TMPDIR=str(root / "tmp")))
    assert r.returncode == 0, f"the worker failed:\n{r.stderr[-6000:]}"
    out = json.loads((root / "results.json").read_text())
    out["_meta"] = {"root": str(root), "seconds": time.perf_counter() - t0}
    return out


def test_the_catalogue_is_large_and_distinct():
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)
    assert len({(tuple(c.argv), c.setup is None) for c in CASES}) > 60


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(results, case):
    d = Path(results["_meta"]["root"]) / "cases" / case.id
    got = results[case.id]
    stderr = got["stderr"]
    where = f"exit {got['code']}, {got['seconds']} s\n--- stderr\n{stderr[-4000:]}\n--- stdout\n{got['stdout'][-2000:]}"
    assert got["code"] == 2, where
    assert "Traceback" not in stderr, where
    errors = [line for line in stderr.splitlines() if line.startswith("nash-ds: error:")]
    assert len(errors) == 1, where
    for fragment in case.fragments:
        assert _fill(fragment, d) in errors[0], f"{_fill(fragment, d)!r} not in the error line\n{where}"
    assert got["changed"] == [], f"written or changed: {got['changed']}\n{where}"
    if case.marker:
        assert not (d / "ran").exists(), "the crafted checkpoint's code ran"


def test_the_whole_catalogue_is_quick(results):
    took = results["_meta"]["seconds"]
    slowest = sorted(((v["seconds"], k) for k, v in results.items() if k != "_meta"), reverse=True)[:5]
    assert took < 180, f"{took:.0f} s; slowest cases {slowest}"
    print(f"catalogue: {len(CASES)} cases in {took:.1f} s; slowest {slowest}")  # shown with -s


def test_keys_named_in_error_messages_exist():
    """Every ``section.key`` an error message of nash_ds suggests is a real config key."""
    import ast
    import dataclasses
    import re
    import typing

    from nash_ds.config import RunConfig

    def keys(cls, prefix=""):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            yield prefix + f.name
            if dataclasses.is_dataclass(hints[f.name]):
                yield from keys(hints[f.name], prefix + f.name + ".")

    valid = set(keys(RunConfig))
    sections = sorted(k for k in valid if "." not in k and dataclasses.is_dataclass(
        typing.get_type_hints(RunConfig)[k]))
    pattern = re.compile(r"\b(" + "|".join(sections) + r")\.([a-z_]+)(?![a-z_.]*\()")
    wrong = []
    for path in sorted((REPO / "nash_ds").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            for part in ast.walk(node.exc):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    for m in pattern.finditer(part.value):
                        key = f"{m.group(1)}.{m.group(2)}"
                        if key not in valid and m.group(2) not in ("json", "jsonl", "yaml", "safetensors"):
                            wrong.append(f"{path.relative_to(REPO)}:{part.lineno} {key}")
    assert not wrong, wrong


def test_the_worker_sees_writes_tracebacks_and_exit_codes(tmp_path, monkeypatch):
    """What the catalogue relies on: a write, a vanished file and an escaped exception are all recorded."""
    from tests.cli_worker import run_case

    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "old.txt").write_text("x")

    def writes_then_fails(argv):
        (tmp_path / "new.txt").write_text("y")
        (tmp_path / "old.txt").unlink()
        raise RuntimeError("boom")

    got = run_case(writes_then_fails, {"id": "x", "argv": [], "cwd": str(tmp_path), "watch": [str(tmp_path)]})
    assert got["code"] == "uncaught" and "Traceback" in got["stderr"] and "boom" in got["stderr"]
    assert got["changed"] == [str(tmp_path / "new.txt"), str(tmp_path / "old.txt")]
    got = run_case(lambda argv: 2, {"id": "y", "argv": [], "cwd": str(tmp_path), "watch": [str(tmp_path)]})
    assert got["code"] == 2 and got["changed"] == []


def test_other_ranks_report_late_and_only_if_not_stopped(monkeypatch, capsys):
    """A rank other than 0 prints its error after the grace period (an error only it met is not lost), and not at
    all when the launcher stops it meanwhile (rank 0 already said it)."""
    from nash_ds import cli, stop

    monkeypatch.setenv("NASH_ERROR_GRACE_S", "0.2")
    monkeypatch.setenv("RANK", "1")
    code, late = cli._fail(2, ValueError("data file x does not exist"), debug=False, rank_zero=False)
    assert code == 2 and capsys.readouterr().err == ""
    cli._report_late(late, None, debug=False)
    assert capsys.readouterr().err == "nash-ds: error: [rank 1] data file x does not exist\n"
    monkeypatch.setitem(stop._STATE, "requested", True)
    cli._report_late(late, None, debug=False)
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_two_ranks_print_one_error_line(tmp_path):
    """Through the DeepSpeed launcher on 2 ranks, a bad input met by both ranks is reported once."""
    from tests.helpers import run_nash

    for bad in ("train.lrr=1", f"data.task={tmp_path}/nope.jsonl"):
        r = run_nash("finetune", f"output_dir={tmp_path}/run", bad, ranks=2, check=False)
        assert r.returncode == 2, r.stderr[-3000:]
        assert (r.stdout + r.stderr).count("nash-ds: error:") == 1, r.stderr[-3000:]
        assert "Traceback" not in r.stderr and not (tmp_path / "run").exists()
