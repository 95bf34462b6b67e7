"""No checkpoint file is unpickled unsafely: a crafted pickle is refused, naming the file, before it runs."""

from __future__ import annotations

import os

import pytest

from nash_ds import checkpoint as ckpt
from tests.helpers import write_crafted_checkpoint


@pytest.mark.parametrize("how", ["system", "exec"])
@pytest.mark.parametrize("zero_stage", [0, 2])
def test_consolidate_refuses_a_pickle_that_would_run_code(tmp_path, how, zero_stage):
    marker = tmp_path / "ran"
    root = write_crafted_checkpoint(tmp_path / "ck", marker, how=how, zero_stage=zero_stage)
    with pytest.raises(ValueError, match="refused to load .*model_states.pt") as e:
        ckpt.consolidate(root.parent, root.name)
    assert ("asks for posix.system" if how == "system" else "asks for exec") in str(e.value)
    assert not marker.exists()


def test_deepspeed_fallback_reader_checks_the_files_first(tmp_path):
    marker = tmp_path / "ran"
    root = write_crafted_checkpoint(tmp_path / "ck", marker, zero_stage=2)
    with pytest.raises(ValueError, match="refused to load"):
        ckpt._read_with_deepspeed(root.parent, root.name, keep=lambda name: True)
    assert not marker.exists()


def test_garbage_and_truncated_files_are_named(tmp_path):
    (tmp_path / "a.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"could not read checkpoint file {tmp_path}/a.pt"):
        ckpt.load_file(tmp_path / "a.pt")
    import torch

    torch.save({"x": torch.zeros(1000)}, tmp_path / "b.pt")
    data = (tmp_path / "b.pt").read_bytes()
    (tmp_path / "b.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="b.pt"):
        ckpt.load_file(tmp_path / "b.pt")


def test_trainer_resume_refuses_before_deepspeed_loads(tmp_path):
    """Trainer._resume checks every file of the newest checkpoint before engine.load_checkpoint (which unpickles
    with weights_only=False) sees it."""
    from nash_ds.config import load_config
    from nash_ds.trainer import Trainer

    marker = tmp_path / "ran"
    stage = tmp_path / "finetune"
    write_crafted_checkpoint(stage / "checkpoints", marker, how="exec")

    class Task:
        method = "finetune"

    class Engine:
        loaded = False

        def load_checkpoint(self, *args, **kwargs):
            Engine.loaded = True
            raise AssertionError("DeepSpeed's loader must not see this checkpoint")

    trainer = Trainer(cfg=load_config(), stage_dir=stage, task=Task(), tokenizer=None, train_set=[], eval_set=[],
                      collator=None, ds_config={})
    try:
        with pytest.raises(ValueError, match="refused to load .*mp_rank_00_model_states.pt"):
            trainer._resume(Engine())
    finally:
        if trainer.writer is not None:
            trainer.writer.close()
    assert not Engine.loaded and not marker.exists()
    assert os.listdir(stage / "checkpoints" / "step-0000001")  # nothing was deleted either
