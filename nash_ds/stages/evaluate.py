"""``evaluate``: task metric, parameter counts / sparsity and honest latency of HF seq2seq models.

``run`` evaluates ``evaluate.model`` (default: the run's newest model) next to the dense
``evaluate.reference`` (default: ``<output_dir>/finetune/model`` when it exists and differs);
``compare`` evaluates any named models side by side (the pipeline's teacher vs pruned table).
Both write ``report.json``, ``report.md``, ``speedup.png`` and ``tensorboard/`` into the stage
directory in one rename, and refuse to replace a finished report unless ``overwrite=true``.

Rank 0 does all the work (latency must be measured by one process); other ranks wait and learn
of any failure. Latency comes from ``nash_ds.latency`` (forced output length, device sync,
medians, models interleaved); the eval-set generation time is reported too but depends on
early stops, so speedups use the latency rows.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from nash_ds import dist, latency, stop
from nash_ds.config import RunConfig, to_dict
from nash_ds.errors import UserError
from nash_ds.metrics import quality_kept

log = logging.getLogger(__name__)

REPORT = "report.json"


# --------------------------------------------------------------------------- models


def default_model(cfg: RunConfig) -> Path:
    """The newest finished model of the run: final, then finalize, then finetune."""
    out = Path(cfg.output_dir)
    for stage in ("final", "finalize", "finetune"):
        if (out / stage / "model" / "config.json").is_file():
            return out / stage / "model"
    raise UserError(f"evaluate.model is not set and {out} holds no finished model (final/, finalize/ or "
                    "finetune/ model/); set evaluate.model=<HF directory or hub name>")


def load_for_eval(name_or_path: str | Path):
    """A stock or pruned (per-layer widths) seq2seq model in eval mode; pruned exports are built
    from the installed nash_ds classes, never from code inside the directory."""
    from nash_ds.models import load_model

    path = Path(name_or_path).expanduser()
    return load_model(str(path) if path.exists() else str(name_or_path)).eval()


def param_counts(model) -> dict:
    """``models.count_params`` of a stock or pruned model."""
    from nash_ds.models import count_params, family_for

    return count_params(model, family_for(model.config))


def pruning_report_of(path: str | Path) -> dict | None:
    """The pruning_report.json beside a model (finalize/model), or the run's finalize report for the final
    fine-tune of its export (final/model, the same widths); None for other models."""
    p = Path(path)
    beside, finalize = p.parent / "pruning_report.json", p.parent.parent / "finalize" / "pruning_report.json"
    report = beside if beside.is_file() else finalize if p.parent.name == "final" and finalize.is_file() else None
    return None if report is None else json.loads(report.read_text())


def method_of(path: str | Path, name: str) -> str:
    """dense / nash / cofi / sft / sft+kd: the label of the model's pruning report, "dense" for a finetune
    stage's model, else ``name``."""
    report = pruning_report_of(path)
    if report is not None:
        return str(report.get("label", report.get("method", name)))
    return "dense" if Path(path).parent.name == "finetune" else name


# --------------------------------------------------------------------------- task metric


@torch.no_grad()
def task_metrics(model, tokenizer, cfg: RunConfig, eval_set) -> dict:
    """Generate on the eval split with ``cfg.generation``; metrics of ``metrics.metric_names_for``, and the
    fraction of distinct predictions (near 0: the model writes the same text whatever its input)."""
    from nash_ds.data import Seq2SeqCollator
    from nash_ds.metrics import compute_metrics, metric_names_for

    gen = cfg.generation
    collate = Seq2SeqCollator(tokenizer)
    device = next(model.parameters()).device
    preds, refs = [], []
    t0 = time.perf_counter()
    for start in range(0, len(eval_set), gen.eval_batch_size):
        rows = [eval_set[i] for i in range(start, min(len(eval_set), start + gen.eval_batch_size))]
        batch = collate(rows)
        out = model.generate(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                             max_new_tokens=gen.max_new_tokens, num_beams=gen.num_beams, do_sample=False)
        preds += [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
        refs += [r["references"] for r in rows]
        stop.at("evaluate:generate", "evaluate (generation)")
    latency.synchronize(device)
    seconds = time.perf_counter() - t0
    names = metric_names_for(cfg.data.task) if not cfg.data.mixture else None
    metrics = compute_metrics(preds, refs, **({"names": names} if names else {}))
    return {"metrics": metrics, "num_examples": len(preds), "eval_generate_s": seconds,
            "distinct_predictions": len(set(preds)) / max(1, len(preds)),
            "predictions": preds,
            "examples": [{"prediction": p, "reference": r[0] if len(r) == 1 else r} for p, r in zip(preds[:5], refs[:5])]}


def primary_metric(cfg: RunConfig, metrics: dict) -> str:
    return cfg.train.metric_for_best if cfg.train.metric_for_best in metrics else next(iter(metrics))


# --------------------------------------------------------------------------- side by side


def _tokenizer_for(cfg: RunConfig, model_path: Path):
    from nash_ds.stages import common

    if cfg.model.tokenizer is None and (model_path / "tokenizer_config.json").is_file():
        return common.load_tokenizer(str(model_path))
    return common.load_tokenizer(common.tokenizer_source(cfg))


def compare_rows(cfg: RunConfig, models: dict[str, str | Path], *, reference: str | Path | None = None) -> dict:
    """Evaluate ``models`` (name -> HF dir) side by side; the first one is the speed baseline.

    Returns ``{"rows": [...], "models": {name: details}, "metric": name}``; each row holds the
    metric, quality kept (% of the first model's), params, sparsity vs ``reference``, latency at
    the first batch size and the speedup over the first model. Rank 0 only.
    """
    from nash_ds.data import build_datasets

    from nash_ds import serving

    e = cfg.evaluate
    device, dtype = latency.resolve_device(e.device), latency.resolve_dtype(e.dtype)
    paths = {name: Path(p) for name, p in models.items()}
    with_ct2 = "ctranslate2" in serving.engines_of(e.engine)
    for path in paths.values() if with_ct2 else ():  # per-layer widths: refused before any work
        serving.check_convertible(path, key="evaluate.engine=ctranslate2: model")
    tokenizer = _tokenizer_for(cfg, next(iter(paths.values())))
    eval_set = build_datasets(cfg.data, tokenizer, splits=(cfg.data.eval_split,), seed=cfg.seed)[cfg.data.eval_split]
    loaded, details = {}, {}
    for name, path in paths.items():
        model = latency.prepare_model(load_for_eval(path), device=device, dtype=dtype)
        report = pruning_report_of(path)
        details[name] = {"path": str(path), "method": method_of(path, name), "class": type(model).__name__,
                         "predicted_speedup": None if report is None else report.get("predicted_speedup"),
                         "params": param_counts(model), **task_metrics(model, tokenizer, cfg, eval_set)}
        loaded[name] = model
    ref_params = None
    if reference is not None:
        same = [d for d in details.values() if Path(d["path"]) == Path(reference)]
        ref_params = same[0]["params"] if same else param_counts(load_for_eval(reference))
    from nash_ds.models.base import sparsity

    for d in details.values():
        d["sparsity"] = sparsity(d["params"], ref_params) if ref_params else None
    lat = latency.latency_table(loaded, batch_sizes=e.batch_sizes, beams=sorted({1, cfg.generation.num_beams}),
                                source_length=e.latency_source_length, new_tokens=e.latency_new_tokens,
                                warmup=e.warmup, repeats=e.repeats, seed=cfg.seed)
    base_name = next(iter(paths))
    for row in lat:
        base = next(r for r in lat if r["model"] == base_name and r["batch_size"] == row["batch_size"]
                    and r["num_beams"] == row["num_beams"])
        row["speedup"] = base["generate_ms"] / row["generate_ms"]
        details[row["model"]].setdefault("latency", []).append({k: v for k, v in row.items() if k != "model"})
    metric = primary_metric(cfg, details[base_name]["metrics"])
    base_value = details[base_name]["metrics"][metric]
    rows = []
    for name, d in details.items():
        first = d["latency"][0]
        rows.append({
            "model": name, "method": d["method"], "metric": metric, "value": d["metrics"][metric],
            "quality_kept": quality_kept(d["metrics"][metric], base_value, metric),
            "params": d["params"]["total"], "decoder_layers": d["params"]["decoder_layers"],
            "sparsity_encoder": d["sparsity"]["encoder"] if d["sparsity"] else None,
            "sparsity_model": d["sparsity"]["prunable_model"] if d["sparsity"] else None,
            "batch_size": first["batch_size"], "num_beams": first["num_beams"],
            "encoder_ms": first["encoder_ms"], "decoder_ms_per_token": first["decoder_ms_per_token"],
            "generate_ms": first["generate_ms"], "speedup": first["speedup"],
            "predicted_speedup": d["predicted_speedup"],
            "device": first["device"], "dtype": first["dtype"],
            "eval_generate_s": d["eval_generate_s"],
        })
    if any(r["predicted_speedup"] is not None for r in rows):  # the baseline is 1x by definition
        rows[0]["predicted_speedup"] = rows[0]["predicted_speedup"] or 1.0
    result = {"rows": rows, "models": details, "metric": metric, "baseline": base_name,
              "reference": None if reference is None else str(reference)}
    if with_ct2:  # the same forced length and interleaving, in CTranslate2; speedups within the engine
        engine_rows = [{"engine": "transformers", "model": r["model"], "batch_size": r["batch_size"],
                        "generate_ms": r["generate_ms"], "tokens_per_s": r["tokens_per_s"], "speedup": r["speedup"]}
                       for r in lat if r["num_beams"] == 1]
        engine_rows += serving.ctranslate2_latency(
            loaded, paths, tokenizer, batch_sizes=e.batch_sizes, source_length=e.latency_source_length,
            new_tokens=e.latency_new_tokens, warmup=e.warmup, repeats=e.repeats, seed=cfg.seed,
            device=device.type, compute_type="bfloat16" if dtype == torch.bfloat16 else "float32")
        result["engine_rows"] = engine_rows
    return result


def markdown(result: dict, cfg: RunConfig) -> str:
    """The side-by-side table plus every latency row, as a person reads them."""
    e = cfg.evaluate
    first = result["rows"][0]
    lines = [f"## Evaluation ({cfg.data.task}, split {cfg.data.eval_split})", "",
             (f"Latency: batch {first['batch_size']}, beams {first['num_beams']}, {e.latency_source_length} tokens in, "
             f"exactly {e.latency_new_tokens} out, median of {e.repeats} after {e.warmup} warm-up, "
             f"{first['device']} / {first['dtype']}; speedup vs {result['baseline']}."), "",
             (f"| model | method | {result['metric']} | kept % | params (M) | dec. layers | enc. sparsity | "
             "generate ms | decoder ms/token | encoder ms | speedup | predicted speedup |"),
             "|" + "|".join(["---"] * 12) + "|"]
    for r in result["rows"]:
        sp = "" if r["sparsity_encoder"] is None else f"{r['sparsity_encoder']:.3f}"
        kept = "" if r["quality_kept"] is None else f"{r['quality_kept']:.1f}"
        predicted = "" if r.get("predicted_speedup") is None else f"{r['predicted_speedup']:.2f}x"
        lines.append(f"| {r['model']} | {r['method']} | {r['value']:.2f} | {kept} | "
                     f"{r['params'] / 1e6:.2f} | {r['decoder_layers']} | {sp} | {r['generate_ms']:.1f} | "
                     f"{r['decoder_ms_per_token']:.2f} | {r['encoder_ms']:.1f} | {r['speedup']:.2f}x | {predicted} |")
    lines += ["", "All latency rows:", "", ("| model | batch | beams | generate ms | decoder ms/token | encoder ms | "
              "tokens/s | speedup |"), "|" + "|".join(["---"] * 8) + "|"]
    for name, d in result["models"].items():
        for r in d["latency"]:
            lines.append(f"| {name} | {r['batch_size']} | {r['num_beams']} | {r['generate_ms']:.1f} | "
                         f"{r['decoder_ms_per_token']:.2f} | {r['encoder_ms']:.1f} | {r['tokens_per_s']:.1f} | "
                         f"{r['speedup']:.2f}x |")
    if result.get("engine_rows"):
        lines += ["", f"Engines (greedy, beams 1; speedup vs {result['baseline']} in the same engine):", "",
                  "| engine | model | batch | generate ms | tokens/s | speedup |", "|" + "|".join(["---"] * 6) + "|"]
        lines += [f"| {r['engine']} | {r['model']} | {r['batch_size']} | {r['generate_ms']:.1f} | "
                  f"{r['tokens_per_s']:.1f} | {r['speedup']:.2f}x |" for r in result["engine_rows"]]
    return "\n".join(lines) + "\n"


def _write(result: dict, cfg: RunConfig, stage_dir: Path) -> None:
    """report.json, report.md, speedup.png and TensorBoard scalars, published in one rename."""
    from torch.utils.tensorboard import SummaryWriter

    from nash_ds.export import atomic_dir
    from nash_ds.plot import plot_points, points_from_report

    # a leftover directory without a report is not a finished run: replace it
    predictions = {name: d.get("predictions") for name, d in result["models"].items()}
    result = {**result, "models": {name: {k: v for k, v in d.items() if k != "predictions"}
                                   for name, d in result["models"].items()}}
    with atomic_dir(stage_dir, overwrite=cfg.overwrite or not (stage_dir / REPORT).exists()) as tmp:
        (tmp / REPORT).write_text(json.dumps(result, indent=1, default=str))
        (tmp / "predictions.json").write_text(json.dumps(predictions, indent=0))
        (tmp / "report.md").write_text(markdown(result, cfg))
        writer = SummaryWriter(str(tmp / "tensorboard"))
        for row in result["rows"]:
            for key in ("value", "quality_kept", "params", "generate_ms", "decoder_ms_per_token", "encoder_ms",
                        "speedup", "predicted_speedup", "sparsity_encoder", "sparsity_model"):
                if row[key] is not None:
                    writer.add_scalar(f"{row['model']}/{key}", float(row[key]), 0)
        writer.add_text("report", markdown(result, cfg), 0)
        writer.close()
        points = points_from_report(result)
        if len(points) > 1:  # a baseline and at least one model with a defined quality kept
            plot_points(points, tmp / "speedup.png", title=f"{cfg.data.task}: quality vs speed")
        stop.at("evaluate:publish", "evaluate (before publishing the report)")


def compare(cfg: RunConfig, *, models: dict[str, str | Path], reference: str | Path | None = None,
            stage_dir: Path) -> str:
    """Evaluate ``models`` side by side into ``stage_dir``; returns the markdown table (every rank).

    A finished report in ``stage_dir`` is reused (as the pipeline skips finished stages) unless
    ``overwrite=true``.
    """
    def work():
        if (stage_dir / REPORT).exists() and not cfg.overwrite:
            log.info("evaluate: %s is finished, reusing it", stage_dir / REPORT)
            return (stage_dir / "report.md").read_text()
        result = compare_rows(cfg, models, reference=reference)
        result["config"] = to_dict(cfg)
        result["environment"] = _environment()
        _write(result, cfg, stage_dir)
        return markdown(result, cfg)

    return dist.on_rank_zero(work)


def run(cfg: RunConfig, *, stage_dir: Path) -> dict:
    """The ``evaluate`` stage: ``evaluate.model`` (after the dense reference, when there is one), through
    ``compare``; a finished report is refused unless overwrite=true."""
    from nash_ds.stages import common

    common.check_not_finished(cfg, stage_dir, marker=REPORT, what="evaluation")
    common.check_output_dir(cfg, stage_dir)

    def chosen():
        model = Path(cfg.evaluate.model) if cfg.evaluate.model else default_model(cfg)
        reference = cfg.evaluate.reference
        for key, source in (("evaluate.model", cfg.evaluate.model), ("evaluate.reference", reference)):
            if source is not None:
                common.check_model_source(key, source)
        dense = Path(cfg.output_dir) / "finetune" / "model"
        if reference is None and (dense / "config.json").is_file() and dense.resolve() != model.resolve():
            reference = dense
        return {"reference": reference, "model": model} if reference is not None else {"model": model}

    models = dist.on_rank_zero(chosen)
    table = compare(cfg, models=models, reference=models.get("reference"), stage_dir=stage_dir)
    log.info("%s", table)
    rows = dist.on_rank_zero(lambda: json.loads((stage_dir / REPORT).read_text())["rows"])
    return {"stage": "evaluate", "report": str(stage_dir / REPORT), "rows": rows}


def _environment() -> dict:
    import platform

    import transformers

    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host_cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
