"""GPU check: nash-ds end to end on one GPU in a few minutes, as one prepared command.

    python bench/gpu_check.py --out /tmp/gpu_check                  # GPU: bf16, T5-base / BART-large shapes
    python bench/gpu_check.py --device cpu --smoke --out /tmp/x     # the same path on tiny shapes, fp32 (a test)

What it runs (1 rank, random weights: the check is about the machinery, kernels and speed, not quality):

1. a T5-base-shaped model (``nash_ds.models.named_shape_config``; ``--smoke``: the tiny-t5 preset's shape)
   with random weights and the demo tokenizer, saved as a Hugging Face directory;
2. the stages through ``run.py``, as users run them: ``finetune`` (ZeRO-2, ``zero2_bf16.json``), ``prune``
   (ZeRO-3, ``zero3_bf16.json``, NASH k=3 s=0.3, distilled from the finetuned teacher), ``finalize`` and
   ``evaluate`` (task metric, sizes, latency at batch 1 and 8), a few steps each on the demo task
   (``--device cpu``: the fp32 configs ``zero2_fp32.json`` / ``zero3_fp32.json``);
3. the speed table of ``bench/speed.py`` (dense vs NASH export vs its stock twin, k=3, s=0.3, batch 1 and
   8) for the T5-base and BART-large shapes (``--smoke``: tiny-t5 and tiny-bart);
4. a latency profile of the fine-tuned dense model through ``run.py profile`` when
   ``nash_ds/stages/profile.py`` exists, else recorded as "not available".

Each part is recorded (status, seconds, numbers, the end of its log); a failed stage skips the stages
that need its output, and ``--budget-s`` skips what would start after that many seconds. Writes
``<out>/gpu_check.json``, ``<out>/gpu_check.md`` and ``<out>/logs.txt`` (every stage's log), prints
the Markdown summary, and exits 0 when every part that ran passed and nothing was skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STAGE_TIMEOUT_S = 600
"""Per stage; with --budget-s, at most the budget left plus a minute (a hang must not eat the GPU lease)."""


def settings(args) -> dict:
    """Everything that differs between the GPU run and the CPU smoke run."""
    gpu = args.device != "cpu"
    precision = "bf16" if gpu else "fp32"
    if args.smoke:
        steps, samples, shapes, speed = 4, 64, ["tiny-t5", "tiny-bart"], dict(source_length=16, new_tokens=4,
                                                                              warmup=0, repeats=1)
    else:
        steps, samples, shapes, speed = 30, 512, ["t5-base", "bart-large"], dict(source_length=256, new_tokens=64,
                                                                                 warmup=2, repeats=5)
    return {"model": "tiny-t5" if args.smoke else "t5-base", "steps": steps, "train_samples": samples,
            "eval_samples": 16 if args.smoke else 32, "finetune_ds": f"ds_configs/zero2_{precision}.json",
            "prune_ds": f"ds_configs/zero3_{precision}.json", "dtype": "bfloat16" if gpu else "float32",
            "latency_device": "cuda" if gpu else "cpu", "speed_shapes": shapes, "speed": speed,
            "batch_sizes": [1, 8], "k": 3, "sparsity": 0.3, "repeats": 1 if args.smoke else 5}


def random_model_dir(name: str, out: Path, *, seed: int = 0) -> Path:
    """``name``'s shape (a public shape, or a preset with the demo tokenizer's vocabulary) with random weights
    and the demo tokenizer, saved as an HF directory."""
    from transformers import AutoTokenizer

    from nash_ds.demo import DEMO_TOKENIZER
    from nash_ds.models import named_shape_config, preset_config
    from nash_ds.stages.common import model_kwargs_from_tokenizer
    from nash_ds.testing import random_model_dir as save_random

    tok = AutoTokenizer.from_pretrained(DEMO_TOKENIZER)
    config = named_shape_config(name) or preset_config(name, **model_kwargs_from_tokenizer(tok))
    return save_random(config, out, seed=seed, tokenizer=tok)


class Check:
    """Runs the parts, records them, writes the reports."""

    def __init__(self, args):
        self.args = args
        self.s = settings(args)
        self.out = Path(args.out).resolve()
        self.run_dir = self.out / "run"
        self.log_dir = self.out / "logs"
        self.t0 = time.perf_counter()
        self.parts: dict[str, dict] = {}

    # -- helpers ----------------------------------------------------------------------------
    def over_budget(self, name: str) -> bool:
        if self.args.budget_s and time.perf_counter() - self.t0 > self.args.budget_s:
            self.parts[name] = {"status": "skipped", "why": f"over --budget-s {self.args.budget_s}"}
            return True
        return False

    def timeout_s(self) -> float:
        if not self.args.budget_s:
            return STAGE_TIMEOUT_S
        return min(STAGE_TIMEOUT_S, max(60.0, self.args.budget_s + 60.0 - (time.perf_counter() - self.t0)))

    def common(self) -> list[str]:
        s = self.s
        return [f"output_dir={self.run_dir}", "data.task=demo", f"data.max_train_samples={s['train_samples']}",
                f"data.max_eval_samples={s['eval_samples']}", "generation.max_new_tokens=16",
                "generation.eval_batch_size=16", "train.micro_batch_size=8", "train.log_every=5",
                "train.eval_every=0", "train.save_every=0", "train.warmup_steps=2", "seed=0"]

    def stage(self, name: str, stage: str, overrides: list[str], *, needs: tuple[str, ...] = ()) -> bool:
        """``run.py stage`` in a subprocess (no terminal: plain progress lines); True when it exited 0."""
        from nash_ds.testing import RUN_PY, offline_env, run_ranks

        missing = [n for n in needs if self.parts.get(n, {}).get("status") != "ok"]
        if missing:
            self.parts[name] = {"status": "skipped", "why": f"needs {', '.join(missing)}"}
            return False
        if self.over_budget(name):
            return False
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        t0 = time.perf_counter()
        try:
            rc = run_ranks(RUN_PY, stage, *self.common(), *overrides, env=offline_env(), log=log,
                           stdin=subprocess.DEVNULL, timeout=self.timeout_s()).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        lines = log.read_text(errors="replace").splitlines()
        progress = [ln for ln in lines if " step " in ln and ln.startswith("[nash-ds]") and "%)" in ln]
        self.parts[name] = {"status": "ok" if rc == 0 else "failed", "exit": rc,
                            "seconds": round(time.perf_counter() - t0, 1), "log": str(log),
                            "last_progress": progress[-1] if progress else None,
                            **({} if rc == 0 else {"log_tail": lines[-25:]})}
        print(f"[gpu_check] {name}: {self.parts[name]['status']} in {self.parts[name]['seconds']} s", flush=True)
        return rc == 0

    # -- parts ------------------------------------------------------------------------------
    def environment(self) -> None:
        import torch
        import transformers

        env = {"python": platform.python_version(), "torch": torch.__version__,
               "transformers": transformers.__version__, "cuda": torch.version.cuda,
               "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
               "cpus": len(os.sched_getaffinity(0)), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        for name in ("deepspeed", "datasets"):
            try:
                env[name] = __import__(name).__version__
            except Exception as e:  # noqa: BLE001 - recorded: the stages below will fail and say why
                env[name] = f"missing ({type(e).__name__}: {e})"
        self.parts["environment"] = {"status": "ok", **env}

    def model(self) -> None:
        t0 = time.perf_counter()
        path = self.out / "random_model"
        try:
            random_model_dir(self.s["model"], path)
            self.parts["model"] = {"status": "ok", "shape": self.s["model"], "path": str(path),
                                   "seconds": round(time.perf_counter() - t0, 1)}
        except Exception as e:  # noqa: BLE001 - recorded; the stages are skipped
            self.parts["model"] = {"status": "failed", "error": f"{type(e).__name__}: {e}"}

    def stages(self) -> None:
        s, run = self.s, self.run_dir
        steps = [f"train.max_steps={s['steps']}"]
        self.stage("finetune", "finetune", [f"model.name_or_path={self.out / 'random_model'}",
                                            f"train.ds_config={s['finetune_ds']}", "train.lr=1e-4", *steps],
                   needs=("model",))
        nash = ["prune.method=nash", f"prune.decoder_layers={s['k']}", f"prune.target_sparsity={s['sparsity']}"]
        self.stage("prune", "prune", [f"prune.teacher={run / 'finetune' / 'model'}", f"train.ds_config={s['prune_ds']}",
                                      f"prune.sparsity_warmup_steps={max(1, s['steps'] // 2)}", *nash, *steps],
                   needs=("finetune",))
        self.stage("finalize", "finalize", [*nash, "finalize.check_batches=1"], needs=("prune",))
        if self.parts["finalize"]["status"] == "ok":
            report = json.loads((run / "finalize" / "pruning_report.json").read_text())
            self.parts["finalize"].update(sparsity=report["sparsity_vs_teacher"], export_class=report["export_class"],
                                          self_check=report["self_check"])
        sizes = ",".join(map(str, s["batch_sizes"]))
        self.stage("evaluate", "evaluate", [f"evaluate.batch_sizes=[{sizes}]", f"evaluate.dtype={s['dtype']}",
                                            f"evaluate.device={s['latency_device']}",
                                            f"evaluate.repeats={s['repeats']}", "evaluate.warmup=1"],
                   needs=("finalize",))
        if self.parts["evaluate"]["status"] == "ok":
            report = json.loads((run / "evaluate" / "report.json").read_text())
            base = {r["batch_size"]: r["generate_ms"] for r in report["models"][report["baseline"]]["latency"]}
            self.parts["evaluate"]["rows"] = [
                {"model": name, "params": m["params"]["total"], "metric": report["metric"],
                 "value": m["metrics"][report["metric"]], "batch_size": r["batch_size"],
                 "generate_ms": r["generate_ms"], "decoder_ms_per_token": r["decoder_ms_per_token"],
                 "speedup": base[r["batch_size"]] / r["generate_ms"]}
                for name, m in report["models"].items() for r in m["latency"]]

    def speed(self) -> None:
        import speed as bench_speed

        s = self.s
        for shape in s["speed_shapes"]:
            name = f"speed {shape}"
            if self.over_budget(name):
                continue
            rows: list[dict] = []
            ns = SimpleNamespace(k=[s["k"]], sparsity=[s["sparsity"]], batch_size=s["batch_sizes"],
                                 device=s["latency_device"], dtype=s["dtype"], beams=1, seed=0, uniform=False,
                                 json=None, **s["speed"])
            t0 = time.perf_counter()
            try:
                bench_speed.bench_shape(shape, ns, rows)
                self.parts[name] = {"status": "ok", "seconds": round(time.perf_counter() - t0, 1), "rows": rows}
            except Exception as e:  # noqa: BLE001 - recorded; the other parts go on
                self.parts[name] = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                                    "seconds": round(time.perf_counter() - t0, 1)}
            print(f"[gpu_check] {name}: {self.parts[name]['status']}", flush=True)

    def profile(self) -> None:
        if not (REPO / "nash_ds" / "stages" / "profile.py").is_file():
            self.parts["profile"] = {"status": "not available", "why": "nash_ds/stages/profile.py does not exist"}
            return
        # the latency profile is of the dense shape the prune stage reads (a pruned export has no uniform shape)
        self.stage("profile", "profile", [f"model.name_or_path={self.run_dir / 'finetune' / 'model'}"],
                   needs=("finetune",))

    # -- reports ----------------------------------------------------------------------------
    def ok(self) -> bool:
        return all(p["status"] in ("ok", "not available") for p in self.parts.values())

    def markdown(self) -> str:
        import speed as bench_speed

        env = self.parts["environment"]
        lines = [f"# nash-ds GPU check ({'smoke, ' if self.args.smoke else ''}{self.s['latency_device']}, "
                 f"{self.s['dtype']})", "",
                 f"{env['date']}; GPU {env['gpu']}; torch {env['torch']} (CUDA {env['cuda']}), transformers "
                 f"{env['transformers']}, deepspeed {env['deepspeed']}, datasets {env['datasets']}, python "
                 f"{env['python']}, {env['cpus']} CPUs; total {time.perf_counter() - self.t0:.0f} s: "
                 f"**{'PASSED' if self.ok() else 'FAILED'}**", "",
                 "| part | status | seconds | notes |", "|---|---|---|---|"]
        for name, p in self.parts.items():
            if name == "environment":
                continue
            note = p.get("why") or p.get("error") or p.get("last_progress") or ""
            if name == "finalize" and "sparsity" in p:
                note = (f"{p['export_class']}, encoder sparsity {p['sparsity']['encoder']:.3f}, self-check "
                        f"{p['self_check']['max_abs_logit_diff']:.1e}")
            if p.get("exit") not in (None, 0):
                note = f"exit {p['exit']}; see {p['log']}"
            lines.append(f"| {name} | {p['status']} | {p.get('seconds', '')} | {str(note).replace('|', '/')} |")
        rows = self.parts.get("evaluate", {}).get("rows")
        if rows:
            lines += ["", "evaluate (task metric on the demo set; random weights, so only the machinery counts):", "",
                      "| model | params | metric | batch | generate ms | decoder ms/token | speedup |",
                      "|---|---|---|---|---|---|---|"]
            for r in rows:
                lines.append(f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['metric']} {r['value']:.2f} | "
                             f"{r['batch_size']} | {r['generate_ms']:.1f} | {r['decoder_ms_per_token']:.2f} | "
                             f"{r['speedup']:.2f}x |")
        speed_rows = [r for name, p in self.parts.items() if name.startswith("speed ") for r in p.get("rows", [])]
        if speed_rows:
            lines += ["", "speed (bench/speed.py; wall clock, median (min)):", "", bench_speed.markdown(speed_rows)]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        result = {"ok": self.ok(), "smoke": self.args.smoke, "settings": self.s, "parts": self.parts,
                  "seconds": round(time.perf_counter() - self.t0, 1)}
        (self.out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))
        md = self.markdown()
        (self.out / "gpu_check.md").write_text(md)
        logs = [Path(p["log"]) for p in self.parts.values() if p.get("log")]
        (self.out / "logs.txt").write_text("".join(f"===== {p.name}\n{p.read_text(errors='replace')}\n" for p in logs))
        print(md, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory for the run, gpu_check.json / .md and logs.txt")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cuda: bf16 configs; cpu: fp32")
    p.add_argument("--smoke", action="store_true", help="tiny shapes and a handful of steps (the test suite's run)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="skip parts that would start after this many seconds (default: 420 on cuda, none on cpu)")
    args = p.parse_args(argv)
    if args.budget_s is None and args.device == "cuda":
        args.budget_s = 420.0
    sys.path.insert(0, str(REPO / "bench"))
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no GPU (use --device cpu --smoke for the CPU path)")
    check = Check(args)
    check.environment()
    check.model()
    check.stages()
    check.speed()
    check.profile()
    check.write()
    return 0 if check.ok() else 1


if __name__ == "__main__":
    raise SystemExit(main())
