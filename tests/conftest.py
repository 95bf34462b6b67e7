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
