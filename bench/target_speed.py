"""Pruning to a speed, checked: the latency model's predicted speedup against the measured one.

For each model shape (random weights: speed does not depend on them) this

1. measures the latency model (``nash_ds.latency_model.measure``: probe models, fitted coefficients)
   with the given timing settings;
2. for each target speedup X, takes the plan the model gives: k = the largest decoder depth that
   can reach X with encoder sparsity up to 0.6 (``choose_k``, as ``prune.target_speedup`` does), and
   encoder widths per layer scattered around one keep fraction (uneven, as learned masks are), with
   the fraction solved so that the predicted speedup is X;
3. builds those pruned models (``make_student`` + ``prune_model``) and times them against the dense
   model, interleaved in one process (``nash_ds.latency.measure_many``, medians of the repeats).

The table shows, per plan, the predicted and the measured speedup, measured / predicted and
measured / target. Ratios come from one run.

    python bench/target_speed.py                                       # t5-base and bart-large, CPU fp32
    python bench/target_speed.py --shapes t5-base --targets 1.5,2,3 --repeats 7 --json out.json
    python bench/target_speed.py --device cuda --dtype bfloat16 --batch-sizes 1,8      # the GPU machine
    python bench/target_speed.py --shapes tiny-t5 --targets 1.2 --repeats 1 --new-tokens 4   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nash_ds import latency  # noqa: E402
from nash_ds.latency_model import LatencyModel, measure  # noqa: E402
from nash_ds.models import (  # noqa: E402
    count_params,
    family_for,
    named_shape_config,
    preset_config,
    random_model,
    select_decoder_layers,
)
from nash_ds.models.pruning import prune_model  # noqa: E402
from nash_ds.plan import PruningPlan  # noqa: E402


def shape_config(shape: str):
    return preset_config(shape, vocab_size=256) if shape.startswith("tiny-") else named_shape_config(shape)


def scattered_widths(model: LatencyModel, keep: float, *, seed: int) -> tuple[list[int], list[int]]:
    """Per-layer kept heads and FFN dims scattered +-40% around ``keep`` of the full widths (at least 1)."""
    rng = random.Random(seed)
    heads = [min(model.num_heads, max(1, round(model.num_heads * keep * rng.uniform(0.6, 1.4))))
             for _ in range(model.num_encoder_layers)]
    ffn = [min(model.d_ff, max(1, round(model.d_ff * keep * rng.uniform(0.6, 1.4))))
           for _ in range(model.num_encoder_layers)]
    return heads, ffn


def plan_for_target(model: LatencyModel, target: float, *, seed: int) -> dict:
    """k and per-layer widths whose predicted speedup is ``target`` (bisection on the keep fraction)."""
    k = model.choose_k(target, max_encoder_sparsity=0.6)
    dense = model.dense_ms()

    def speedup(keep: float) -> float:
        heads, ffn = scattered_widths(model, keep, seed=seed)
        return dense / model.generate_ms(heads, ffn, k)

    lo, hi = 0.0, 1.0  # keep fraction: speedup falls as keep grows
    if speedup(1.0) >= target:
        keep = 1.0  # the decoder cut alone is enough
    else:
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if speedup(mid) >= target else (lo, mid)
        keep = lo
    heads, ffn = scattered_widths(model, keep, seed=seed)
    return {"k": k, "keep": keep, "heads": heads, "ffn": ffn, "predicted": dense / model.generate_ms(heads, ffn, k)}


def build(dense, family, spec: dict):
    config = dense.config
    L = family.num_layers(config, "decoder")
    student = family.make_student(dense, select_decoder_layers(L, spec["k"], "uniform"))
    plan = PruningPlan.full(num_encoder_layers=family.num_layers(config, "encoder"), num_decoder_layers=spec["k"],
                            num_heads=family.num_heads(config, "encoder"), encoder_ffn=family.d_ff(config, "encoder"),
                            decoder_ffn=family.d_ff(config, "decoder"))
    plan.encoder_heads = [list(range(h)) for h in spec["heads"]]
    plan.encoder_ffn = [list(range(f)) for f in spec["ffn"]]
    return prune_model(student, plan).eval()


def bench_shape(shape: str, args, batch_size: int) -> list[dict]:
    config = shape_config(shape)
    family = family_for(config)
    device, dtype = latency.resolve_device(args.device), latency.resolve_dtype(args.dtype)
    timing = dict(batch_size=batch_size, source_length=args.source_length, new_tokens=args.new_tokens,
                  warmup=args.warmup, repeats=args.repeats, seed=args.seed)
    t0 = time.perf_counter()
    model = measure(config, device=device, dtype=dtype, **timing)
    profile_s = time.perf_counter() - t0
    print(f"[target_speed] {shape} batch {batch_size}: profiled in {profile_s:.0f} s; dense predicted "
          f"{model.dense_ms():.1f} ms", flush=True)
    dense = random_model(config, seed=args.seed).eval()
    specs, unreachable = {}, []
    for x in args.targets:
        try:
            specs[x] = plan_for_target(model, x, seed=args.seed)
        except ValueError as e:  # beyond k=1 at the encoder-sparsity cap on this shape and machine: a row saying so
            unreachable.append({"shape": shape, "batch_size": batch_size, "target": x, "unreachable": str(e),
                                "best": model.best_speedup(1, 0.6)})
    models = {"dense": latency.prepare_model(dense, device=device, dtype=dtype)}
    for x, spec in specs.items():
        models[f"x{x:g}"] = latency.prepare_model(build(dense, family, spec), device=device, dtype=dtype)
    rows = latency.measure_many(models, **timing)
    dense_count = count_params(dense, family)
    out = []
    for x, spec in specs.items():
        r, d = rows[f"x{x:g}"], rows["dense"]
        pruned = models[f"x{x:g}"]
        measured = d["generate_ms"] / r["generate_ms"]
        measured_cpu = d["generate_cpu_ms"] / r["generate_cpu_ms"]
        enc_sparsity = 1 - count_params(pruned, family)["prunable_encoder"] / dense_count["prunable_encoder"]
        out.append({"shape": shape, "batch_size": batch_size, "target": x, "k": spec["k"],
                    "encoder_sparsity": enc_sparsity, "predicted": spec["predicted"], "measured": measured,
                    "measured_cpu": measured_cpu, "measured_over_predicted": measured / spec["predicted"],
                    "measured_over_target": measured / x, "generate_ms": r["generate_ms"],
                    "dense_generate_ms": d["generate_ms"], "profile_s": profile_s,
                    "probe_errors": [p["error"] for p in model.probes]})
    print(markdown(out + unreachable), flush=True)  # each shape's table as soon as it is timed
    return out + unreachable


def markdown(rows: list[dict]) -> str:
    lines = ["| shape | batch | target | k | enc. sparsity | predicted | measured (wall) | measured (CPU) | "
             "measured / predicted | measured / target |", "|" + "|".join(["---"] * 10) + "|"]
    for r in rows:
        if "unreachable" in r:
            lines.append(f"| {r['shape']} | {r['batch_size']} | {r['target']:g}x | unreachable: "
                         f"{r['unreachable'].split(': ', 1)[-1].split(';')[0]} | | | | | | |")
            continue
        lines.append(f"| {r['shape']} | {r['batch_size']} | {r['target']:g}x | {r['k']} | "
                     f"{r['encoder_sparsity']:.3f} | {r['predicted']:.2f}x | {r['measured']:.2f}x | "
                     f"{r['measured_cpu']:.2f}x | "
                     f"{r['measured_over_predicted']:.3f} | {r['measured_over_target']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="t5-base,bart-large", help="comma list: t5-base, bart-large, tiny-t5, ...")
    p.add_argument("--targets", default="1.5,2,3", help="comma list of target speedups")
    p.add_argument("--batch-sizes", default="1", help="comma list")
    p.add_argument("--source-length", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write every row (and the environment) here")
    args = p.parse_args(argv)
    args.targets = [float(x) for x in args.targets.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    load0 = os.getloadavg()
    for shape in args.shapes.split(","):
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            rows += bench_shape(shape, args, batch_size)
    env = {"date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(), "cpus": os.cpu_count(),
           "threads": torch.get_num_threads(), "load_start": load0, "load_end": os.getloadavg(),
           "torch": torch.__version__, "args": vars(args)}
    print(f"\n{env['date']}, {env['cpus']} cores, {env['threads']} threads, load {load0[0]:.2f} -> "
          f"{env['load_end'][0]:.2f}; {args.device} {args.dtype}, {args.source_length} tokens in, "
          f"{args.new_tokens} out, median of {args.repeats}\n")
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
