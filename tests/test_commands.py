"""Every command line the README, the configs' headers and launch/ show, run the way it is written.

``DOC_COMMANDS`` maps each of them (as ``doc_commands()`` finds it) to the test that runs it, or to why none
can; a command added to the docs without an entry fails ``test_every_documented_command_is_run``.

What changes from the written line, and why:
- ``deepspeed --num_gpus 8`` / ``sbatch ... --ntasks-per-node 8 --gpus-per-node 8``: this machine has 2 CPU
  cores and the test cluster 2 one-CPU nodes, so 2 ranks (or 1 for a command that stops before any collective);
- heavy configs (t5-large, facebook/bart-large, flan-t5-xl, hub data sets) cannot download here. Either cheap
  overrides are appended after the command as written (``TINY``: a preset model, the demo task, two steps, an fp32
  DeepSpeed config for CPU) and the run must finish, or only ``output_dir`` and an fp32 ``train.ds_config`` are
  appended and the run must stop with exit 2 at the hub name, saying that it needs the network, having written
  nothing. Each command below says which;
- ``output_dir`` always points into the test's temporary directory.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, env, free_port, run_ranks
from tests.slurm_helpers import Job, job_env, slurm_or_skip, wait_done

STAGES = ("finetune", "prune", "finalize", "evaluate", "pipeline", "estimate", "profile", "export")
TINY = ["model.name_or_path=preset:tiny-t5", "model.export_dtype=float32", "data.task=demo",
        "data.max_source_length=64", "data.max_target_length=32", "data.max_train_samples=64",
        "data.max_eval_samples=8", "train.ds_config=ds_configs/zero2_fp32.json", "train.micro_batch_size=4",
        "train.grad_accum=1", "train.max_steps=2", "train.warmup_steps=0", "train.eval_every=0", "train.save_every=0",
        "generation.num_beams=1", "generation.max_new_tokens=4", "generation.eval_batch_size=8"]
"""Appended to a heavy command so that it runs here in seconds (a tiny T5 on the demo task)."""

NETWORK = "a hub name needs the network or a filled HF cache"
HEAVY_PIPELINES = {  # the config headers' pipeline commands: (arguments after run.py, the hub model they stop at)
    "deepspeed --num_gpus 8 run.py pipeline --config configs/bart_large_cnn.yaml": "facebook/bart-large",
    "deepspeed --num_gpus 8 run.py pipeline --config configs/bart_large_xsum.yaml": "facebook/bart-large",
    "deepspeed --num_gpus 8 run.py pipeline --config configs/t5_large_samsum.yaml": "t5-large",
    "deepspeed --num_gpus 8 run.py pipeline --config configs/t5_xl_samsum.yaml train.grad_accum=2": "google/flan-t5-xl",
}
README_PRUNE = ("deepspeed --num_gpus 8 run.py prune --config configs/t5_large_samsum.yaml prune.decoder_layers=3 "
                "prune.target_sparsity=0.5")
README_SBATCH = ("sbatch -N 2 --ntasks-per-node 8 --gpus-per-node 8 --time 24:00:00 launch/nash.sbatch prune "
                 "--config configs/t5_large_samsum.yaml train.lr=1e-4")
HEAVY_SBATCH = {  # config headers: sbatch commands that stop at the hub model on every rank
    "sbatch -N 1 --ntasks-per-node 8 --gpus-per-node 8 launch/nash.sbatch prune --config configs/bart_large_xsum.yaml":
        "prune.teacher=runs/bart-large-xsum/finetune/model",
    "sbatch -N 2 --ntasks-per-node 8 --gpus-per-node 8 launch/nash.sbatch finetune --config configs/t5_xl_samsum.yaml":
        "google/flan-t5-xl",
    "sbatch -N 2 --ntasks-per-node 8 --gpus-per-node 8 launch/nash.sbatch prune --config configs/t5_xl_samsum.yaml":
        "prune.teacher=runs/t5-xl-samsum/finetune/model",
}
README_SPEED = "deepspeed --num_gpus 2 run.py pipeline prune.target_speedup=2.0"
README_UNIFORM = "deepspeed --num_gpus 2 run.py pipeline prune.uniform_widths=true"
README_EXPORT = "python run.py export export.format=ctranslate2"
HOSTFILES = ['python launch/make_hostfile.py --nodes "gpu[01-04]" --slots 8 -o hostfile --env-file .deepspeed_env',
             'python launch/make_hostfile.py --nodes "gpu[01-04]" --slots 8 -o hostfile',
             "python launch/make_hostfile.py --slots 8 -o hostfile",
             "python launch/make_hostfile.py --nodes a,b --slots 8 -o hostfile --env-file .deepspeed_env"]
NEEDS_SSH = "not run: DeepSpeed's --hostfile launcher reaches every host (even localhost) by passwordless ssh"

DOC_COMMANDS: dict[str, str] = {
    # README
    "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && .venv/bin/deepspeed --num_gpus 2 run.py "
    "pipeline": "the deepspeed part: tests/test_pipeline.py (2 ranks, shortened); the set-up is the environment itself",
    "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && bash .ci/slurm_setup.sh && "
    "NASH_REQUIRE_SLURM=1 .venv/bin/python -m pytest": "not run: it is this test suite (.ci/run runs it)",
    '.venv/bin/python -m pytest -m "not slow"': "not run: it is this test suite's quick subset",
    "deepspeed --num_gpus N run.py <stage> [--config file.yaml] [key=value ...]": "template: test_readme_prune_command",
    "python run.py <stage> ...": "template: test_estimate_command_as_written, test_config_finalize_command",
    "torchrun --nproc_per_node N run.py <stage> ...": "template: test_torchrun_template",
    README_PRUNE: "test_readme_prune_command",
    README_SPEED: "test_readme_target_speedup_command",
    README_UNIFORM: "test_readme_serving_commands",
    README_EXPORT: "test_readme_serving_commands",
    README_SBATCH: "test_readme_sbatch_command",
    HOSTFILES[0]: "test_make_hostfile_commands_as_written",
    "deepspeed --hostfile hostfile run.py prune --config configs/t5_large_samsum.yaml": NEEDS_SSH,
    "run.py estimate estimate.model=t5-large estimate.world_size=16 estimate.memory_gb=80":
        "test_estimate_command_as_written",
    # configs/*.yaml
    "run.py pipeline": "the demo config's note: tests/test_pipeline.py",
    "run.py estimate": "a mention in configs/t5_xl_samsum.yaml: test_estimate_command_as_written",
    **{cmd: "test_heavy_pipeline_commands_stop_at_the_network" for cmd in HEAVY_PIPELINES},
    **{cmd: "test_heavy_sbatch_commands_stop_at_the_network" for cmd in HEAVY_SBATCH},
    "python run.py finalize --config configs/t5_xl_samsum.yaml": "test_config_finalize_command",
    # launch/
    "sbatch -N 2 --ntasks-per-node 8 --gpus-per-node 8 launch/nash.sbatch prune --config configs/x.yaml key=value ...":
        "template: test_readme_sbatch_command",
    "srun ... launch/srun_task.sh finetune --config configs/x.yaml key=value": "template: every sbatch test",
    **{cmd: "test_make_hostfile_commands_as_written" for cmd in HOSTFILES[1:]},
    "deepspeed --hostfile hostfile run.py prune --config configs/x.yaml": NEEDS_SSH,
}


# --------------------------------------------------------------------------- finding them


_LAUNCHER = re.compile(r"(\.venv/bin/|python3? |deepspeed |torchrun |sbatch |srun |run\.py )")
_MENTIONS = ("run.py", "nash.sbatch", "make_hostfile.py", "pytest", "srun_task.sh")


def _commands_in(lines: list[str]) -> list[str]:
    """Command lines in ``lines`` (continuations joined), whole or in backticks; a run.py line must name a stage."""
    out, held = [], ""
    for raw in lines:
        text = (held + " " + raw.strip()) if held else raw.strip()
        if text.endswith("\\"):
            held = text[:-1]
            continue
        held = ""
        found = [m.group(1) for m in re.finditer(r"`([^`]*)`", text)]
        m = _LAUNCHER.search(text)
        if m and "`" not in text:
            found.append(text[m.start():])
        for cmd in found:
            cmd = " ".join(cmd.split("  #")[0].split())
            if not any(w in cmd for w in _MENTIONS) or not _LAUNCHER.match(cmd + " "):
                continue
            after = cmd.split("run.py", 1)[1].split() if "run.py" in cmd else ["<stage>"]
            if after and after[0] in (*STAGES, "<stage>") or "run.py" not in cmd:
                out.append(cmd)
    return out


def doc_commands() -> list[str]:
    """Every command line in the README, the configs' header comments and launch/'s headers."""
    readme = (REPO / "README.md").read_text().splitlines()
    found = _commands_in([line for line in readme if line.startswith("    ")])  # code blocks
    found += [c for c in _commands_in([line for line in readme if not line.startswith("    ")]) if c not in found]
    for path in sorted((REPO / "configs").glob("*.yaml")):
        header = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            header.append(line.lstrip("#"))
        found += _commands_in(header)
    for name in ("nash.sbatch", "srun_task.sh"):  # commands are the indented lines of the header comment
        header = (REPO / "launch" / name).read_text().split("\n\n")[0].splitlines()
        found += _commands_in([line.lstrip("#") for line in header if line.startswith("#   ")])
    hostfile_doc = (REPO / "launch" / "make_hostfile.py").read_text().split('"""')[1].splitlines()
    found += _commands_in(hostfile_doc)
    return list(dict.fromkeys(found))


def test_every_documented_command_is_run():
    found = doc_commands()
    assert len(found) >= 20, found
    missing = [c for c in found if c not in DOC_COMMANDS]
    assert not missing, f"documented commands that no test runs (add them to DOC_COMMANDS): {missing}"
    stale = [c for c in DOC_COMMANDS if c not in found]
    assert not stale, f"DOC_COMMANDS entries no longer in the docs: {stale}"


def _after_run_py(command: str) -> list[str]:
    """The arguments of ``run.py`` in a documented command, as the shell splits them."""
    import shlex

    words = shlex.split(command)
    return words[words.index("run.py") + 1:]


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# --------------------------------------------------------------------------- quick: one process each


ESTIMATE = "run.py estimate estimate.model=t5-large estimate.world_size=16 estimate.memory_gb=80"


@pytest.fixture(scope="module")
def in_process(tmp_path_factory):
    """The estimate and heavy-pipeline commands through ``cli.main`` in one worker process (tests/cli_worker.py),
    from the repository root; {command: exit code, stderr, changed paths}."""
    root = tmp_path_factory.mktemp("doc_commands")
    (root / "tmp").mkdir()
    cases = [{"id": ESTIMATE, "argv": _after_run_py(ESTIMATE), "cwd": str(REPO), "watch": [str(root)]}]
    for i, command in enumerate(HEAVY_PIPELINES):
        cases.append({"id": command, "cwd": str(REPO), "watch": [str(root)],
                      "argv": [*_after_run_py(command), f"output_dir={root}/{i}/run",
                               "train.ds_config=ds_configs/zero3_fp32.json"]})
    (root / "cases.json").write_text(json.dumps(cases))
    before = _tree(REPO)
    r = subprocess.run([sys.executable, str(REPO / "tests" / "cli_worker.py"), str(root / "cases.json"),
                        str(root / "results.json")], check=False, capture_output=True, text=True, timeout=600,
                       env=env(TMPDIR=str(root / "tmp")))
    assert r.returncode == 0, r.stderr[-4000:]
    assert _tree(REPO) == before, "a documented command wrote into the repository"
    return json.loads((root / "results.json").read_text())


def test_estimate_command_as_written(in_process):
    """README (and t5_xl_samsum.yaml's note): ``run.py estimate ...`` as written; it writes nothing."""
    got = in_process[ESTIMATE]
    assert got["code"] == 0, got["stderr"][-3000:]
    assert "t5-large" in got["stderr"] and "recommended" in got["stderr"].lower(), got["stderr"][-3000:]
    # torch creates its compile cache directory in $TMPDIR (torchinductor_<user>) when DeepSpeed's estimators load
    assert [p for p in got["changed"] if "/torchinductor_" not in p] == []


@pytest.mark.parametrize("command", list(HEAVY_PIPELINES))
def test_heavy_pipeline_commands_stop_at_the_network(in_process, command):
    """The config headers' pipelines, arguments as written (one process instead of 8 GPUs) plus output_dir and an
    fp32 ds_config for this CPU machine: exit 2 at the hub model, saying it needs the network; nothing written."""
    got = in_process[command]
    assert got["code"] == 2, got["stderr"][-3000:]
    errors = [line for line in got["stderr"].splitlines() if line.startswith("nash-ds: error:")]
    assert len(errors) == 1 and HEAVY_PIPELINES[command] in errors[0] and NETWORK in errors[0], got["stderr"][-3000:]
    assert "Traceback" not in got["stderr"]
    assert got["changed"] == []


def test_make_hostfile_commands_as_written(tmp_path):
    """README and make_hostfile.py's docstring, as written, in a scratch directory (they write ``hostfile``)."""
    import shlex

    for command in HOSTFILES:
        words = shlex.split(command)
        words[1] = str(REPO / words[1])  # launch/make_hostfile.py, from the repository
        cwd = tmp_path / str(HOSTFILES.index(command))
        cwd.mkdir()
        extra = {"SLURM_JOB_NODELIST": "n[1-2]"} if "--nodes" not in command else {}
        r = subprocess.run([sys.executable, *words[1:]], cwd=cwd, env=env(**extra), capture_output=True, text=True,
                           timeout=60, check=False)
        assert r.returncode == 0, (command, r.stderr)
        want = {"gpu[01-04]": "gpu01 slots=8\ngpu02 slots=8\ngpu03 slots=8\ngpu04 slots=8\n",
                "a,b": "a slots=8\nb slots=8\n", None: "n1 slots=8\nn2 slots=8\n"}
        key = next((k for k in want if k and k in command), None)
        assert (cwd / "hostfile").read_text() == want[key], command
        assert (cwd / ".deepspeed_env").is_file() == ("--env-file" in command)


# --------------------------------------------------------------------------- slow: real launchers


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny T5 (the demo tokenizer) standing in for the configs' fine-tuned teachers."""
    from nash_ds.demo import DEMO_TOKENIZER
    from nash_ds.models import load_model
    from nash_ds.stages.common import load_tokenizer, model_kwargs_from_tokenizer

    out = tmp_path_factory.mktemp("teacher")
    tok = load_tokenizer(str(DEMO_TOKENIZER))
    load_model("preset:tiny-t5", **model_kwargs_from_tokenizer(tok)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def readme_prune(tmp_path_factory, teacher_dir):
    """README's prune command through the DeepSpeed launcher, as written then ``TINY`` (2 ranks, not 8)."""
    out = tmp_path_factory.mktemp("readme_prune") / "run"
    return out, run_ranks("run.py", *_after_run_py(README_PRUNE), *TINY, f"prune.teacher={teacher_dir}",
                          f"output_dir={out}", ranks=2, env=env(), timeout=900)


@pytest.mark.slow
def test_readme_prune_command(readme_prune):
    out, r = readme_prune
    assert r.returncode == 0, r.stderr[-4000:]
    saved = (out / "prune" / "config.yaml").read_text()
    # the command's own overrides came after the config file, and ours after them
    assert "decoder_layers: 3" in saved and "target_sparsity: 0.5" in saved and "zero2_fp32.json" in saved
    meta = json.loads((out / "prune" / "model" / "prune_meta.json").read_text())
    assert len(meta["kept_decoder_layers"]) == 3 and meta["target_sparsity"] == 0.5


def _readme_demo_pipeline(readme_command: str, tmp_path):
    """A README ``deepspeed --num_gpus 2 run.py pipeline ...`` line on 2 ranks as written, then short steps."""
    short = [f"output_dir={tmp_path}", "train.max_steps=6", "train.eval_every=0", "train.micro_batch_size=8",
             "pipeline.final_max_steps=2", "prune.sparsity_warmup_steps=3", "data.max_train_samples=64",
             "data.max_eval_samples=8", "generation.max_new_tokens=4", "evaluate.repeats=2", "evaluate.warmup=1"]
    return run_ranks("run.py", *_after_run_py(readme_command), *short, ranks=2, env=env(), timeout=900)


@pytest.mark.slow
def test_readme_target_speedup_command(tmp_path):
    """README's ``deepspeed --num_gpus 2 run.py pipeline prune.target_speedup=2.0`` on the demo's 8+8-layer T5, as
    written, then short steps: the latency model is measured on rank 0, k chosen for 2x, and the closing table
    shows predicted and measured speedups (whether 2x is met needs the full run: README, "Prune to a speed")."""
    r = _readme_demo_pipeline(README_SPEED, tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "prune: target speedup 2.00x: k=" in r.stderr
    report = json.loads((tmp_path / "finalize" / "pruning_report.json").read_text())
    assert report["target_speedup"] == 2.0 and report["predicted_speedup"] > 1.0
    rows = {row["model"]: row for row in json.loads((tmp_path / "evaluate" / "report.json").read_text())["rows"]}
    assert rows["final"]["predicted_speedup"] == rows["finalize"]["predicted_speedup"] == report["predicted_speedup"]
    assert rows["final"]["speedup"] > 0 and rows["teacher"]["predicted_speedup"] == 1.0


@pytest.mark.slow
def test_readme_serving_commands(tmp_path):
    """README's "Serving the result": the uniform-width pipeline on the demo (short steps) publishes the stock class,
    which loads without remote code, and ``export`` writes a CTranslate2 model whose greedy outputs equal
    transformers' on the demo's validation inputs."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from nash_ds import serving

    r = _readme_demo_pipeline(README_UNIFORM, tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    model_dir = tmp_path / "final" / "model"
    assert json.loads((model_dir / "config.json").read_text())["architectures"] == ["T5ForConditionalGeneration"]
    assert json.loads((tmp_path / "finalize" / "pruning_report.json").read_text())["export_shape"]["shape"] == "stock"
    r = run_ranks("run.py", *_after_run_py(README_EXPORT), f"output_dir={tmp_path}", env=env(), timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir).eval()  # stock: no trust_remote_code
    tok = AutoTokenizer.from_pretrained(model_dir)
    engine = serving.translator(tmp_path / "export" / "ctranslate2")
    sources = ["summarize: " + json.loads(line)["dialogue"] for line in
               (REPO / "nash_ds" / "demo" / "data" / "validation.jsonl").read_text().splitlines()[:16]]
    batch = tok(sources, return_tensors="pt", padding=True)
    want = serving.hf_greedy_ids(model, batch.input_ids, batch.attention_mask, max_new_tokens=16)
    got = serving.generate_ids(engine, tok, serving.unpadded(batch.input_ids, batch.attention_mask), max_new_tokens=16)
    assert got == want and torch.is_tensor(batch.input_ids)
    # int8 keeps the task metric within 1 point (the shortened run's model; the full demo: docs/BENCHMARKS.md)
    from nash_ds.metrics import compute_metrics

    r = run_ranks("run.py", *_after_run_py(README_EXPORT), f"output_dir={tmp_path / 'int8'}",
                  f"export.model={model_dir}", "export.quantization=int8", env=env(), timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    int8 = serving.generate_ids(serving.translator(tmp_path / "int8" / "export" / "ctranslate2", compute_type="int8"),
                                tok, serving.unpadded(batch.input_ids, batch.attention_mask), max_new_tokens=16)
    targets = [json.loads(line)["summary"] for line in
               (REPO / "nash_ds" / "demo" / "data" / "validation.jsonl").read_text().splitlines()[:16]]
    fp32_score = compute_metrics(tok.batch_decode(want, skip_special_tokens=True), targets)["rougeL"]
    int8_score = compute_metrics(tok.batch_decode(int8, skip_special_tokens=True), targets)["rougeL"]
    assert abs(int8_score - fp32_score) <= 1.0, (fp32_score, int8_score)


@pytest.mark.slow
def test_config_finalize_command(readme_prune, teacher_dir):
    """t5_xl_samsum.yaml's ``python run.py finalize --config configs/t5_xl_samsum.yaml`` as written, then ``TINY``,
    on the README prune run's checkpoints; the export is float32 as TINY says."""
    out, r = readme_prune
    assert r.returncode == 0, r.stderr[-4000:]
    r = run_ranks("run.py", *_after_run_py("python run.py finalize --config configs/t5_xl_samsum.yaml"), *TINY,
                  f"output_dir={out}", "prune.decoder_layers=3", f"model.tokenizer={teacher_dir}", env=env(),
                  timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    report = json.loads((out / "finalize" / "pruning_report.json").read_text())
    assert report["self_check"]["reloaded"]["dtype"] == "float32"
    check = report["self_check"]
    assert check["reloaded"]["max_abs_logit_diff"] <= check["reloaded"]["tolerance"]
    # the defaults: atol 1e-4 plus rtol 1e-3 of the largest masked logit
    assert check["tolerance"] == pytest.approx(check["atol"] + check["rtol"] * check["max_abs_logit"])
    assert (check["atol"], check["rtol"]) == (1e-4, 1e-3) and check["max_abs_logit_diff"] <= check["tolerance"]


@pytest.mark.slow
def test_torchrun_template(tmp_path):
    """README's ``torchrun --nproc_per_node N run.py <stage> ...`` with N=2 and a short fine-tune, overrides before
    and after --config."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "run.py", "finetune", "train.max_steps=1", "--config", "configs/demo.yaml", *TINY, f"output_dir={tmp_path}"]
    r = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-4000:]
    assert (tmp_path / "finetune" / "model" / "config.json").is_file()


# --------------------------------------------------------------------------- Slurm




def _sbatch(command: str, extra: list[str], tmp: Path) -> Job:
    """``command`` (an sbatch line of the docs) submitted from the repository root, resized for the test cluster:
    one task per node, no GPUs, a 10-minute limit; the stage's arguments as written, then ``extra``."""
    import shlex

    words = shlex.split(command)
    script = words.index("launch/nash.sbatch")
    opts, args = words[1:script], words[script + 1:]
    sized = []
    i = 0
    while i < len(opts):
        key = opts[i]
        if key in ("--gpus-per-node", "--time"):
            i += 2
            continue
        sized += [key, "1" if key == "--ntasks-per-node" else opts[i + 1]]
        i += 2
    log_dir = tmp / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    e = job_env(NASH_LOG_DIR=str(log_dir))
    cmd = ["sbatch", "--parsable", *sized, "--time", "10", "-J", "nash-doc", "-o", str(tmp / "slurm-%j.out"),
           "launch/nash.sbatch", *args, *extra]
    r = subprocess.run(cmd, cwd=REPO, env=e, capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr}"
    job_id = r.stdout.strip().split(";")[0]
    return Job(job_id, tmp / f"slurm-{job_id}.out", log_dir / job_id)


@pytest.mark.slurm
@pytest.mark.slow
def test_readme_sbatch_command(tmp_path, teacher_dir):
    """README's sbatch line under the real (local) Slurm: 2 nodes x 1 rank; the arguments reach run.py in the
    order written, then ``TINY``; the job completes and the prune output is there."""
    slurm_or_skip()
    out = tmp_path / "run"
    job = _sbatch(README_SBATCH, [*TINY, f"prune.teacher={teacher_dir}", f"output_dir={out}"], tmp_path)
    state = wait_done(job, timeout=600)
    assert state == "COMPLETED", job.logs()
    log = job.batch_log.read_text()
    assert "command: " + sys.executable + " run.py prune --config configs/t5_large_samsum.yaml train.lr=1e-4 " \
        + " ".join(TINY) in log, job.logs()
    assert "2 ranks = 2 nodes" in log, job.logs()
    saved = (out / "prune" / "config.yaml").read_text()
    assert "lr: 0.0001" in saved and "zero2_fp32.json" in saved
    assert (out / "prune" / "model" / "prune_meta.json").is_file()


@pytest.mark.slurm
@pytest.mark.slow
def test_heavy_sbatch_commands_stop_at_the_network(tmp_path):
    """The config headers' sbatch lines, resized, arguments as written plus output_dir and an fp32 ds_config:
    the ranks stop with exit 2 and one error line naming what is missing (the hub model, or the teacher that its
    finetune writes), the job fails, and the run wrote nothing."""
    slurm_or_skip()
    jobs = {}
    for i, command in enumerate(HEAVY_SBATCH):
        tmp = tmp_path / str(i)
        jobs[command] = (tmp, _sbatch(command, [f"output_dir={tmp}/run", "train.ds_config=ds_configs/zero2_fp32.json"],
                                      tmp))
    for command, (tmp, job) in jobs.items():
        state = wait_done(job, timeout=600)
        assert state == "FAILED", job.logs()
        codes = {f.name: f.read_text().strip() for f in job.rank_log_dir.glob("rank-*.exitcode")}
        # the first rank to exit ends with 2; srun's --kill-on-bad-exit stops the others (SIGTERM, 143)
        assert "2" in codes.values() and set(codes.values()) <= {"2", "143"}, job.logs()
        logs = [job.rank_log(r) for r in range(len(codes))]
        errors = [line for log in logs for line in log.splitlines() if line.startswith("nash-ds: error:")]
        # each rank logs to its own file: rank 0 says it first, a rank still running 5 s later says it too
        assert 1 <= len(errors) <= len(codes) and all(HEAVY_SBATCH[command] in e for e in errors), job.logs()
        assert not any("Traceback" in log for log in logs), job.logs()
        assert not (tmp / "run").exists()
