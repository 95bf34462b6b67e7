"""Token lengths of the code summarization corpus and how fast a T5 v1.1-shaped model trains on it.

    python bench/realtext_steps.py --corpus /work/realtext/corpus --tokenizer /work/realtext/tokenizer --steps 45 \
        --d-model 128 --heads 4 --d-ff 512 --layers 4 --decoder-layers 6 --source-length 192 --head-std 0.088
    python bench/realtext_steps.py --corpus /work/realtext/corpus --tokenizer /work/realtext/tokenizer \
        --layers 4 --decoder-layers 4 --source-length 192 --steps 30          # another shape
    python bench/realtext_steps.py --corpus /work/realtext/corpus --tokenizer /work/realtext/tokenizer --steps 0
                                                                             # lengths only

1. Percentiles of the code and docstring lengths in tokens (``</s>`` included, untruncated) over
   the train split, and the share within ``--source-length`` / ``--target-length``.
2. A random-init T5 v1.1-shaped model (gated-GELU, untied head), built as a ``preset:`` model is
   (``nash_ds.models.load_model``), trained ``--steps`` AdamW steps in this one process on the
   train split as ``nash_ds.data`` serves it (truncated to the lengths, padded to the longest in
   the batch, seeded shuffle). Prints the mean training loss every ``--log-every`` steps, the
   validation loss on ``--eval-batches`` batches at the end, and s/step: the median over steps
   2..N of wall and process CPU time (step 1 warms up and is printed apart).

A plain torch loop: no DeepSpeed, no evaluation by generation, so the stages' own overheads come on
top. Nothing is written unless ``--json`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nash_ds.config import DataConfig
from nash_ds.data import Seq2SeqCollator, build_datasets
from nash_ds.models import random_model

PERCENTILES = (50, 75, 90, 95, 99, 100)


def length_table(tok, corpus: Path, *, source_length: int, target_length: int) -> dict:
    """Token length percentiles of the train split's code and docstrings, and the share that fits."""
    rows = [json.loads(line) for line in (corpus / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    out = {}
    for column, limit in (("code", source_length), ("docstring", target_length)):
        lengths = np.array([len(ids) for ids in tok([r[column] for r in rows])["input_ids"]])
        out[column] = {"percentiles": {p: int(np.percentile(lengths, p)) for p in PERCENTILES},
                       "mean": float(lengths.mean()), "limit": limit, "fits": float((lengths <= limit).mean())}
    return out


def build_model(args, tok) -> torch.nn.Module:
    """The T5 v1.1 shape of the flags (seeded init, untied head), built as the T5 family builds its models."""
    from transformers import T5Config

    config = T5Config(feed_forward_proj="gated-gelu", tie_word_embeddings=False, d_model=args.d_model, d_kv=args.d_kv,
                      num_heads=args.heads, d_ff=args.d_ff, num_layers=args.layers,
                      num_decoder_layers=args.decoder_layers, dropout_rate=args.dropout, vocab_size=len(tok),
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      decoder_start_token_id=tok.pad_token_id)
    return random_model(config, seed=args.seed, head_std=args.head_std if args.head_std is not None else 1.0)


def train(args, tok) -> dict:
    """``args.steps`` AdamW steps; returns losses and per-step wall / CPU seconds."""
    data_cfg = DataConfig(task=str(args.corpus), source_column="code", target_column="docstring",
                          max_source_length=args.source_length, max_target_length=args.target_length,
                          max_eval_samples=args.eval_batches * args.batch_size)
    ds = build_datasets(data_cfg, tok, splits=("train", "validation"), seed=args.seed)
    collate = Seq2SeqCollator(tok)
    model = build_model(args, tok).train()
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, args.warmup_steps)))
    order = np.random.default_rng(args.seed).permutation(len(ds["train"]))
    losses, wall, cpu = [], [], []
    print(f"model: {params / 1e6:.2f} M parameters; {len(ds['train'])} train examples, "
          f"{args.steps * args.batch_size / len(ds['train']):.2f} epochs in {args.steps} steps", flush=True)
    for step in range(args.steps):
        idx = order[(step * args.batch_size) % len(order):][: args.batch_size]
        batch = collate([ds["train"][int(i)] for i in idx])
        t0, c0 = time.perf_counter(), time.process_time()
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        losses.append(loss.item())
        if (step + 1) % args.log_every == 0 or step == 0:
            recent = losses[-args.log_every:]
            print(f"step {step + 1}: loss {statistics.mean(recent):.3f} (mean of last {len(recent)}), "
                  f"{wall[-1]:.2f} s wall, {cpu[-1]:.2f} s CPU, src {batch['input_ids'].shape[1]} / "
                  f"tgt {batch['labels'].shape[1]} tokens", flush=True)
    model.eval()
    with torch.no_grad():
        val = ds["validation"]
        val_losses = [model(**collate([val[j] for j in range(i, min(i + args.batch_size, len(val)))])).loss.item()
                      for i in range(0, len(val), args.batch_size)]
    return {"params": params, "losses": losses, "wall": wall, "cpu": cpu,
            "val_loss": statistics.mean(val_losses) if val_losses else None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, required=True, help="bench/docstring_corpus.py output")
    p.add_argument("--tokenizer", type=Path, required=True, help="bench/realtext_tokenizer.py output")
    p.add_argument("--source-length", type=int, default=256)
    p.add_argument("--target-length", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=60, help="training steps (0: lengths only)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=10, help="linear warm-up, then constant")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--d-kv", type=int, default=32)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--d-ff", type=int, default=768)
    p.add_argument("--layers", type=int, default=6, help="encoder layers")
    p.add_argument("--decoder-layers", type=int, default=6)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--head-std", type=float, default=None,
                   help="re-initialise the untied LM head with this std (the preset's, like transformers' T5 "
                        "init, is 1.0: initial logits of std ~sqrt(d_model), which AdamW unlearns slowly)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval-batches", type=int, default=4, help="validation batches for the final loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write everything to this file")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    torch.manual_seed(args.seed)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(args.tokenizer))
    lengths = length_table(tok, args.corpus, source_length=args.source_length, target_length=args.target_length)
    print("| column | " + " | ".join(f"p{q}" for q in PERCENTILES) + " | mean | limit | fits |")
    print("|---" * (len(PERCENTILES) + 4) + "|")
    for column, row in lengths.items():
        print(f"| {column} | " + " | ".join(str(v) for v in row["percentiles"].values())
              + f" | {row['mean']:.1f} | {row['limit']} | {100 * row['fits']:.1f}% |")
    result: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "lengths": lengths,
                    "load": os.getloadavg()}
    if args.steps > 0:
        run = train(args, tok)
        timed = slice(1, None) if args.steps > 1 else slice(None)
        result.update(run, s_per_step_wall=statistics.median(run["wall"][timed]),
                      s_per_step_cpu=statistics.median(run["cpu"][timed]))
        tail = run["losses"][-args.log_every:]
        print(f"\n{run['params'] / 1e6:.2f} M parameters, batch {args.batch_size}, threads {args.threads}: "
              f"{result['s_per_step_wall']:.2f} s/step wall, {result['s_per_step_cpu']:.2f} s/step CPU "
              f"(median of steps 2..{args.steps}; step 1 {run['wall'][0]:.2f} s); train loss "
              f"{statistics.mean(tail):.3f} (last {len(tail)} steps), validation loss {run['val_loss']:.3f}; "
              f"load {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
