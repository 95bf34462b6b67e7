"""Generation speed of NASH-pruned exports vs the dense model and vs stock models of the same shape.

For each model shape (random weights: speed does not depend on them) and each k (decoder layers
kept) and encoder sparsity s, this builds

- the NASH export: ``make_student`` (uniform k of L decoder layers) then ``prune_model`` with a
  random per-layer head / FFN-dim plan whose prunable-encoder sparsity is s (non-uniform
  widths -> our remote classes, as real NASH runs produce);
- the *same-shape stock* model: the stock transformers class with uniform widths holding the
  same encoder total (what the export's shape would cost with no per-layer machinery);

and times dense, exports and stock twins interleaved in one process (``nash_ds.latency``):
batch 1, 256 tokens in, exactly 64 out, greedy, by default. Ratios come from the same run.

    python bench/speed.py                                   # T5-base shapes, CPU fp32
    python bench/speed.py --shapes t5-base,bart-large --repeats 5
    python bench/speed.py --device cuda --dtype bfloat16 --repeats 20   # on the GPU machine
    python bench/speed.py --shapes tiny-t5 --k 2 --sparsity 0.3 --repeats 1   # smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nash_ds import latency
from nash_ds.models import family_for, select_decoder_layers
from nash_ds.models.pruning import is_remote, prune_model
from nash_ds.plan import PruningPlan

SHAPES = ("t5-base", "bart-large", "tiny-t5", "tiny-bart")
"""Model shapes (random weights): t5-base and bart-large are the paper's (``nash_ds.models.SHAPES``), the
tiny ones the presets (vocab 256)."""


def dense_model(shape: str, *, seed: int):
    from nash_ds.models import named_shape_config, preset_config, random_model

    config = preset_config(shape, vocab_size=256) if shape.startswith("tiny-") else named_shape_config(shape)
    return random_model(config, seed=seed).eval()


def encoder_sizes(family, config) -> tuple[int, int, int, int, int]:
    """(layers, heads, d_ff, params per head, params per FFN dim) of the encoder."""
    return (family.num_layers(config, "encoder"), family.num_heads(config, "encoder"), family.d_ff(config, "encoder"),
            family.params_per_head(config, "encoder", "self"), family.params_per_ffn_dim(config, "encoder"))


def random_encoder_plan(family, student, *, sparsity: float, seed: int, uniform: bool = False) -> PruningPlan:
    """Keep everything in the decoder; keep random per-layer head / FFN subsets in the encoder whose
    prunable parameters add up to (1 - sparsity) of the dense encoder's (within one FFN dim per layer).

    ``uniform``: every encoder layer keeps the same number of heads and FFN dims. For T5 the export
    is then still a ``NashT5Config`` model (stock T5 has one width for both stacks and the decoder stays
    dense) while its stock twin has exactly its tensor shapes: the ratio is the export's own cost."""
    config = student.config
    layers, heads, d_ff, per_head, per_dim = encoder_sizes(family, config)
    plan = PruningPlan.full(num_encoder_layers=layers, num_decoder_layers=family.num_layers(config, "decoder"),
                            num_heads=heads, encoder_ffn=d_ff, decoder_ffn=family.d_ff(config, "decoder"))
    if sparsity == 0:
        return plan
    rng = random.Random(seed)
    keep = 1.0 - sparsity
    # heads: per-layer fractions scattered around the target (NASH's learned masks are uneven)
    spread = (lambda: 1.0) if uniform else (lambda: rng.uniform(0.6, 1.4))
    num_heads = [min(heads, max(1, round(heads * keep * spread()))) for _ in range(layers)]
    budget = keep * layers * (heads * per_head + d_ff * per_dim) - sum(num_heads) * per_head
    weights = [spread() for _ in range(layers)]
    dims = [min(d_ff, max(1, round(budget / per_dim * w / sum(weights)))) for w in weights]
    plan.encoder_heads = [sorted(rng.sample(range(heads), n)) for n in num_heads]
    plan.encoder_ffn = [sorted(rng.sample(range(d_ff), n)) for n in dims]
    return plan


def stock_twin(family, pruned, plan: PruningPlan, *, seed: int):
    """A stock model with uniform encoder widths holding the export's encoder total (random weights)."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    base = pruned.config
    config = AutoConfig.for_model(_stock_type(base), **{k: v for k, v in base.to_dict().items()
                                                         if not k.startswith("nash_") and k not in (
                                                             "model_type", "auto_map", "architectures")})
    layers, heads, d_ff, per_head, per_dim = encoder_sizes(family, config)
    total_heads = sum(len(h) for h in plan.encoder_heads)
    total_dims = sum(len(f) for f in plan.encoder_ffn)
    if config.model_type == "t5":
        config.num_heads = round(total_heads / layers)
        config.d_ff = round((total_dims * per_dim + (total_heads - config.num_heads * layers) * per_head)
                            / (layers * per_dim))
        # T5 has one num_heads / d_ff for both stacks: the decoder must stay dense, so a stock
        # T5 twin cannot have a narrower encoder than decoder. Represent the encoder by its own
        # config and splice: build both stacks at full width, then swap in a narrow encoder.
        dense_dec = {"num_heads": heads, "d_ff": d_ff}
        torch.manual_seed(seed)
        twin = AutoModelForSeq2SeqLM.from_config(_with(config, **dense_dec)).eval()
        narrow = AutoModelForSeq2SeqLM.from_config(config).eval()
        twin.encoder = narrow.encoder
        twin.encoder.embed_tokens = twin.shared  # one shared embedding, as in the stock model
        return twin
    # BART: the stock class ties head_dim to d_model / heads, so every head stays; the FFN
    # narrows further to hold the same parameter total
    kept = total_heads * per_head + total_dims * per_dim - layers * heads * per_head
    config.encoder_ffn_dim = max(1, round(kept / (layers * per_dim)))
    torch.manual_seed(seed)
    return AutoModelForSeq2SeqLM.from_config(config).eval()


def _stock_type(config) -> str:
    for cls in type(config).__mro__:
        model_type = getattr(cls, "model_type", "")
        if model_type and not model_type.startswith("nash_"):
            return model_type
    raise ValueError(f"no stock model type behind {type(config).__name__}")


def _with(config, **changes):
    import copy

    new = copy.deepcopy(config)
    for k, v in changes.items():
        setattr(new, k, v)
    return new


def num_params(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def encoder_sparsity(family, model, dense) -> float:
    from nash_ds.models import count_params

    return 1.0 - count_params(model, family)["prunable_encoder"] / count_params(dense, family)["prunable_encoder"]


def bench_shape(shape: str, args, rows: list[dict]) -> None:
    """Time one shape, appending rows to ``rows`` (and to --json after every k, so a cut run keeps them)."""
    device, dtype = latency.resolve_device(args.device), latency.resolve_dtype(args.dtype)
    dense = dense_model(shape, seed=args.seed)
    family = family_for(dense)
    num_layers = family.num_layers(dense.config, "decoder")
    for k in args.k:
        kept = select_decoder_layers(num_layers, k, "uniform")
        student = family.make_student(dense, kept)
        models, meta = {"dense": dense}, {"dense": {"kind": "dense", "k": num_layers, "sparsity": 0.0}}
        for s in args.sparsity:
            plan = random_encoder_plan(family, student, sparsity=s, seed=args.seed + k * 100 + round(s * 100),
                                       uniform=args.uniform)
            pruned = prune_model(student, plan).eval()
            twin = stock_twin(family, pruned, plan, seed=args.seed)
            models[f"nash k={k} s={s}"] = pruned
            meta[f"nash k={k} s={s}"] = {"kind": "nash", "k": k, "sparsity": s, "remote": is_remote(pruned)}
            models[f"stock k={k} s={s}"] = twin
            meta[f"stock k={k} s={s}"] = {"kind": "stock", "k": k, "sparsity": s, "remote": False}
        del student
        for m in models.values():
            latency.prepare_model(m, device=device, dtype=dtype)
        for batch_size in _as_list(args.batch_size):
            t0 = time.perf_counter()
            measured = latency.measure_many(models, batch_size=batch_size, source_length=args.source_length,
                                            new_tokens=args.new_tokens, num_beams=args.beams, warmup=args.warmup,
                                            repeats=args.repeats, seed=args.seed)
            print(f"[bench] {shape} k={k} batch {batch_size}: {len(models)} models timed in "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            base = measured["dense"]
            added = 0
            for name, row in measured.items():
                if name == "dense" and k != args.k[0]:
                    continue  # dense is re-timed with every k group; keep the first group's row only
                m = meta[name]
                twin = measured.get(f"stock k={m['k']} s={m['sparsity']}") if m["kind"] == "nash" else None
                rows.append({
                    "shape": shape, "model": name, **m, "batch_size": batch_size,
                    "params_m": num_params(models[name]) / 1e6,
                    "enc_sparsity": encoder_sparsity(family, models[name], dense),
                    **{key: row[key] for key in ("encoder_ms", "decoder_ms_per_token", "generate_ms",
                                                 "tokens_per_s", "encoder_ms_min", "decoder_ms_per_token_min",
                                                 "generate_ms_min", "encoder_cpu_ms", "decoder_cpu_ms_per_token",
                                                 "generate_cpu_ms")},
                    "speedup_cpu": base["generate_cpu_ms"] / row["generate_cpu_ms"],
                    "vs_stock_cpu": row["generate_cpu_ms"] / twin["generate_cpu_ms"] if twin else None,
                    "speedup": base["generate_ms"] / row["generate_ms"],
                    "speedup_min": base["generate_ms_min"] / row["generate_ms_min"],
                    "vs_stock": row["generate_ms"] / twin["generate_ms"] if twin else None,
                    "vs_stock_min": row["generate_ms_min"] / twin["generate_ms_min"] if twin else None,
                    "device": row["device"], "dtype": row["dtype"],
                })
                added += 1
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1))
            print(markdown(rows[-added:]), file=sys.stderr, flush=True)
        for m in list(models):
            if m != "dense":
                del models[m]


def _as_list(value) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def markdown(rows: list[dict], *, clock: str = "wall") -> str:
    """One line per model and batch size. wall: median (min) over the repeats; cpu: median process CPU time."""
    head = ("| shape | model | k | batch | enc. sparsity | params (M) | encoder ms | decoder ms/token | generate ms | "
            "speedup vs dense | export / stock twin |")
    lines = [head, "|" + "|".join(["---"] * 11) + "|"]
    for r in rows:
        cells = [r["shape"], r["model"], str(r["k"]), str(r.get("batch_size", 1)), f"{r['enc_sparsity']:.3f}",
                 f"{r['params_m']:.1f}"]
        if clock == "cpu":
            vs = "" if r["vs_stock_cpu"] is None else f"{r['vs_stock_cpu']:.3f}"
            cells += [f"{r['encoder_cpu_ms']:.0f}", f"{r['decoder_cpu_ms_per_token']:.1f}", f"{r['generate_cpu_ms']:.0f}",
                      f"{r['speedup_cpu']:.2f}x", vs]
        else:
            vs = "" if r["vs_stock"] is None else f"{r['vs_stock']:.3f} ({r['vs_stock_min']:.3f})"
            cells += [f"{r['encoder_ms']:.0f} ({r['encoder_ms_min']:.0f})",
                      f"{r['decoder_ms_per_token']:.1f} ({r['decoder_ms_per_token_min']:.1f})",
                      f"{r['generate_ms']:.0f} ({r['generate_ms_min']:.0f})",
                      f"{r['speedup']:.2f}x ({r['speedup_min']:.2f}x)", vs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="t5-base", help=f"comma list of {', '.join(SHAPES)}")
    p.add_argument("--k", type=_ints, default=[2, 3, 4], help="decoder layers kept, comma list")
    p.add_argument("--sparsity", type=_floats, default=[0.0, 0.3, 0.5], help="encoder sparsities, comma list")
    p.add_argument("--batch-size", type=_ints, default=[1], help="batch sizes, comma list (models built once)")
    p.add_argument("--source-length", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--beams", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--uniform", action="store_true",
                   help="same widths in every encoder layer: for T5 the stock twin then has the export's exact shape")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
    if unknown:
        p.error(f"unknown shape(s) {unknown}; choose from {', '.join(SHAPES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list[dict] = []
    for shape in args.shapes.split(","):
        bench_shape(shape, args, rows)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads "
          f"{torch.get_num_threads()}, device {rows[0]['device']}, dtype {rows[0]['dtype']}, "
          f"batch {','.join(map(str, args.batch_size))}, "
          f"{args.source_length} in / {args.new_tokens} out, beams {args.beams}, warmup {args.warmup}, "
          f"median (min) of {args.repeats} interleaved repeats, {'uniform' if args.uniform else 'per-layer'} "
          "encoder widths")
    print("\nwall clock, median (min):\n")
    print(markdown(rows))
    if rows[0]["device"] == "cpu":
        print("\nprocess CPU time, median:\n")
        print(markdown(rows, clock="cpu"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
