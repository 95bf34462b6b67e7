"""bench/gpu_check.py: the GPU check's CPU smoke run goes through the same path, so the script cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tests.helpers import REPO, env

sys.path.insert(0, str(REPO / "bench"))


def test_gpu_settings_name_real_configs_and_shapes():
    import gpu_check
    import speed

    from nash_ds.models import named_shape_config

    s = gpu_check.settings(SimpleNamespace(device="cuda", smoke=False))
    assert s["finetune_ds"] == "ds_configs/zero2_bf16.json" and s["prune_ds"] == "ds_configs/zero3_bf16.json"
    for key in ("finetune_ds", "prune_ds"):
        assert (REPO / s[key]).is_file()
    assert named_shape_config(s["model"]).d_model == 768  # T5-base
    assert s["speed_shapes"] == ["t5-base", "bart-large"] and set(s["speed_shapes"]) <= set(speed.SHAPES)
    assert (s["k"], s["sparsity"], s["batch_sizes"], s["dtype"]) == (3, 0.3, [1, 8], "bfloat16")
    smoke = gpu_check.settings(SimpleNamespace(device="cpu", smoke=True))
    assert smoke["finetune_ds"].endswith("zero2_fp32.json") and smoke["prune_ds"].endswith("zero3_fp32.json")


@pytest.mark.slow
def test_cpu_smoke_run_passes_and_writes_its_reports(tmp_path):
    out = tmp_path / "gc"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--device", "cpu", "--smoke",
                        "--out", str(out)], cwd=REPO, env=env(), stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=900, check=False)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    result = json.loads((out / "gpu_check.json").read_text())
    parts = result["parts"]
    assert result["ok"] and result["smoke"]
    for stage in ("model", "finetune", "prune", "finalize", "evaluate", "speed tiny-t5", "speed tiny-bart"):
        assert parts[stage]["status"] == "ok", (stage, parts[stage])
    assert parts["profile"]["status"] in ("ok", "not available")
    assert parts["finalize"]["export_class"].startswith("Nash")  # per-layer widths: the remote classes
    assert {r["batch_size"] for r in parts["evaluate"]["rows"]} == {1, 8}
    speed_rows = parts["speed tiny-t5"]["rows"]
    assert {(r["kind"], r["batch_size"]) for r in speed_rows} == {(k, b) for k in ("dense", "nash", "stock")
                                                                  for b in (1, 8)}
    md = (out / "gpu_check.md").read_text()
    assert "**PASSED**" in md and "| prune | ok |" in md and "export / stock twin" in md
    logs = (out / "logs.txt").read_text()
    assert "===== prune.log" in logs and "prune step 4/4" in logs
    assert "**PASSED**" in r.stdout  # the summary is printed
