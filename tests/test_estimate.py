"""The memory estimator: DeepSpeed's numbers where they overlap, 1/N scaling, offload advice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nash_ds.config import EstimateConfig, load_config
from nash_ds.memory import (
    GiB,
    Plan,
    deepspeed_cold_table,
    estimate,
    format_table,
    meta_model,
    model_config,
    model_states,
    param_stats,
)
from nash_ds.stages.estimate import run

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def xl_counts() -> tuple[int, int]:
    return param_stats(meta_model(model_config("t5-xl")))


def test_named_shapes_have_public_sizes():
    expected = {"t5-base": 222_903_552, "t5-large": 737_668_096, "t5-xl": 2_849_757_184,
                "bart-large": 406_291_456, "google/flan-t5-xl": 2_849_757_184}
    for name, n in expected.items():
        assert param_stats(meta_model(model_config(name)))[0] == n, name


def test_unknown_model_names_the_shapes():
    with pytest.raises(ValueError, match="t5-base"):
        model_config("/no/such/dir")


@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.parametrize("nodes,per_node", [(1, 8), (2, 8), (1, 1)])
def test_bf16_model_states_equal_deepspeed_cold_estimator(xl_counts, stage, nodes, per_node):
    total, largest = xl_counts
    table = deepspeed_cold_table(total, largest, stage=stage, num_gpus_per_node=per_node, num_nodes=nodes)
    assert table, "DeepSpeed's estimator printed no rows"
    for cpu_gb, gpu_gb, options in table:  # every row DeepSpeed prints: offload and zero_init variants
        plan = Plan("x", stage=stage, dtype_bytes=2, offload_optimizer="offload_optimizer=none" not in options,
                    offload_param=stage == 3 and "offload_param=none" not in options)
        ours = model_states(total, largest, plan, world_size=nodes * per_node, ranks_per_node=per_node,
                            zero_init="zero_init=0" not in options)
        assert ours["device"] / GiB == pytest.approx(gpu_gb, abs=0.006), options
        assert ours["host_per_node"] / GiB == pytest.approx(cpu_gb, abs=0.006), options
    assert len(table) == (6 if stage == 3 else 2)


@pytest.mark.parametrize("dtype_bytes", [2, 4])
def test_zero3_model_states_shard_as_one_over_n(xl_counts, dtype_bytes):
    total, largest = xl_counts
    plan = Plan("z3", stage=3, dtype_bytes=dtype_bytes)
    sharded = [model_states(total, largest, plan, world_size=n, ranks_per_node=8)["device"] - 4 * largest
               for n in (1, 2, 4, 8, 16, 64)]
    for n, b in zip((1, 2, 4, 8, 16, 64), sharded):
        assert b * n == pytest.approx(sharded[0], rel=1e-6)


def test_zero2_keeps_weights_replicated(xl_counts):
    total, largest = xl_counts
    plan = Plan("z2", stage=2, dtype_bytes=4)
    one, many = (model_states(total, largest, plan, world_size=n, ranks_per_node=8)["device"] for n in (1, 1024))
    assert many == pytest.approx(4 * total, rel=0.01)  # fp32 weights stay whole on every rank
    assert one == 20 * total


def _cfg(*overrides):
    return load_config(None, ["data.max_source_length=512", "data.max_target_length=128",
                              "train.micro_batch_size=4", *overrides])


def test_small_gpu_gets_offload_and_big_cluster_does_not():
    small = estimate(_cfg(), EstimateConfig(model="t5-xl", world_size=1, ranks_per_node=1, memory_gb=24))
    assert small["recommended"] is not None and "offload" in small["recommended"]
    big = estimate(_cfg(), EstimateConfig(model="t5-xl", world_size=16, ranks_per_node=8, memory_gb=80))
    assert big["recommended"] is not None and "offload" not in big["recommended"]


def test_nothing_fits_advises_checkpointing():
    res = estimate(_cfg("train.micro_batch_size=64"), EstimateConfig(model="t5-xl", world_size=8, memory_gb=16))
    assert res["recommended"] is None
    assert any("gradient_checkpointing" in a or "micro_batch_size" in a for a in res["advice"])


def test_gradient_checkpointing_lowers_activations():
    plain = estimate(_cfg(), EstimateConfig(model="t5-large"))["plans"][0]
    ckpt = estimate(_cfg("train.gradient_checkpointing=true"), EstimateConfig(model="t5-large"))["plans"][0]
    assert ckpt["rows"]["activations"] < 0.5 * plain["rows"]["activations"]
    assert plain["total_other_checkpointing"] == pytest.approx(ckpt["total"], rel=1e-6)


def test_prune_adds_teacher_masks_and_shards_the_teacher_under_zero3():
    res = estimate(_cfg("prune.decoder_layers=4"), EstimateConfig(model="t5-xl", stage="prune", world_size=16))
    assert res["teacher_params"] == 2_849_757_184
    assert res["student_params"] < res["teacher_params"] * 0.6  # 4 of 24 decoder layers
    # NASH: encoder heads + FFN dims per layer, 2 lambdas, two d x d projections with bias
    assert res["masks_params"] == 24 * (32 + 5120) + 2 + 2 * (2048 * 2048 + 2048)
    plans = {p["config"]: p for p in res["plans"]}
    z2, z3 = plans["zero2_bf16"]["rows"], plans["zero3_bf16"]["rows"]
    assert z2["teacher"] == 2 * res["teacher_params"]  # replicated bf16
    assert z3["teacher"] < z2["teacher"] / 8
    assert z3["masks+lambdas+proj"] > 0


def test_world_of_one_on_cpu_recommends_zero0():
    res = estimate(load_config(None, []), EstimateConfig(model="t5-small", device="cpu", world_size=1,
                                                          ranks_per_node=1, memory_gb=8))
    assert res["recommended"] == "ds_configs/zero0_fp32.json"


def test_cpu_zero3_beats_unsharded_for_t5_base():
    cfg = load_config(None, ["data.max_source_length=64", "data.max_target_length=16", "train.micro_batch_size=1"])
    res = estimate(cfg, EstimateConfig(model="t5-base", device="cpu", world_size=2, ranks_per_node=2, memory_gb=11))
    plans = {p["config"]: p["total"] for p in res["plans"]}
    assert plans["zero3_fp32"] < 0.75 * plans["zero0_fp32"]


def test_bad_values_name_the_key():
    with pytest.raises(ValueError, match="estimate.world_size"):
        estimate(_cfg(), EstimateConfig(model="t5-base", world_size=0))
    with pytest.raises(ValueError, match="estimate.device"):
        estimate(_cfg(), EstimateConfig(model="t5-base", device="tpu"))
    with pytest.raises(ValueError, match="bf16"):
        estimate(_cfg(), EstimateConfig(model="t5-base", device="cpu", candidates=["zero3_bf16.json"]))


def test_run_logs_a_table(caplog):
    caplog.set_level("INFO", logger="nash_ds")
    result = run(load_config(None, []))  # the demo's preset:tiny-t5, default EstimateConfig
    out = caplog.text
    assert "recommended:" in out and "student states" in out
    assert format_table(result) in out


def test_shipped_ds_configs_are_valid_zero_configs():
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    for path in sorted((REPO / "ds_configs").glob("*.json")):
        ds = json.loads(path.read_text())
        assert "optimizer" not in ds and "scheduler" not in ds, path.name
        DeepSpeedZeroConfig(**ds.get("zero_optimization", {}))  # unknown or mistyped keys raise
        plan = Plan.from_ds(path.stem, ds)
        assert (plan.dtype_bytes == 4) == path.stem.endswith("fp32"), path.name
        if plan.dtype_bytes == 4 and plan.stage:  # CPU configs: buckets sized for host memory
            assert plan.reduce_bucket <= 1e7, path.name
            assert plan.stage != 3 or plan.sub_group <= 1e8, path.name  # bounds the optimizer-step temporaries
        if plan.offload_optimizer:
            assert "zero_force_ds_cpu_optimizer" not in ds, path.name  # the trainer builds DeepSpeedCPUAdam
