"""Optimizer offload: the trainer builds DeepSpeed's CPU Adam for it, and CPU Adam trains like torch AdamW."""

from __future__ import annotations

import json

import pytest
import torch

from nash_ds.trainer import build_optimizer
from tests.helpers import FAST, REPO, TINY, load_weights, run_nash, scalars


def _offload_config(tmp_path, zero: int) -> str:
    ds = json.loads((REPO / "ds_configs" / f"zero{zero}_fp32.json").read_text())
    ds["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    path = tmp_path / f"zero{zero}_fp32_offload.json"
    path.write_text(json.dumps(ds))
    return str(path)


def _groups(seed: int) -> list[dict]:
    """The trainer's kinds of groups: decayed model weights, no decay, and a mask group without momentum."""
    g = torch.Generator().manual_seed(seed)
    p = [torch.nn.Parameter(torch.randn(n, generator=g)) for n in (37, 5, 9)]
    return [{"params": [p[0]], "lr": 1e-2, "weight_decay": 0.1, "name": "model", "schedule": "model"},
            {"params": [p[1]], "lr": 1e-2, "weight_decay": 0.0, "name": "model_no_decay", "schedule": "model"},
            {"params": [p[2]], "lr": 1e-1, "weight_decay": 0.0, "betas": (0.0, 0.999), "name": "masks",
             "schedule": "constant"}]


@pytest.mark.parametrize("device,expected", [("cpu", "DeepSpeedCPUAdam"), ("nvme", "DeepSpeedCPUAdam"),
                                             ("none", "AdamW"), (None, "AdamW")])
def test_build_optimizer_picks_cpu_adam_only_when_the_optimizer_is_offloaded(device, expected):
    zero = {"stage": 2} if device is None else {"stage": 2, "offload_optimizer": {"device": device}}
    opt = build_optimizer(_groups(0), ds={"zero_optimization": zero}, lr=1e-3, weight_decay=0.0)
    assert type(opt).__name__ == expected
    assert [g["betas"] for g in opt.param_groups] == [(0.9, 0.999), (0.9, 0.999), (0.0, 0.999)]
    assert all("schedule" not in g and g["eps"] == 1e-8 for g in opt.param_groups)
    if expected == "DeepSpeedCPUAdam":
        assert all(g["bias_correction"] is True for g in opt.param_groups)


def test_cpu_adam_steps_equal_torch_adamw_per_group():
    groups_a, groups_b = _groups(1), _groups(1)
    cpu = build_optimizer(groups_a, ds={"zero_optimization": {"offload_optimizer": {"device": "cpu"}}},
                          lr=1e-3, weight_decay=0.0)
    ref = build_optimizer(groups_b, ds={}, lr=1e-3, weight_decay=0.0)
    assert isinstance(ref, torch.optim.AdamW) and not isinstance(cpu, torch.optim.AdamW)
    params_a = [p for g in groups_a for p in g["params"]]
    params_b = [p for g in groups_b for p in g["params"]]
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        for pa, pb in zip(params_a, params_b):
            grad = torch.randn(pa.shape, generator=g)
            pa.grad, pb.grad = grad.clone(), grad.clone()
        cpu.step()
        ref.step()
    for pa, pb, init in zip(params_a, params_b, [p for gr in _groups(1) for p in gr["params"]]):
        assert (pb - init).abs().max() > 1e-3  # the steps moved the weights well beyond the tolerance
        # stated tolerance: measured max |diff| 1.7e-6 (masks group, lr 0.1, weights ~1: about one fp32 ulp
        # per step, from CPU Adam's other order of operations), against updates of up to 0.1 per step
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("zero", [2, 3])
def test_offloaded_optimizer_trains_like_torch_adamw_on_two_ranks(tmp_path, zero):
    """ZeRO-Offload on the CPU accelerator: the trainer uses CPU Adam, and the model equals plain ZeRO's."""
    common = [TINY, "train.max_steps=6", "train.eval_every=0", "train.micro_batch_size=4", "train.lr=1e-3",
              "train.warmup_steps=0", "train.weight_decay=0.1", *FAST]
    a, b = tmp_path / "offload", tmp_path / "plain"
    ra = run_nash("finetune", f"output_dir={a}", f"train.ds_config={_offload_config(tmp_path, zero)}", *common,
                  ranks=2)
    rb = run_nash("finetune", f"output_dir={b}", f"train.ds_config=ds_configs/zero{zero}_fp32.json", *common,
                  ranks=2)
    assert "[nash-ds] optimizer: DeepSpeedCPUAdam" in ra.stderr
    assert "[nash-ds] optimizer: AdamW" in rb.stderr
    wa, wb = load_weights(a / "finetune" / "model"), load_weights(b / "finetune" / "model")
    assert wa.keys() == wb.keys()
    for k in wa:
        # stated tolerance: measured max |diff| 4.8e-7 after 6 steps (ZeRO-2 and -3) against updates of ~6e-3
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4, msg=k)
    la = [v for _, v in scalars(a / "finetune" / "tensorboard", "train/loss")]
    lb = [v for _, v in scalars(b / "finetune" / "tensorboard", "train/loss")]
    torch.testing.assert_close(torch.tensor(la), torch.tensor(lb), atol=1e-5, rtol=1e-5)
