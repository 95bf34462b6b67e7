"""Is finalize's |masked - pruned| logit gap rounding or a defect? The same path as ``run.py finalize`` (consolidate
the prune checkpoint, build the masked student, prune it), then both models in float32 and in float64 on the task's
validation rows. Prints one table row per run directory.

    python bench/finalize_precision.py --data /work/g2p2/corpus/validation.jsonl --tokenizer /work/g2p2/corpus/tokenizer \
        /work/g2p2/nash-k2-s0 /work/g2p2/nash-k3-s0 /work/g2p2/cofi-0.9-s0

A float64 gap at float64 rounding (about 1e-12 on logits of size 10) says the pruned model computes what the masked
one computes and the float32 gap is rounding; a float64 gap as large as the float32 one would be a defect. T5's norms
compute their mean square in float32 whatever the model's dtype (stock ``T5LayerNorm`` and CoFi's masked norm over the
kept hidden dims alike), so a CoFi model's float64 gap keeps float32 rounding of its norms; ``--float64-norms`` (T5
only) computes them in the model's dtype, and the student is then cast to float64 before its masks are folded in.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def float64_norms() -> None:
    """T5's norms (stock and CoFi's masked one) in the dtype of their input instead of float32."""
    import torch
    from transformers.models.t5 import modeling_t5

    from nash_ds.models.t5 import T5Family

    def layer_norm(self, h):
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def masked_norm(self, norm, x, *, hidden):
        keep = (hidden != 0).to(x.dtype)
        variance = (x.pow(2) * keep).mean(-1, keepdim=True) * (keep.numel() / keep.sum().clamp_min(1.0))
        return norm.weight * (x * torch.rsqrt(variance + norm.variance_epsilon)) * keep

    modeling_t5.T5LayerNorm.forward = layer_norm
    T5Family.masked_norm = masked_norm


def gaps(run: Path, *, data: Path, tokenizer: Path, rows: int, source: str, target: str,
         fold_in_float64: bool = False) -> dict:
    import torch
    from transformers import AutoTokenizer

    from nash_ds.models.pruning import prune_model
    from nash_ds.stages.finalize import masked_student

    checkpoints = run / "prune" / "checkpoints"
    method = json.loads((checkpoints / "prune_meta.json").read_text())["method"]
    # what run.py finalize rebuilds (its default droprate_init: the checkpoint's mask state replaces it)
    masked = masked_student(checkpoints, method=method, dtype=torch.float64 if fold_in_float64 else None)
    student = masked.student
    pruned = prune_model(student, masked.plan).eval()  # prune_model leaves ``student`` untouched
    tok = AutoTokenizer.from_pretrained(str(tokenizer))
    examples = [json.loads(line) for line in data.read_text().splitlines()[:rows]]
    firsts = [e[target][0] if isinstance(e[target], list) else e[target] for e in examples]
    enc = tok([e[source] for e in examples], return_tensors="pt", padding=True)
    labels = tok(firsts, return_tensors="pt", padding=True).input_ids
    labels[labels == tok.pad_token_id] = -100
    batch = {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask, "labels": labels}
    with torch.no_grad():
        m32, p32 = student(**batch).logits, pruned(**batch).logits
        m64 = copy.deepcopy(student).double()(**batch).logits
        p64 = copy.deepcopy(pruned).double()(**batch).logits
    return {"run": run.name, "method": method, "max_abs_logit": float(m32.abs().max()),
            "gap_fp32": float((m32 - p32).abs().max()), "gap_fp64": float((m64 - p64).abs().max()),
            "rounding_fp32": float((m32.double() - m64).abs().max())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="pipeline output directories with prune/checkpoints")
    p.add_argument("--data", type=Path, required=True, help="a JSONL split of the task")
    p.add_argument("--tokenizer", type=Path, required=True)
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--source-column", default="source")
    p.add_argument("--target-column", default="target")
    p.add_argument("--float64-norms", action="store_true",
                   help="T5: norms in the model's dtype, masks folded into float64 weights (the float32 columns then "
                        "show the float64 models too)")
    args = p.parse_args(argv)
    import torch

    from nash_ds.config import FinalizeConfig

    torch.set_num_threads(1)
    if args.float64_norms:
        float64_norms()
    atol, rtol = FinalizeConfig.atol, FinalizeConfig.rtol
    print("| run | method | max |logit| | masked - pruned, float32 | masked - pruned, float64 | float32 - float64 "
          "(masked) | default tolerance |")
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        g = gaps(run, data=args.data, tokenizer=args.tokenizer, rows=args.rows, source=args.source_column,
                 target=args.target_column, fold_in_float64=args.float64_norms)
        print(f"| {g['run']} | {g['method']} | {g['max_abs_logit']:.1f} | {g['gap_fp32']:.2e} | {g['gap_fp64']:.2e} | "
              f"{g['rounding_fp32']:.2e} | {atol + rtol * g['max_abs_logit']:.2e} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
