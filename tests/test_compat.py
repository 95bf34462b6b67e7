"""Each workaround in nash_ds/compat.py: still needed, and the private API it uses still where it was.

When one of these fails after a version bump, the message says which workaround to revisit.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import pytest
import torch

from nash_ds import compat
from tests.conftest import tiny_batch, tiny_model

REPO = Path(__file__).resolve().parent.parent


def test_pins_match_requirements_txt():
    pinned = dict(line.split("==") for line in (REPO / "requirements.txt").read_text().splitlines()
                  if "==" in line and not line.startswith("#"))
    assert {name: pinned[name] for name in compat.PINS} == compat.PINS


def test_version_check_warns_once_per_differing_package(monkeypatch, caplog):
    monkeypatch.setattr(compat, "installed_versions", lambda: {**compat.PINS, "deepspeed": "0.20.0"})
    with caplog.at_level(logging.WARNING, logger="nash_ds"):
        diffs = compat.check_versions()
    assert diffs == ["deepspeed 0.20.0 (pinned 0.19.8)"]
    assert "deepspeed 0.20.0 (pinned 0.19.8)" in caplog.text and "tests/test_compat.py" in caplog.text
    monkeypatch.setattr(compat, "installed_versions", lambda: dict(compat.PINS))
    assert compat.check_versions() == []


def test_the_installed_versions_are_the_pins():
    assert compat.installed_versions() == compat.PINS


def test_storage_file_offset_reads_one_tensor_of_a_saved_file(tmp_path):
    tensors = {"a": torch.arange(10, dtype=torch.float32), "b": torch.arange(6, dtype=torch.int64) * 7}
    torch.save(tensors, tmp_path / "t.pt")
    meta = torch.load(tmp_path / "t.pt", map_location="meta", weights_only=True)
    raw = (tmp_path / "t.pt").read_bytes()
    for name, t in meta.items():
        start = compat.storage_file_offset(t)
        got = torch.frombuffer(bytearray(raw[start:start + t.numel() * t.element_size()]), dtype=t.dtype)
        assert torch.equal(got, tensors[name])


def test_deepspeed_still_clones_fp32_zero3_partitions():
    """share_fp32_master is needed while stage 3 compares a torch.device with the device *name* (a str)."""
    from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3

    source = inspect.getsource(DeepSpeedZeroOptimizer_Stage3._create_fp32_partitions)
    assert "self.fp16_partitioned_groups_flat[i].device == self.device" in source
    from deepspeed.accelerator import get_accelerator

    assert isinstance(get_accelerator().current_device_name(), str)
    assert (torch.device("cpu") == "cpu") is False  # so the shortcut never triggers


def test_shm_buffer_name_is_the_one_deepspeed_creates():
    import deepspeed

    shm_cpp = Path(deepspeed.__file__).parent / "ops" / "csrc" / "cpu" / "comm" / "shm.cpp"
    source = shm_cpp.read_text()
    assert '#define SHM_BUFFER_NAME "deepspeed_allreduce_buffer"' in source
    assert '"%s_%d_%s_%s",\n             SHM_BUFFER_NAME,\n             getuid(),' in source
    assert 'snprintf(shm_name, NAME_BUF_SIZE, "%s_%d", shm_name_prefix, rank);' in source
    assert compat.shm_allreduce_buffer_name(3).startswith("/dev/shm/deepspeed_allreduce_buffer_")


def test_transformers_still_ties_t5_heads_whatever_the_config_says():
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(d_model=8, d_kv=4, num_heads=2, d_ff=8, num_layers=1, vocab_size=10, tie_word_embeddings=False)
    model = T5ForConditionalGeneration(config)
    assert model.lm_head.weight is model.shared.weight  # so untie_lm_head is needed
    assert config.scale_decoder_outputs is False  # the one trace of an untied checkpoint (T5Family.head_is_untied)


def test_untied_head_survives_save_and_load(tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    model = tiny_model("tiny-t5-v1_1")
    assert model.lm_head.weight is not model.shared.weight
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert loaded.lm_head.weight is not loaded.shared.weight
    with torch.no_grad():
        torch.testing.assert_close(loaded(**tiny_batch()).logits, model(**tiny_batch()).logits)


def test_untie_lm_head_drops_the_tie_from_the_mapping_transformers_reuses():
    model = tiny_model("tiny-t5")
    compat.untie_lm_head(model)
    assert "lm_head.weight" not in model.all_tied_weights_keys
    model.tie_weights(recompute_mapping=False)  # what loading and pruning call: the head stays its own
    assert model.lm_head.weight is not model.shared.weight
    assert torch.equal(model.lm_head.weight, model.shared.weight)
    model.tie_weights()  # recomputing the mapping from the class re-ties T5: the reason for the workaround
    assert model.lm_head.weight is model.shared.weight


def test_bart_attention_still_refuses_other_head_sizes():
    """NashBart* set the head counts to 1 around the stock constructor (compat.REMOTE_CLASS_WORKAROUNDS)."""
    from transformers import BartConfig
    from transformers.models.bart.modeling_bart import BartAttention

    with pytest.raises(ValueError, match="divisible"):
        BartAttention(embed_dim=64, num_heads=3, config=BartConfig())


def test_deepspeed_fp32_master_accessors_are_where_clamp_expects_them():
    from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

    for fn in (safe_get_full_fp32_param, safe_set_full_fp32_param):
        src = inspect.getsource(fn)
        assert "ds_id" in src and "_hp_mapping" in src, fn.__name__
    from deepspeed.runtime.zero.partition_parameters import Init

    assert "ds_tensor" in inspect.getsource(Init._convert_to_deepspeed_param)
