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


_SAVE_CHECKPOINTS = r"""
import json, os, sys
import torch, deepspeed
from torch.serialization import get_unsafe_globals_in_checkpoint
deepspeed.init_distributed(auto_mpi_discovery=False, verbose=False)
out, found = sys.argv[1], {}
for stage in (0, 1, 2, 3):
    for precision in ("fp32", "bf16", "fp16"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
        ds = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1, "train_batch_size": 2,
              "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True}
        if precision != "fp32":
            ds[precision] = {"enabled": True}
        engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters()), config=ds,
                                          lr_scheduler=None, dist_init_required=False)
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        engine.backward(engine(torch.randn(2, 8, dtype=dtype)).float().sum())
        engine.step()
        tag = f"zero{stage}-{precision}"
        engine.save_checkpoint(out, tag=tag)
        for name in sorted(os.listdir(os.path.join(out, tag))):
            found[f"{tag}/{name}"] = get_unsafe_globals_in_checkpoint(os.path.join(out, tag, name))
print("FOUND" + json.dumps(found))
"""


def test_checkpoint_globals_are_exactly_what_deepspeed_checkpoints_hold(tmp_path):
    """CHECKPOINT_GLOBALS: real ZeRO-0/1/2/3 checkpoints (fp32, bf16, fp16) need these classes and no other, and
    load with compat.load_checkpoint_file; a DeepSpeed that adds or drops one fails here."""
    import json
    import subprocess
    import sys

    from tests.helpers import env, free_port

    r = subprocess.run([sys.executable, "-c", _SAVE_CHECKPOINTS, str(tmp_path)], check=False, capture_output=True,
                       text=True, timeout=600, env=env(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())))
    assert r.returncode == 0, r.stderr[-4000:]
    found = json.loads(r.stdout.split("FOUND", 1)[1])
    assert len(found) >= 12 and any("optim_states" in f for f in found), found
    assert set().union(*map(set, found.values())) == set(compat.CHECKPOINT_GLOBALS), found
    for name in found:
        compat.load_checkpoint_file(tmp_path / name, map_location="meta")


def test_deepspeed_readers_still_unpickle_with_weights_only_false():
    """checkpoint.verify_loadable runs before engine.load_checkpoint and zero_to_fp32 because these do not load
    safely; when DeepSpeed switches to weights_only=True, the pre-check can go."""
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
    from deepspeed.utils import zero_to_fp32

    assert "weights_only=False" in inspect.getsource(TorchCheckpointEngine.load)
    assert "weights_only=False" in inspect.getsource(zero_to_fp32)


def test_a_refused_global_is_named(tmp_path):
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/ran",))

    torch.save({"module": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError) as e:
        compat.load_checkpoint_file(tmp_path / "evil.pt", map_location="meta")
    assert compat.unsupported_global(e.value) == "posix.system"
    assert not (tmp_path / "ran").exists()


def test_ctranslate2_converter_fixes_are_still_needed():
    """compat.ctranslate2_converter: T5Config still forces tie_word_embeddings=True for untied heads (CTranslate2's
    T5 loader would scale the outputs), and BartConfig / MBartConfig still lack normalize_before (its BART loader
    reads it). When either assertion fails, the matching fix can go."""
    from transformers import BartConfig, MBartConfig, T5Config

    assert T5Config(feed_forward_proj="gated-gelu", tie_word_embeddings=False).tie_word_embeddings is True
    assert not hasattr(BartConfig(), "normalize_before") and not hasattr(MBartConfig(), "normalize_before")
