"""Quality kept vs speedup: dense teacher vs NASH vs CoFi vs SFT, trained and evaluated alike.

Everything runs through ``run.py`` as users run it (1 process, or N ranks with the DeepSpeed
launcher), with one seed, one data set and one step budget per stage for every recipe:

1. ``run.py finetune`` -> the dense teacher (``<out>/teacher/finetune/model``);
2. per recipe, ``run.py pipeline`` into ``<out>/<recipe>/``: prune -> finalize -> final fine-tune.
   The teacher is linked in as ``<out>/<recipe>/finetune/model``, so the pipeline skips the dense
   fine-tune (it skips every finished stage: a stopped bench continues where it was);
3. in this process: ``nash_ds.stages.evaluate.compare_rows`` evaluates teacher and every recipe
   side by side (task metric on ``--eval-split``, parameters, sparsity vs the teacher, latency
   timed interleaved), prints the table, writes ``<out>/quality.{json,md}`` and draws quality
   kept against speedup with ``nash_ds.plot`` (``--plot``, default docs/quality_vs_speedup.png).

Recipes (``--recipes``, comma list): ``nash-k<K>`` (k decoder layers kept, encoder sparsity
``--nash-sparsity``), ``sft-k<K>`` (decoder cut only), ``cofi-<S>`` (whole-model sparsity S).

    python bench/quality.py                                            # the demo task, 1 rank
    python bench/quality.py --ranks 2 --ds-config ds_configs/zero2_fp32.json
    python bench/quality.py --recipes nash-k2,cofi-0.6 --out runs/bench_quality_b
    python bench/quality.py --teacher-steps 20 --prune-steps 20 --final-steps 10 --out /tmp/q --plot /tmp/q.png  # smoke
    python bench/quality.py --evaluate-only                            # re-evaluate finished runs
    python bench/quality.py --replot-from-table docs/BENCHMARKS.md     # redraw the PNG from the doc's table
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nash_ds.testing import RUN_PY, offline_env, run_ranks  # noqa: E402

DEFAULT_RECIPES = "nash-k2,nash-k3,sft-k2,sftkd-k2,cofi-0.5,cofi-0.7"


def recipe_overrides(name: str, *, nash_sparsity: float) -> list[str]:
    """``run.py`` overrides of one recipe name (nash-k2, sft-k3 (cross-entropy only), sftkd-k2 (SFT distilling
    from the teacher), cofi-0.6)."""
    if m := re.fullmatch(r"(nash|sft|sftkd)-k(\d+)", name):
        method, k = m.group(1), int(m.group(2))
        extra = ["prune.sft_distill=true"] if method == "sftkd" else []
        return [f"prune.method={method.removesuffix('kd')}", f"prune.decoder_layers={k}",
                f"prune.target_sparsity={nash_sparsity}", *extra]
    if m := re.fullmatch(r"cofi-(0?\.\d+)", name):
        return ["prune.method=cofi", f"prune.target_sparsity={float(m.group(1))}"]
    raise ValueError(f"unknown recipe {name!r}: use nash-k<K>, sft-k<K>, sftkd-k<K> or cofi-<sparsity> "
                     "(e.g. nash-k2, cofi-0.6)")


def run_stage(stage: str, overrides: list[str], *, ranks: int, log: Path) -> float:
    """``run.py stage overrides`` (1 process, or ``deepspeed --num_gpus ranks``); output to ``log``."""
    env = offline_env(OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    print(f"[quality] {stage} {' '.join(overrides)}\n[quality]   log: {log}", flush=True)
    t0 = time.perf_counter()
    rc = run_ranks(RUN_PY, stage, *overrides, ranks=ranks, env=env, log=log).returncode
    seconds = time.perf_counter() - t0
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        raise SystemExit(f"[quality] {stage} failed (exit {rc}) after {seconds:.0f} s; end of {log}:\n{tail}")
    print(f"[quality]   done in {seconds:.0f} s", flush=True)
    return seconds


def link_teacher(recipe_dir: Path, teacher_model: Path) -> None:
    """``<recipe>/finetune/model`` -> the shared teacher (relative link), so the pipeline skips finetune."""
    link = recipe_dir / "finetune" / "model"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.resolve() != teacher_model.resolve():
            raise SystemExit(f"[quality] {link} exists and is not the teacher {teacher_model}; use another --out")
        return
    link.symlink_to(os.path.relpath(teacher_model, link.parent), target_is_directory=True)


def label_of(recipe: str) -> str:
    """nash-k2 -> NASH k=2, cofi-0.6 -> CoFi s=0.6 (the table's and the plot's names)."""
    method, _, arg = recipe.partition("-")
    name = {"nash": "NASH", "sft": "SFT", "sftkd": "SFT+KD", "cofi": "CoFi"}[method]
    return f"{name} k={arg[1:]}" if arg.startswith("k") else f"{name} s={arg}"


def table(rows: list[dict], *, target_kept: float, nash_sparsity: float, matched: str | None) -> str:
    """The bench's own table: one row per model, quality kept and both speedups (wall and CPU time)."""
    lines = ["| recipe | method | ROUGE-L | kept % | params (M) | dec. layers | enc. sparsity | model sparsity | "
             "generate ms | speedup (wall) | speedup (CPU time) |", "|" + "|".join(["---"] * 11) + "|"]
    for r in rows:
        enc = "" if r["sparsity_encoder"] is None else f"{r['sparsity_encoder']:.3f}"
        mod = "" if r["sparsity_model"] is None else f"{r['sparsity_model']:.3f}"
        name = r["model"] + (" (closest to NASH k=2 speed)" if r["model"] == matched else "")
        lines.append(f"| {name} | {r['method']} | {r['value']:.2f} | {r['quality_kept']:.1f} | "
                     f"{r['params'] / 1e6:.3f} | {r['decoder_layers']} | {enc} | {mod} | {r['generate_ms']:.1f} | "
                     f"{r['speedup']:.2f}x | {r['speedup_cpu']:.2f}x |")
    nash3 = [r for r in rows if r["model"] == "NASH k=3"]
    if nash3:
        ok = nash3[0]["quality_kept"] >= target_kept
        lines += ["", f"Target: NASH k=3 at encoder sparsity {nash_sparsity:g} keeps >= {target_kept:.0f}% of the "
                  f"teacher's ROUGE-L: {nash3[0]['quality_kept']:.1f}% -> {'met' if ok else 'NOT met'}."]
    return "\n".join(lines) + "\n"


def draw(result: dict, args) -> Path:
    """Quality kept against speedup with ``nash_ds.plot``: measured points only (several seeds of a recipe:
    mean +- std), the NASH k=3 target as a labelled dashed line."""
    from nash_ds.plot import plot_points

    points = [{"method": "dense" if r["model"] == "teacher" else r["method"],
               "label": "teacher (dense)" if r["model"] == "teacher" else r["model"],
               "speedup": r["speedup_cpu" if args.plot_speedup == "cpu" else "speedup"],
               "quality_kept": r["quality_kept"], "metric": r["metric"]} for r in result["rows"]]
    targets = [{"quality_kept": args.target_kept, "label": f"target: NASH k=3 keeps >= {args.target_kept:g}%"}]
    kind = "process CPU time" if args.plot_speedup == "cpu" else "wall time"
    first = result["rows"][0]
    title = (f"{result['config']['data']['task']} task, {result['config']['model']['name_or_path']}: quality kept vs "
             f"speedup\n({kind}, {first['device']}, batch {first['batch_size']}, {first['num_beams']} beam(s))")
    return plot_points(points, args.plot, title=title, targets=targets)


def rows_from_markdown(text: str) -> list[dict]:
    """The rows of this bench's table (``table``) as printed in a Markdown file such as docs/BENCHMARKS.md:
    the first table whose header starts with ``| recipe | method | ROUGE-L | kept % |``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| recipe | method | ROUGE-L | kept % |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        rows.append({"model": re.sub(r"\s*\(.*\)$", "", cells["recipe"]), "method": cells["method"],
                     "metric": "rougeL", "value": float(cells["ROUGE-L"]),
                     "quality_kept": float(cells["kept %"]),
                     "speedup": float(cells["speedup (wall)"].rstrip("x")),
                     "speedup_cpu": float(cells["speedup (CPU time)"].rstrip("x"))})
    return rows


def evaluate(args, models: dict[str, Path], common: list[str]) -> dict:
    """compare_rows over teacher + recipes; adds CPU-time speedups; writes json/md and the plot."""
    import torch

    from nash_ds.config import load_config, to_dict
    from nash_ds.stages.evaluate import _environment, compare_rows, markdown

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = load_config(None, [*common, f"model.name_or_path={args.model}", f"data.eval_split={args.eval_split}",
                             f"data.max_eval_samples={args.eval_samples if args.eval_samples > 0 else 'null'}",
                             f"evaluate.repeats={args.repeats}", f"evaluate.warmup={args.warmup}",
                             f"evaluate.latency_source_length={args.source_length}",
                             f"evaluate.latency_new_tokens={args.new_tokens}", "evaluate.device=cpu"])
    t0 = time.perf_counter()
    result = compare_rows(cfg, models, reference=models["teacher"])
    print(f"[quality] evaluation took {time.perf_counter() - t0:.0f} s", flush=True)
    base = next(r for r in result["rows"] if r["model"] == "teacher")
    cpu = {name: d["latency"][0]["generate_cpu_ms"] for name, d in result["models"].items()}
    for r in result["rows"]:
        r["generate_cpu_ms"] = cpu[r["model"]]
        r["speedup_cpu"] = cpu["teacher"] / cpu[r["model"]]
    nash2 = next((r for r in result["rows"] if r["model"] == "NASH k=2"), None)
    cofis = [r for r in result["rows"] if r["method"] == "cofi"]
    matched = min(cofis, key=lambda r: abs(r["speedup_cpu"] - nash2["speedup_cpu"]))["model"] \
        if nash2 and cofis else None
    result.update(config=to_dict(cfg), environment=_environment(), matched_cofi=matched, bench_args=vars(args))
    md = table(result["rows"], target_kept=args.target_kept, nash_sparsity=args.nash_sparsity, matched=matched)
    out = Path(args.out)
    (out / "quality.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "quality.md").write_text(md + "\n" + markdown(result, cfg))
    plot = draw(result, args)
    print("\n" + md, flush=True)
    print(f"[quality] teacher ROUGE-L {base['value']:.2f}; wrote {out / 'quality.md'}, {out / 'quality.json'}, {plot}",
          flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/bench_quality", help="output directory (one subdirectory per recipe)")
    p.add_argument("--recipes", default=DEFAULT_RECIPES, help="comma list: nash-k<K>, sft-k<K>, cofi-<sparsity>")
    p.add_argument("--nash-sparsity", type=float, default=0.3, help="encoder sparsity of nash (and sft) recipes")
    p.add_argument("--teacher-steps", type=int, default=600, help="dense fine-tune steps (the teacher)")
    p.add_argument("--prune-steps", type=int, default=200, help="prune steps per recipe")
    p.add_argument("--final-steps", type=int, default=150, help="final fine-tune steps per recipe")
    p.add_argument("--sparsity-warmup", type=int, default=None,
                   help="prune.sparsity_warmup_steps (default: the config's, capped at prune steps / 2)")
    p.add_argument("--final-distill", choices=("true", "false"), default="true",
                   help="pipeline.final_distill: distil the teacher's logits in the final fine-tune (the default)")
    p.add_argument("--ranks", type=int, default=1, help="processes per stage (2+: deepspeed launcher, CPU gloo)")
    p.add_argument("--ds-config", default="ds_configs/zero0_fp32.json", help="train.ds_config of every stage")
    p.add_argument("--task", default="demo", help="data.task")
    p.add_argument("--model", default="preset:tiny-t5", help="model.name_or_path of the teacher")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--eval-split", default="test", help="split of the final table (checkpoints are picked on "
                   "validation, so test keeps the table free of that selection)")
    p.add_argument("--eval-samples", type=int, default=0, help="examples evaluated (0: the whole split)")
    p.add_argument("--repeats", type=int, default=15, help="timed latency repeats (median)")
    p.add_argument("--warmup", type=int, default=3, help="untimed latency repeats")
    p.add_argument("--source-length", type=int, default=64, help="latency: input tokens")
    p.add_argument("--new-tokens", type=int, default=16, help="latency: tokens generated (forced)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for evaluation")
    p.add_argument("--plot", default=str(REPO / "docs" / "quality_vs_speedup.png"), help="PNG to write")
    p.add_argument("--plot-speedup", choices=("cpu", "wall"), default="cpu",
                   help="speedup on the plot's x axis: process CPU time (steady on a shared CPU) or wall time")
    p.add_argument("--target-kept", type=float, default=97.0, help="quality kept target (%%) for NASH k=3")
    p.add_argument("--evaluate-only", action="store_true", help="skip training; evaluate the finished runs")
    p.add_argument("--replot", action="store_true", help="only redraw the table and --plot from <out>/quality.json")
    p.add_argument("--replot-from-table", metavar="MARKDOWN", default=None,
                   help="only redraw --plot from the table printed in this file (docs/BENCHMARKS.md), when the "
                        "run's quality.json is gone; device, batch and beams as the table's run had them")
    p.add_argument("--extra", nargs="*", default=[], help="more key=value overrides for every stage")
    args = p.parse_args(argv)

    if args.replot_from_table:
        rows = rows_from_markdown(Path(args.replot_from_table).read_text())
        for r in rows:
            r.update(device="cpu", batch_size=1, num_beams=1)
        result = {"rows": rows, "config": {"data": {"task": args.task}, "model": {"name_or_path": args.model}}}
        print(draw(result, args))
        return 0
    out = Path(args.out).resolve()
    args.out = str(out)
    if args.replot:  # tables and plot again from the saved result, no training, no timing
        result = json.loads((out / "quality.json").read_text())
        md = table(result["rows"], target_kept=args.target_kept, nash_sparsity=args.nash_sparsity,
                   matched=result["matched_cofi"])
        old = (out / "quality.md").read_text()
        (out / "quality.md").write_text(md + old[old.index("\n## Evaluation"):])
        print(md + f"\n{draw(result, args)}")
        return 0
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    per_recipe = {r: recipe_overrides(r, nash_sparsity=args.nash_sparsity) for r in recipes}
    common = [f"seed={args.seed}", f"data.task={args.task}", f"train.ds_config={args.ds_config}", *args.extra]
    teacher_dir = out / "teacher"
    teacher_model = teacher_dir / "finetune" / "model"
    times = {}
    t_start = time.perf_counter()
    if not args.evaluate_only:
        if (teacher_model / "config.json").is_file():
            print(f"[quality] teacher {teacher_model} is finished, reusing it", flush=True)
        else:
            times["teacher"] = run_stage("finetune", [*common, f"output_dir={teacher_dir}",
                                                      f"model.name_or_path={args.model}",
                                                      f"train.max_steps={args.teacher_steps}"],
                                         ranks=args.ranks, log=teacher_dir / "finetune.log")
        warmup = args.sparsity_warmup if args.sparsity_warmup is not None else min(100, args.prune_steps // 2)
        for recipe, overrides in per_recipe.items():
            rdir = out / recipe
            link_teacher(rdir, teacher_model)
            if (rdir / "final" / "model" / "config.json").is_file():
                print(f"[quality] {recipe} is finished, reusing it", flush=True)
                continue
            times[recipe] = run_stage("pipeline", [
                *common, f"output_dir={rdir}", f"model.name_or_path={args.model}", *overrides,
                f"prune.sparsity_warmup_steps={max(1, warmup)}", f"pipeline.prune_max_steps={args.prune_steps}",
                f"pipeline.final_max_steps={args.final_steps}",
                f"pipeline.final_distill={args.final_distill}", "pipeline.evaluate=false"],
                ranks=args.ranks, log=rdir / "pipeline.log")
    models = {"teacher": teacher_model}
    for recipe in recipes:
        path = out / recipe / "final" / "model"
        if not (path / "config.json").is_file():
            raise SystemExit(f"[quality] {path} is missing: run without --evaluate-only first")
        models[label_of(recipe)] = path
    result = evaluate(args, models, common)
    result["train_seconds"] = times
    (out / "quality.json").write_text(json.dumps(result, indent=1, default=str))
    if times:
        print("[quality] stage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items())
              + f"; total {time.perf_counter() - t_start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
