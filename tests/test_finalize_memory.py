"""The finalizer's low-memory path: streamed consolidation == DeepSpeed's, consuming prune == copying prune."""

from __future__ import annotations

import copy

import pytest
import torch

from nash_ds.masks import MaskSet
from nash_ds.models import family_for
from nash_ds.models.pruning import prune_model
from tests.conftest import tiny_batch, tiny_model
from tests.helpers import REPO, env, run_nash, run_ranks


def _random_masks(family, student, teacher, method: str, seed: int) -> MaskSet:
    masks = MaskSet(family, student.config, method=method, teacher_config=teacher.config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in masks.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 3.0)
    return masks.eval()


@pytest.mark.parametrize("method", ["nash", "cofi", "sft"])
def test_consuming_prune_equals_copying_prune_and_empties_the_source(preset, method):
    from nash_ds.masks import Masking

    kept = [0, 1, 2, 3] if method == "cofi" else [0, 3]
    teacher = tiny_model(preset, seed=4)
    family = family_for(teacher)
    student = family.make_student(teacher, kept).eval()
    masks = None if method == "sft" else _random_masks(family, student, teacher, method, seed=5)
    plan = Masking(family, student.config, masks).finalize(copy.deepcopy(student), kept)
    ref = prune_model(student, plan)
    victim = copy.deepcopy(student)
    out = prune_model(victim, plan, consume=True)
    assert type(out) is type(ref) and out.config.to_dict() == ref.config.to_dict()
    assert not out.training and out.generation_config.to_dict() == ref.generation_config.to_dict()
    got, want = out.state_dict(), ref.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k
    tied = ref.lm_head.weight is ref.get_input_embeddings().weight
    assert (out.lm_head.weight is out.get_input_embeddings().weight) == tied
    assert all(p.is_meta for p in victim.parameters())  # the source let go of every tensor
    batch = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(out(**batch).logits, ref(**batch).logits, atol=0, rtol=0)


# ---------------------------------------------------------------------------- real checkpoints

def _write(out, *, zero: int, ranks: int) -> None:
    """A tiny NASH prune checkpoint written by bench/finalize_memory.py through DeepSpeed on ``ranks`` ranks."""
    r = run_ranks(REPO / "bench" / "finalize_memory.py", "--write", out, "--shape", "tiny", "--zero", zero,
                  ranks=ranks, env=env(), timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.parametrize(("zero", "ranks"), [(0, 1), (2, 1), (2, 2), (3, 2)])
def test_streamed_consolidation_equals_deepspeeds_and_finalizes(tmp_path, zero, ranks):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from nash_ds import checkpoint as ckpt

    _write(tmp_path / "run", zero=zero, ranks=ranks)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    tag = ckpt.newest_complete(ckpt_dir)
    got = ckpt.consolidate(ckpt_dir, tag)
    if zero == 0:
        want = torch.load(next((ckpt_dir / tag).glob("*model_states.pt")), weights_only=False)["module"]
    else:
        want = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k].float()), k
    assert got["student.lm_head.weight"] is got["student.shared.weight"]  # tied: one tensor, every name
    part = ckpt.consolidate(ckpt_dir, tag, keep=lambda n: n.startswith("masks."))
    assert part.keys() == {k for k in want if k.startswith("masks.")}

    out = tmp_path / "out"
    run_nash("finalize", f"output_dir={out}", f"finalize.checkpoint={ckpt_dir}", "prune.method=nash",
             "model.tokenizer=nash_ds/demo/tokenizer", "data.max_eval_samples=8", "generation.eval_batch_size=4")
    assert (out / "finalize" / "model" / "config.json").is_file()


def test_parked_self_check_passes_the_pruned_model_and_refuses_another(tmp_path):
    from nash_ds.errors import SelfCheckError
    from nash_ds.masks import Masking
    from nash_ds.stages.finalize import park_logits, pruned_from_masks, self_check_parked

    teacher = tiny_model("tiny-t5", seed=6)
    family = family_for(teacher)
    student = family.make_student(teacher, [0, 3]).eval()
    masks = _random_masks(family, student, teacher, "nash", seed=7)
    pruned, _ = pruned_from_masks(student, masking=Masking(family, student.config, masks), kept=[0, 3])  # masked
    batches = [tiny_batch(seed=s) for s in range(2)]
    parked = park_logits(student, batches, tmp_path)
    assert self_check_parked(parked, pruned, batches, atol=1e-4)["max_abs_logit_diff"] <= 1e-4
    with torch.no_grad():
        next(pruned.parameters()).add_(0.5)
    with pytest.raises(SelfCheckError, match="self-check failed"):
        self_check_parked(parked, pruned, batches, atol=1e-4)
