"""What a log file of the demo holds when nobody watches a terminal (Slurm, `> log 2>&1`)."""

from __future__ import annotations

import io
import re
import subprocess

import pytest
import yaml
from PIL import Image

from tests.helpers import env, run_ranks

pytestmark = pytest.mark.slow

MAX_LINE = 500
MIN_IMAGE_WIDTH = 400
PLAIN = re.compile(r"^\[nash-ds\] (train|prune) step (\d+)/(\d+) \(\d+%\): loss \d")


def _short_demo(tmp_path) -> dict:
    """The demo pipeline, shortened (a YAML file keeps the launcher's command line short, as the demo's is)."""
    return {"output_dir": str(tmp_path / "demo"),
            "train": {"max_steps": 12, "eval_every": 6, "log_every": 2, "micro_batch_size": 8},
            "data": {"max_train_samples": 256, "max_eval_samples": 16},
            "generation": {"max_new_tokens": 8, "eval_batch_size": 16},
            "prune": {"sparsity_warmup_steps": 6},
            "pipeline": {"final_max_steps": 4},
            "evaluate": {"repeats": 1, "warmup": 1}}


def test_demo_pipeline_log_file_has_plain_progress_lines_and_no_huge_line(tmp_path):
    config = tmp_path / "short_demo.yaml"
    config.write_text(yaml.safe_dump(_short_demo(tmp_path)))
    log_file = tmp_path / "log"
    e = env()
    e.pop("OMP_NUM_THREADS")  # as a user runs it: nash-ds picks the threads per rank
    # stdout and stderr into one file (nothing before them): no terminal anywhere
    r = run_ranks("run.py", "pipeline", "--config", str(config), ranks=2, env=e, log=log_file, header=False,
                  stdin=subprocess.DEVNULL, timeout=900)
    text = log_file.read_text(errors="replace")
    assert r.returncode == 0, text[-6000:]
    lines = text.splitlines()
    longest = max(lines, key=len)
    assert len(longest) <= MAX_LINE, f"{len(longest)} characters: {longest[:300]}..."
    assert "\r" not in text  # no progress-bar redraws
    # no Python warning (e.g. torch's all_gather_into_tensor deprecation via DeepSpeed, float() of a grad tensor)
    warned = [line for line in lines if re.search(r"\b[A-Z]\w*Warning: ", line)]
    assert not warned, "\n".join(warned[:10])
    assert not [line for line in lines if re.search(r"\d+%\|", line)], "a progress bar was drawn"

    plain = [PLAIN.match(line) for line in lines]
    steps = {(m.group(1), int(m.group(2))) for m in plain if m}
    assert {("train", s) for s in (2, 4, 12)} <= steps and {("prune", s) for s in (2, 12)} <= steps, steps
    prune_line = next(line for line in lines if PLAIN.match(line) and " prune step 12/12" in line)
    for part in ("exp. sparsity enc", "target", "lr ", "tok/s", "ETA"):
        assert part in prune_line, prune_line
    assert sum("torch threads per rank:" in line for line in lines) == 1  # rank 0 only
    assert any(re.match(r"\[nash-ds\] step 6: .*rougeL=", line) for line in lines)  # evaluation results

    # the mask pictures: TensorBoard images and finalize's PNGs are wide enough to read
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "demo" / "prune" / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()["images"]
    assert {"masks/encoder_heads", "masks/encoder_ffn"} <= set(tags)
    widths = [e.width for tag in tags for e in acc.Images(tag)]
    assert min(widths) >= MIN_IMAGE_WIDTH, widths
    assert Image.open(io.BytesIO(acc.Images("masks/encoder_heads")[-1].encoded_image_string)).size[0] >= 400
    pngs = sorted((tmp_path / "demo" / "finalize").glob("masks_*.png"))
    assert [p.name for p in pngs] == ["masks_encoder_ffn.png", "masks_encoder_heads.png"]
    assert all(Image.open(p).size[0] >= MIN_IMAGE_WIDTH for p in pngs)
