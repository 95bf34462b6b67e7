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


# --------------------------------------------------------------------------- pytest-xdist groups (.ci/run: -n 2)

_MULTI_PROCESS = ("ranks=2", "ranks=ranks", "DEEPSPEED", "torchrun", "sbatch", "srun", "Job(", "slurm_or_skip",
                  "Popen(")
"""What a test (or a fixture of its module it uses) that starts several processes contains: such tests share the
two cores, the free ports and the one Slurm cluster, so they run one at a time, in the xdist group "multiproc"."""


def _starts_processes(item) -> bool:
    import inspect

    if item.get_closest_marker("slurm"):
        return True
    funcs = [item.function]
    info = getattr(item, "_fixtureinfo", None)
    for defs in (info.name2fixturedefs.values() if info else ()):
        funcs += [d.func for d in defs if getattr(d.func, "__module__", None) == item.module.__name__]
    try:
        source = "".join(inspect.getsource(f) for f in funcs)
    except (OSError, TypeError):
        return True
    return any(pattern in source for pattern in _MULTI_PROCESS)


def pytest_collection_modifyitems(config, items):
    """Under ``--dist loadgroup``: multi-process tests in one group, one after another; every other test runs with
    the rest of its module (its module-scoped fixtures are built once, on one worker)."""
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            group = "multiproc" if _starts_processes(item) else item.module.__name__
            item.add_marker(pytest.mark.xdist_group(group))
