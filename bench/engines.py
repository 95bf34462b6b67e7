"""Generation speed where models are served: transformers vs CTranslate2 (fp32, int8), dense vs NASH.

For each shape (random weights from the config: speed does not depend on them; no downloads) this builds the
dense model and NASH k=3 at encoder sparsity 0.3 with uniform widths (``prune.uniform_widths``: the stock class,
so CTranslate2's own converter takes it; random uniform encoder units, ``bench/speed.py``'s plan), converts both
for CTranslate2 (float32 and int8 weights) and times greedy generation of exactly ``--new-tokens`` tokens
(end token suppressed until then) at each batch size, every engine and model interleaved per repeat, median
reported. The speedup is against the dense model *in the same engine*. CTranslate2 gets as many threads as torch.

    python bench/engines.py                                   # t5-base and bart-large, CPU, batch 1 and 8
    python bench/engines.py --shapes tiny-t5 --repeats 1      # smoke run
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import dense_model, random_encoder_plan  # noqa: E402

from nash_ds import latency, serving  # noqa: E402
from nash_ds.export import save_hf_dir  # noqa: E402
from nash_ds.models import family_for, select_decoder_layers  # noqa: E402
from nash_ds.models.pruning import is_remote, prune_model  # noqa: E402


def word_tokenizer(config):
    """A tokenizer with exactly the model's vocab (CTranslate2's converter reads the vocabulary from it)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(config.vocab_size)}
    special = {"pad_token": config.pad_token_id, "eos_token": config.eos_token_id,
               "bos_token": getattr(config, "bos_token_id", None), "unk_token": 2}
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token="t2"))
    backend.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend,
                                   **{k: f"t{v}" for k, v in special.items() if v is not None})


def nash_uniform(dense, *, k: int, sparsity: float, seed: int):
    family = family_for(dense)
    kept = select_decoder_layers(family.num_layers(dense.config, "decoder"), k, "uniform")
    student = family.make_student(dense, kept).eval()
    plan = random_encoder_plan(family, student, sparsity=sparsity, seed=seed, uniform=True)
    plan.stock_shape = True
    plan.kept_decoder_layers = kept
    pruned = prune_model(student, plan).eval()
    assert not is_remote(pruned)
    return pruned


def bench_shape(shape: str, args, rows: list[dict], workdir: Path) -> None:
    dense = dense_model(shape, seed=args.seed)
    tok = word_tokenizer(dense.config)
    models = {"dense": dense, f"nash k={args.k} s={args.sparsity} uniform": nash_uniform(
        dense, k=args.k, sparsity=args.sparsity, seed=args.seed)}
    threads = torch.get_num_threads()
    runners = {}  # (model, engine) -> fn(batch inputs)
    for name, model in models.items():
        hf_dir = workdir / shape / name.replace(" ", "_") / "hf"
        save_hf_dir(model, tok, hf_dir)
        gen = latency.clean_generation_config(model)
        runners[(name, "transformers fp32")] = (
            lambda inputs, m=model, g=gen: latency.forced_generate(m, inputs, new_tokens=args.new_tokens,
                                                                 generation_config=g))
        for quant in ("none", "int8"):
            ct2_dir = hf_dir.parent / f"ct2-{quant}"
            serving.convert_ctranslate2(hf_dir, ct2_dir, quantization=quant)
            engine = serving.translator(ct2_dir, compute_type="int8" if quant == "int8" else "default", threads=threads)
            label = "ctranslate2 " + ("fp32" if quant == "none" else "int8")
            runners[(name, label)] = (
                lambda inputs, e=engine: serving.generate_ids(
                    e, tok, serving.unpadded(inputs["input_ids"], inputs["attention_mask"]),
                    max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens))
        del model
    for batch in args.batch_sizes:
        inputs = latency.random_inputs(dense, batch_size=batch, source_length=args.source_length, seed=args.seed)
        times = {key: [] for key in runners}
        for rep in range(args.warmup + args.repeats):
            for key, fn in runners.items():  # interleaved: every model and engine once per repeat
                t0 = time.perf_counter()
                with torch.no_grad():
                    fn(inputs)
                if rep >= args.warmup:
                    times[key].append(1000 * (time.perf_counter() - t0))
        for (name, engine), ts in times.items():
            ms = statistics.median(ts)
            base = statistics.median(times[("dense", engine)])
            hf_dense = statistics.median(times[("dense", "transformers fp32")])
            rows.append({"shape": shape, "model": name, "engine": engine, "batch": batch, "ms": ms,
                         "speedup_same_engine": base / ms, "vs_transformers_dense": hf_dense / ms})
            print(f"{shape} b={batch} {name:28s} {engine:18s} {ms:9.1f} ms  {base / ms:5.2f}x", flush=True)


def markdown(rows: list[dict]) -> str:
    lines = ["| shape | batch | model | engine | generate ms | speedup vs dense (same engine) | vs transformers dense |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['batch']} | {r['model']} | {r['engine']} | {r['ms']:.0f} | "
                     f"{r['speedup_same_engine']:.2f}x | {r['vs_transformers_dense']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="t5-base,bart-large")
    p.add_argument("--batch-sizes", default="1,8", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--sparsity", type=float, default=0.3)
    p.add_argument("--source-length", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rows: list[dict] = []
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="nash-engines-") as work:
        for shape in args.shapes.split(","):
            bench_shape(shape, args, rows, Path(work))
    print(f"\n{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.time() - t0:.0f} s; source "
          f"{args.source_length} tokens, {args.new_tokens} generated, median of {args.repeats}\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
