"""Write a DeepSpeed hostfile (``<host> slots=<G>`` per line) for ``deepspeed --hostfile`` outside Slurm.

    python launch/make_hostfile.py --nodes "gpu[01-04]" --slots 8 -o hostfile
    python launch/make_hostfile.py --slots 8 -o hostfile           # nodes of $SLURM_JOB_NODELIST
    python launch/make_hostfile.py --nodes a,b --slots 8 -o hostfile --env-file .deepspeed_env
    deepspeed --hostfile hostfile run.py prune --config configs/x.yaml

Node lists take Slurm's syntax (``n[1-3,7],login1``, zero padding kept). ``--env-file`` also
writes the variables that every node needs (HF_*, NCCL_*, NASH_*, ...) in DeepSpeed's
``.deepspeed_env`` format, which its pdsh launcher exports on each node.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

ENV_PREFIXES = ("NCCL_", "HF_", "TRANSFORMERS_", "HUGGINGFACE_", "TORCH_", "NASH_", "CUDA_",
                "OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM", "PYTHONPATH", "GLOO_SOCKET_IFNAME")
"""Variables copied into the env file (names equal to, or starting with, one of these)."""


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets: ``a[1,2],b`` -> ``["a[1,2]", "b"]``."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in node list {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"unbalanced '[' in node list {text!r}")
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _expand_range(spec: str, whole: str) -> list[str]:
    out = []
    for item in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item.strip())
        if not m:
            raise ValueError(f"bad range {item!r} in node list {whole!r} (expected e.g. 1-4 or 07)")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo):
            raise ValueError(f"range {item!r} in node list {whole!r} runs backwards")
        width = len(lo) if lo.startswith("0") else 0
        out += [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    return out


def expand_nodelist(text: str) -> list[str]:
    """Slurm hostlist syntax to host names, in order: ``n[01-02],x`` -> ``["n01", "n02", "x"]``."""
    hosts: list[str] = []
    for part in _split_top(text):
        names = [""]
        for m in re.finditer(r"([^\[\]]*)(?:\[([^\]]*)\])?", part):
            prefix, spec = m.group(1), m.group(2)
            if not prefix and spec is None:
                continue
            options = _expand_range(spec, text) if spec is not None else [""]
            names = [n + prefix + o for n in names for o in options]
        hosts += names
    seen: set[str] = set()
    return [h for h in hosts if not (h in seen or seen.add(h))]


def hostfile_text(hosts: list[str], *, slots: int) -> str:
    if slots < 1:
        raise ValueError(f"--slots must be at least 1, got {slots}")
    if not hosts:
        raise ValueError("no hosts: pass --nodes or run inside a Slurm allocation")
    return "".join(f"{h} slots={slots}\n" for h in hosts)


def env_file_text(environ: dict[str, str]) -> str:
    keep = sorted(k for k in environ if k.startswith(ENV_PREFIXES) and "\n" not in environ[k])
    return "".join(f"{k}={environ[k]}\n" for k in keep)


def _default_slots(environ: dict[str, str]) -> int:
    for key in ("SLURM_GPUS_PER_NODE", "SLURM_GPUS_ON_NODE", "SLURM_NTASKS_PER_NODE"):
        value = environ.get(key, "").split(":")[-1].split("(")[0]
        if value.isdigit():
            return int(value)
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", help="node list, Slurm syntax (default: $SLURM_JOB_NODELIST)")
    p.add_argument("--slots", type=int, default=None,
                   help="processes (GPUs) per node (default: from Slurm's GPU/task counts, else 1)")
    p.add_argument("-o", "--output", default="-", help="hostfile path ('-': stdout)")
    p.add_argument("--env-file", default=None, help="also write these variables here (.deepspeed_env)")
    args = p.parse_args(argv)
    nodes = args.nodes or os.environ.get("SLURM_JOB_NODELIST", "")
    slots = args.slots if args.slots is not None else _default_slots(dict(os.environ))
    try:
        text = hostfile_text(expand_nodelist(nodes), slots=slots)
    except ValueError as e:
        print(f"make_hostfile: error: {e}", file=sys.stderr)
        return 2
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
    if args.env_file:
        Path(args.env_file).write_text(env_file_text(dict(os.environ)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
