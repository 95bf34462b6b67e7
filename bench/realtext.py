"""Real text: quality kept against speedup on code summarization, NASH vs SFT vs CoFi, with seeds.

The task is CodeSearchNet / CodeT5's (a Python function's code -> the first sentence of its
docstring), built offline from the installed packages' source (``bench/docstring_corpus.py``), with a
sentencepiece tokenizer trained on its train split (``bench/realtext_tokenizer.py``). Every step runs
through ``run.py`` as users run it, resumably (a finished stage or recipe is skipped):

1. corpus and tokenizer (built once into ``<out>/corpus`` and ``<out>/tokenizer``);
2. the teacher: a T5 v1.1-shaped model (gated-GELU, untied head; 6+6 layers, d_model 128) initialised
   at random and fine-tuned from scratch (``run.py finetune``) -> ``<out>/teacher/finetune/model``, then
   checked: if fewer than ``--min-teacher-distinct`` of its validation outputs differ, or it scores no better
   than one fixed text for every function, it has learnt the targets' prior, not the task, and the recipes
   are refused (a table of its students would compare nothing);
3. the recipes, each ``run.py pipeline`` (prune -> finalize -> final fine-tune) in
   ``<out>/<recipe>-s<seed>/`` with the teacher linked in:
   NASH k = 1, 2, 3 of 6 at encoder sparsity 0.3 and k = 2 at 0.5, NASH with ``target_speedup`` 2x,
   SFT (cross-entropy only) k = 1, 2, 3, SFT+KD k = 2, and CoFi at the sparsity whose measured speedup
   matches NASH k=2's (from CoFi probes at ``--cofi-probes``, interpolated; when the higher probe is already
   slower than NASH k=2, it is the match); NASH k=2, SFT k=2 and CoFi matched with 3 seeds, the others
   with one;
4. one evaluation in this process (``nash_ds.stages.evaluate.compare_rows``): every final model and the
   teacher on the test split (ROUGE-L, BLEU), parameters, and generation latency timed interleaved
   (so each speedup and each quality-kept ratio comes from one run), then the table as mean +- std
   over seeds and the plot ``docs/realtext_quality_vs_speedup.png``.

    python bench/realtext.py --out /work/realtext/bench                      # the whole benchmark
    python bench/realtext.py --out /work/realtext/bench --evaluate-only      # re-evaluate finished runs
    python bench/realtext.py --out ... --recipes sft-k1,sft-k3 --train-only --threads 1 &   # side by side:
    python bench/realtext.py --out ... --recipes nash-k1,nash-k3 --train-only --threads 1   # disjoint lists
    python bench/realtext.py --out /tmp/rt --smoke                           # minutes: the same path, tiny

On the 2-core CPU machine the teacher does not learn the task within a session. 600 steps at 128 source
tokens (33 min) and 3600 steps at 64 (81 min) each left a teacher that scored below one fixed text written
for every function (docs/BENCHMARKS.md, "Real text"). It needs far more steps (``--teacher-steps``), which
means a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from quality import link_teacher, run_stage  # noqa: E402

SEEDS = (0, 1, 2)
MAIN = ("nash-k2", "sft-k2", "cofi-matched")
"""Recipes run with every seed; the others with the first seed only."""
RECIPES = {
    "nash-k1": ["prune.method=nash", "prune.decoder_layers=1", "prune.target_sparsity=0.3"],
    "nash-k2": ["prune.method=nash", "prune.decoder_layers=2", "prune.target_sparsity=0.3"],
    "nash-k3": ["prune.method=nash", "prune.decoder_layers=3", "prune.target_sparsity=0.3"],
    "nash-k2-s0.5": ["prune.method=nash", "prune.decoder_layers=2", "prune.target_sparsity=0.5"],
    "nash-2x": ["prune.method=nash", "prune.target_speedup=2.0"],
    "sft-k1": ["prune.method=sft", "prune.decoder_layers=1"],
    "sft-k2": ["prune.method=sft", "prune.decoder_layers=2"],
    "sft-k3": ["prune.method=sft", "prune.decoder_layers=3"],
    "sftkd-k2": ["prune.method=sft", "prune.decoder_layers=2", "prune.sft_distill=true"],
}
"""Fixed recipes; CoFi's sparsity is found at run time (``cofi-matched``)."""
LABELS = {"nash": "NASH", "sft": "SFT", "sftkd": "SFT+KD", "cofi": "CoFi"}


def teacher_shape(smoke: bool) -> dict:
    """The T5 v1.1 teacher (6+6 layers keep k = 1, 2, 3 meaningful; the decoder no deeper than the encoder,
    which transformers 5.24's generation cache needs)."""
    if smoke:
        return dict(d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=3, num_decoder_layers=3)
    return dict(d_model=128, d_kv=32, num_heads=4, d_ff=512, num_layers=6, num_decoder_layers=6)


# ------------------------------------------------------------------------------ inputs


def build_inputs(out: Path, *, smoke: bool) -> tuple[Path, Path]:
    """The corpus and its tokenizer (built once)."""
    from docstring_corpus import build_corpus
    from realtext_tokenizer import build_tokenizer

    corpus, tokenizer = out / "corpus", out / "tokenizer"
    if not (corpus / "manifest.json").is_file():
        t0 = time.perf_counter()
        roots = [REPO / "nash_ds"] if smoke else None  # the smoke run: nash-ds's own source, seconds
        manifest = build_corpus(roots, corpus, seed=0, max_train=600 if smoke else None,
                                max_eval=60 if smoke else None)
        print(f"[realtext] corpus {manifest['counts']} in {time.perf_counter() - t0:.0f} s", flush=True)
    if not (tokenizer / "tokenizer.json").is_file():
        build_tokenizer(corpus, tokenizer, vocab_size=300 if smoke else 8000, seed=0)
        print(f"[realtext] tokenizer -> {tokenizer}", flush=True)
    return corpus, tokenizer


def init_teacher(out: Path, tokenizer: Path, *, smoke: bool, seed: int = 0, shape: dict | None = None,
                 dropout_rate: float = 0.1) -> Path:
    """A random-init T5 v1.1 directory (the teacher's starting point; ``shape`` defaults to ``teacher_shape``),
    LM head at std d_model**-0.5 (the preset init's std 1.0 starts the loss at ~50 and costs hundreds of steps
    to unlearn)."""
    from transformers import AutoTokenizer, T5Config

    from nash_ds.testing import random_model_dir

    path = out / "init"
    if (path / "config.json").is_file():
        return path
    tok = AutoTokenizer.from_pretrained(tokenizer)
    shape = shape or teacher_shape(smoke)
    config = T5Config(feed_forward_proj="gated-gelu", tie_word_embeddings=False, vocab_size=len(tok),
                      dropout_rate=dropout_rate,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      decoder_start_token_id=tok.pad_token_id, **shape)
    return random_model_dir(config, path, seed=seed, tokenizer=tok, head_std=shape["d_model"] ** -0.5)


def common_overrides(args, corpus: Path, tokenizer: Path) -> list[str]:
    s = args.smoke
    return [f"data.task={corpus}", "data.source_column=code", "data.target_column=docstring",
            f"data.max_source_length={args.source_length}", "data.max_target_length=32",
            f"data.max_eval_samples={32 if s else args.val_samples}", f"model.tokenizer={tokenizer}",
            "train.ds_config=ds_configs/zero0_fp32.json", f"train.micro_batch_size={8 if s else 32}",
            "generation.max_new_tokens=32", "generation.eval_batch_size=64", "train.log_every=10",
            f"evaluate.latency_source_length={args.latency_source_length}",
            f"evaluate.latency_new_tokens={args.latency_new_tokens}", f"evaluate.repeats={1 if s else 5}",
            f"evaluate.warmup={1 if s else 2}", *args.extra]


# ------------------------------------------------------------------------------ runs


def run_recipe(args, name: str, overrides: list[str], seed: int, *, teacher: Path, common: list[str]) -> Path:
    """``run.py pipeline`` of one recipe and seed (skipped when finished); returns its final model."""
    rdir = Path(args.out) / f"{name}-s{seed}"
    final = rdir / "final" / "model"
    if (final / "config.json").is_file():
        print(f"[realtext] {rdir.name} is finished", flush=True)
        return final
    link_teacher(rdir, teacher)
    s = args.smoke
    run_stage("pipeline", [
        *common, f"seed={seed}", f"output_dir={rdir}", f"model.name_or_path={teacher}", *overrides,
        f"pipeline.prune_max_steps={6 if s else args.prune_steps}", f"pipeline.prune_lr={args.prune_lr}",
        f"prune.sparsity_warmup_steps={3 if s else args.prune_steps // 2}",
        f"pipeline.final_max_steps={4 if s else args.final_steps}", f"pipeline.final_lr={args.final_lr}",
        "pipeline.final_warmup_steps=2" if s else "pipeline.final_warmup_steps=5",
        f"train.eval_every={0 if s else args.prune_steps // 2}", "pipeline.evaluate=false"],
        ranks=1, log=rdir / "pipeline.log")
    return final


def measure_speedups(models: dict[str, Path], args, common: list[str]) -> dict[str, float]:
    """Generation speedup of each model over the first, timed interleaved (latency only, no task metric)."""
    from nash_ds import latency
    from nash_ds.stages.evaluate import load_for_eval

    loaded = {n: latency.prepare_model(load_for_eval(p), device="cpu", dtype="float32") for n, p in models.items()}
    rows = latency.measure_many(loaded, batch_size=1, source_length=args.latency_source_length,
                                new_tokens=args.latency_new_tokens, warmup=1 if args.smoke else 2,
                                repeats=1 if args.smoke else 5)
    base = rows[next(iter(models))]["generate_ms"]
    return {n: base / r["generate_ms"] for n, r in rows.items()}


def cofi_sparsity(args, teacher: Path, nash_k2: Path, common: list[str]) -> tuple[float, dict]:
    """The CoFi sparsity whose measured speedup matches NASH k=2's (seed 0 probes). The higher probe runs first:
    when even it is slower than NASH k=2, it is the match (CoFi keeps every decoder layer, so past it only the
    clamp at the higher probe is left) and the lower probe is not run; otherwise both, interpolated."""
    low, high = sorted((0.5, 0.7) if args.smoke else tuple(args.cofi_probes))
    finals = {}

    def probe(s: float) -> dict[str, float]:
        finals[s] = run_recipe(args, f"cofi-{s:g}", ["prune.method=cofi", f"prune.target_sparsity={s}"], SEEDS[0],
                               teacher=teacher, common=common)
        return measure_speedups({"teacher": teacher, "nash-k2": nash_k2,
                                 **{f"cofi-{p:g}": path for p, path in finals.items()}}, args, common)

    speed = probe(high)
    goal, vb = speed["nash-k2"], speed[f"cofi-{high:g}"]
    if vb <= goal or low == high:
        s = high
    else:
        speed = probe(low)
        goal, va, vb = speed["nash-k2"], speed[f"cofi-{low:g}"], speed[f"cofi-{high:g}"]
        s = low if abs(vb - va) < 1e-6 else low + (goal - va) * (high - low) / (vb - va)
        s = round(min(max(s, 0.3), high), 2)
    info = {"probes": {f"{p:g}": speed[f"cofi-{p:g}"] for p in finals}, "nash_k2_speedup": goal, "matched": s,
            "reached": speed[f"cofi-{high:g}"] >= goal}
    print(f"[realtext] CoFi probes {info['probes']}, NASH k=2 {goal:.2f}x -> CoFi sparsity {s}"
          + ("" if info["reached"] else f" (the highest probe, {high:g}, is still slower than NASH k=2)"), flush=True)
    return s, info


def constant_baseline(corpus: Path, references: list[str], metric: str, top: int = 30) -> tuple[float, str]:
    """The best ``metric`` one fixed text scores against ``references``, over the most common training targets and
    their first 1-4 words ("Return the", ...): what a model that ignores its input can reach."""
    from collections import Counter

    from nash_ds.metrics import compute_metrics

    counts: Counter = Counter()
    with (corpus / "train.jsonl").open() as f:
        for line in f:
            target = json.loads(line)["docstring"]
            words = target.split()
            counts.update({target, *(" ".join(words[:n]) for n in range(1, 5))})
    return max((compute_metrics([text] * len(references), references, names=(metric,))[metric], text)
               for text, _ in counts.most_common(top))


def check_teacher(args, teacher: Path, common: list[str], corpus: Path) -> dict:
    """Whether the teacher has learnt the task: on the validation split, at least ``--min-teacher-distinct`` of its
    outputs differ, and it scores above the best fixed text (``constant_baseline``). A teacher that fails has
    learnt the targets' prior, not the task: its students match it by copying that, and the quality-kept
    ratios say nothing about the methods, so the recipes are refused before they run (``--allow-weak-teacher``
    runs them anyway). Cached in ``<out>/teacher/check.json``."""
    path = teacher.parent.parent / "check.json"
    if path.is_file():
        check = json.loads(path.read_text())
    else:
        import torch

        from nash_ds.config import load_config
        from nash_ds.data import build_datasets
        from nash_ds.stages.evaluate import _tokenizer_for, load_for_eval, primary_metric, task_metrics

        torch.set_num_threads(args.threads)
        cfg = load_config(None, [*common, f"model.name_or_path={teacher}", "data.eval_split=validation"])
        tokenizer = _tokenizer_for(cfg, teacher)
        data = build_datasets(cfg.data, tokenizer, splits=("validation",), seed=cfg.seed)["validation"]
        out = task_metrics(load_for_eval(teacher).eval(), tokenizer, cfg, data)
        metric = primary_metric(cfg, out["metrics"])
        baseline, text = constant_baseline(corpus, [data[i]["target"] for i in range(len(data))], metric)
        check = {"metric": metric, "value": out["metrics"][metric], "distinct": out["distinct_predictions"],
                 "baseline": baseline, "baseline_text": text, "num_examples": out["num_examples"],
                 "examples": out["examples"]}
        path.write_text(json.dumps(check, indent=1))
    reasons = []
    if check["distinct"] < args.min_teacher_distinct:
        reasons.append(f"only {100 * check['distinct']:.0f}% of its outputs differ (--min-teacher-distinct "
                       f"{args.min_teacher_distinct:g})")
    if check["value"] <= check["baseline"]:
        reasons.append(f"its {check['metric']} {check['value']:.2f} is no better than writing "
                       f"\"{check['baseline_text']}\" for every function ({check['baseline']:.2f})")
    check["weak"] = bool(reasons)
    print(f"[realtext] teacher on {check['num_examples']} validation examples: {check['metric']} "
          f"{check['value']:.2f} (best fixed text {check['baseline']:.2f}), {100 * check['distinct']:.0f}% distinct "
          "outputs", flush=True)
    if check["weak"]:
        msg = (f"[realtext] the teacher has not learnt the task: {'; '.join(reasons)}. Its students would only "
               "copy its prior.")
        if not (args.allow_weak_teacher or args.evaluate_only or args.smoke):  # smoke: plumbing only
            raise SystemExit(f"{msg} Train it longer (--teacher-steps, now {args.teacher_steps}, in a new --out) "
                             "or pass --allow-weak-teacher.")
        print(f"{msg} Going on (--allow-weak-teacher, --smoke or --evaluate-only); the table will say so.", flush=True)
    return check


# ------------------------------------------------------------------------------ evaluation


def method_of(recipe: str) -> str:
    return recipe.split("-")[0]


def aggregate(result: dict, runs: dict[str, dict[int, str]]) -> list[dict]:
    """Mean and std over seeds per recipe, from compare_rows' rows (one per model)."""
    rows = {r["model"]: r for r in result["rows"]}
    bleu = {n: d["metrics"].get("bleu") for n, d in result["models"].items()}
    distinct = {n: 100 * d["distinct_predictions"] for n, d in result["models"].items()}
    out = []
    for recipe, seeds in runs.items():
        rs = [rows[name] for name in seeds.values()]

        def stats(values):
            values = [v for v in values if v is not None]
            if not values:
                return None, None
            return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)

        entry = {"recipe": recipe, "method": rs[0]["method"], "seeds": sorted(seeds), "n": len(rs),
                 "params": rs[0]["params"], "decoder_layers": rs[0]["decoder_layers"],
                 "sparsity_encoder": rs[0]["sparsity_encoder"], "sparsity_model": rs[0]["sparsity_model"]}
        for key, values in (("rougeL", [r["value"] for r in rs]), ("kept", [r["quality_kept"] for r in rs]),
                            ("bleu", [bleu[n] for n in seeds.values()]), ("speedup", [r["speedup"] for r in rs]),
                            ("distinct", [distinct[n] for n in seeds.values()]),
                            ("predicted", [r.get("predicted_speedup") for r in rs])):
            entry[key], entry[f"{key}_std"] = stats(values)
        out.append(entry)
    return out


def fmt(mean, std, spec: str, suffix: str = "") -> str:
    if mean is None:
        return ""
    return f"{mean:{spec}}{suffix}" + ("" if std is None else f" ± {std:{spec}}")


def table(entries: list[dict]) -> str:
    lines = ["| recipe | method | seeds | ROUGE-L | kept % | BLEU | distinct % | params (M) | dec. layers | "
             "enc. sparsity | speedup | predicted |", "|" + "|".join(["---"] * 12) + "|"]
    for e in entries:
        enc = "" if e["sparsity_encoder"] is None else f"{e['sparsity_encoder']:.2f}"
        lines.append(f"| {e['recipe']} | {e['method']} | {e['n']} | {fmt(e['rougeL'], e['rougeL_std'], '.2f')} | "
                     f"{fmt(e['kept'], e['kept_std'], '.1f')} | {fmt(e['bleu'], e['bleu_std'], '.2f')} | "
                     f"{fmt(e['distinct'], e['distinct_std'], '.0f')} | "
                     f"{e['params'] / 1e6:.2f} | {e['decoder_layers']} | {enc} | "
                     f"{fmt(e['speedup'], e['speedup_std'], '.2f', 'x')} | {fmt(e['predicted'], None, '.2f', 'x')} |")
    return "\n".join(lines) + "\n"


def draw(entries: list[dict], path: Path, title: str, *, metric: str = "rougeL",
         no_plot: str = "[realtext] no plot: the teacher scored 0, so quality kept is undefined") -> Path | None:
    """Quality kept (of ``metric``) vs measured speedup, one point per recipe, error bars = std over seeds; without
    a defined quality kept, ``no_plot`` is printed instead."""
    from nash_ds.plot import plot_points

    points = [{"method": "dense" if e["recipe"] == "teacher" else e["method"], "label": e["recipe"],
               "speedup": e["speedup"], "quality_kept": e["kept"], "speedup_std": e["speedup_std"],
               "quality_kept_std": e["kept_std"], "metric": metric} for e in entries if e["kept"] is not None]
    if len(points) < 2:
        print(no_plot, flush=True)
        return None
    return plot_points(points, path, title=title)


def evaluate(args, teacher: Path, runs: dict[str, dict[int, str]], paths: dict[str, Path], common: list[str],
             extra: dict) -> dict:
    import torch

    from nash_ds.config import load_config, to_dict
    from nash_ds.stages.evaluate import _environment, compare_rows

    torch.set_num_threads(args.threads)
    cfg = load_config(None, [*common, f"model.name_or_path={teacher}", "data.eval_split=test",
                             f"data.max_eval_samples={16 if args.smoke else args.test_samples}",
                             "evaluate.device=cpu", f"evaluate.repeats={1 if args.smoke else args.repeats}"])
    t0 = time.perf_counter()
    result = compare_rows(cfg, {"teacher": teacher, **paths}, reference=teacher)
    seconds = time.perf_counter() - t0
    entries = aggregate(result, {"teacher": {0: "teacher"}, **runs})
    result.update(config=to_dict(cfg), environment=_environment(), entries=entries, evaluate_s=seconds, **extra)
    out = Path(args.out)
    md = table(entries)
    if extra.get("teacher_check", {}).get("weak"):
        check = extra["teacher_check"]
        md += (f"\n**The teacher has not learnt the task, so this table does not compare methods**: on validation, "
               f"{100 * check['distinct']:.0f}% of its outputs differ and its {check['metric']} is "
               f"{check['value']:.2f} against {check['baseline']:.2f} for writing \"{check['baseline_text']}\" "
               "every time; every student can match it by copying that prior.\n")
    (out / "realtext.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "realtext.md").write_text(md)
    plot = draw(entries, Path(args.plot), "code summarization (installed Python source): quality kept vs "
                f"speedup\n(CPU fp32, batch 1, {args.latency_source_length} tokens in, {args.latency_new_tokens} out; "
                "error bars: std over seeds)")
    print("\n" + md + f"\n[realtext] evaluation {seconds:.0f} s; wrote {out / 'realtext.md'}"
          + (f", {plot}" if plot else ""), flush=True)
    return result


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/realtext")
    p.add_argument("--smoke", action="store_true",
                   help="a tiny model on nash-ds's own source, a few steps (its weak teacher is not refused)")
    p.add_argument("--teacher-steps", type=int, default=1000)
    p.add_argument("--teacher-lr", type=float, default=1e-3)
    p.add_argument("--prune-steps", type=int, default=100)
    p.add_argument("--prune-lr", type=float, default=5e-4)
    p.add_argument("--final-steps", type=int, default=60)
    p.add_argument("--final-lr", type=float, default=3e-4)
    p.add_argument("--source-length", type=int, default=192)
    p.add_argument("--val-samples", type=int, default=128, help="validation examples scored during training")
    p.add_argument("--test-samples", type=int, default=600, help="test examples of the final table")
    p.add_argument("--latency-source-length", type=int, default=128)
    p.add_argument("--latency-new-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=7, help="timed latency repeats of the final table")
    p.add_argument("--cofi-probes", type=float, nargs=2, default=(0.8, 0.95))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seeds", type=int, default=len(SEEDS), choices=range(1, len(SEEDS) + 1),
                   help="seeds of the main recipes (NASH k=2, SFT k=2, CoFi matched); the others run with one")
    p.add_argument("--recipes", default=",".join([*RECIPES, "cofi-matched"]))
    p.add_argument("--plot", default=str(REPO / "docs" / "realtext_quality_vs_speedup.png"))
    p.add_argument("--min-teacher-distinct", type=float, default=0.3,
                   help="fewest distinct teacher outputs (fraction of the validation examples) to run the recipes")
    p.add_argument("--allow-weak-teacher", action="store_true", help="run the recipes below --min-teacher-distinct")
    p.add_argument("--evaluate-only", action="store_true")
    p.add_argument("--train-only", action="store_true",
                   help="train the listed recipes and stop before the table (to run disjoint --recipes lists side "
                        "by side, then one --evaluate-only for the table)")
    p.add_argument("--extra", nargs="*", default=[], help="more key=value overrides for every stage")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.out = str(out)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # quality.run_stage passes it to the stages
    t_start = time.perf_counter()
    corpus, tokenizer = build_inputs(out, smoke=args.smoke)
    common = common_overrides(args, corpus, tokenizer)
    teacher_dir = out / "teacher"
    teacher = teacher_dir / "finetune" / "model"
    if not (teacher / "config.json").is_file():
        if args.evaluate_only:
            raise SystemExit(f"[realtext] {teacher} is missing: run without --evaluate-only first")
        init = init_teacher(out, tokenizer, smoke=args.smoke)
        s = args.smoke
        run_stage("finetune", [*common, "seed=0", f"output_dir={teacher_dir}", f"model.name_or_path={init}",
                               f"train.max_steps={20 if s else args.teacher_steps}", f"train.lr={args.teacher_lr}",
                               f"train.warmup_steps={2 if s else 100}", f"train.eval_every={0 if s else 250}",
                               f"train.save_every={0 if s else 250}",
                               # by validation loss: an early teacher that writes one generic sentence for every
                               # function scores a higher ROUGE-L than later, better ones (measured)
                               "train.metric_for_best=loss", "train.greater_is_better=false"],
                  ranks=1, log=teacher_dir / "finetune.log")
    extra: dict = {"teacher_check": check_teacher(args, teacher, common, corpus)}
    wanted = [r for r in args.recipes.split(",") if r]
    runs: dict[str, dict[int, str]] = {}
    paths: dict[str, Path] = {}
    for recipe in [r for r in wanted if r != "cofi-matched"]:
        for seed in (SEEDS[:args.seeds] if recipe in MAIN else SEEDS[:1]):
            name = f"{recipe}-s{seed}"
            overrides = RECIPES[recipe]
            if args.smoke and recipe == "nash-2x":  # the 3+3-layer smoke model cannot reach 2x
                overrides = [*overrides, "prune.target_speedup=1.2"]
            paths[name] = run_recipe(args, recipe, overrides, seed, teacher=teacher, common=common)
            runs.setdefault(recipe, {})[seed] = name
    if "cofi-matched" in wanted:
        sparsity, extra["cofi_match"] = cofi_sparsity(args, teacher, paths["nash-k2-s0"], common)
        for seed in SEEDS[:args.seeds]:
            name = f"cofi-matched-s{seed}"
            paths[name] = run_recipe(args, f"cofi-{sparsity:g}", ["prune.method=cofi",
                                                                  f"prune.target_sparsity={sparsity}"],
                                     seed, teacher=teacher, common=common)
            runs.setdefault("cofi-matched", {})[seed] = name
    extra["train_s"] = time.perf_counter() - t_start
    if args.train_only:
        print(f"[realtext] trained {sorted(paths)} in {extra['train_s'] / 60:.0f} min (--train-only: no table)",
              flush=True)
        return 0
    extra["manifest"] = json.loads((corpus / "manifest.json").read_text())["counts"]
    evaluate(args, teacher, runs, paths, common, extra)
    print(f"[realtext] total {(time.perf_counter() - t_start) / 60:.0f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
