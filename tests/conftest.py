"""Shared fixtures: tiny random-init models (no downloads) and a fixed vocab size."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # tiny models; the test machine's cores are shared

VOCAB_SIZE = 96
"""Vocab of the tiny models (no tokenizer needed)."""
PRESET_NAMES = ("tiny-t5", "tiny-t5-v1_1", "tiny-bart", "tiny-mt5", "tiny-mbart")


def tiny_model(name: str, *, seed: int = 0) -> torch.nn.Module:
    """A tiny preset model in eval mode."""
    from nash_ds.models import load_model

    return load_model(f"preset:{name}", vocab_size=VOCAB_SIZE, seed=seed).eval()


def tiny_batch(*, batch: int = 2, src_len: int = 7, tgt_len: int = 5, seed: int = 0) -> dict:
    """Random encoder/decoder ids (avoiding the special ids 0..2) with some encoder padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB_SIZE, (batch, src_len), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    dec = torch.randint(3, VOCAB_SIZE, (batch, tgt_len), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec}


def prunable(model) -> dict[str, int]:
    """{"encoder", "decoder", "model"} prunable params of ``model`` as ``models.count_params`` counts them."""
    from nash_ds.models import count_params, family_for

    c = count_params(model, family_for(model.config))
    return {"encoder": c["prunable_encoder"], "decoder": c["prunable_decoder"], "model": c["prunable_model"]}


@pytest.fixture(params=PRESET_NAMES)
def preset(request) -> str:
    """Each tiny preset name in turn."""
    return request.param


# --------------------------------------------------------------------------- pytest-xdist scopes (pytest.ini: -n 2)

_MULTI_PROCESS = ("ranks=2", "ranks=ranks", "DEEPSPEED", "torchrun", "sbatch", "srun", "slurm_or_skip", "Popen(")
"""What a test module that starts several processes (the launcher, gloo ranks, Slurm jobs) contains."""


def xdist_scope(nodeid: str) -> str:
    """The unit xdist hands to one worker: every module that starts several processes is one scope, "multiproc",
    run one test after another (they share the two cores, the free ports and the one Slurm cluster); any other
    module is its own scope (its module-scoped fixtures are built once, on one worker)."""
    from pathlib import Path

    module = nodeid.split("::", 1)[0]
    path = Path(__file__).resolve().parent.parent / module
    try:
        source = path.read_text()
    except OSError:
        return module
    return "multiproc" if any(pattern in source for pattern in _MULTI_PROCESS) else module


def pytest_xdist_make_scheduler(config, log):
    """xdist's scope scheduler with ``xdist_scope`` for scopes (xdist 3.8's ``xdist_group`` marks do not reach
    pytest 9.2's node ids)."""
    from xdist.scheduler import LoadScopeScheduling

    class MultiprocessInOneScope(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

    return MultiprocessInOneScope(config, log)
