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
from deepspeed.accelerator import get_accelerator
deepspeed.init_distributed(auto_mpi_discovery=False, verbose=False)
out, found = sys.argv[1], {}
acc = get_accelerator()
if os.environ.get("SIMULATE_NO_FP16") == "1":  # what an AVX2-only CPU answers, on any CPU
    acc.is_fp16_supported = lambda: False
if not acc.is_fp16_supported():
    # DeepSpeed's CPU accelerator refuses fp16 without AVX-512 FP16 / AMX (torch.ops.mkldnn); torch still computes
    # fp16 there (slowly), and what a checkpoint holds does not depend on the CPU: save it with the check overridden
    acc.is_fp16_supported = lambda: True
    print("FP16_FORCED")
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


@pytest.mark.parametrize("simulate_no_fp16", [False, True], ids=["this_cpu", "cpu_without_fp16"])
def test_checkpoint_globals_are_exactly_what_deepspeed_checkpoints_hold(tmp_path, simulate_no_fp16):
    """CHECKPOINT_GLOBALS: real ZeRO-0/1/2/3 checkpoints (fp32, bf16, fp16) need these classes and no other, and
    load with compat.load_checkpoint_file; a DeepSpeed that adds or drops one fails here. On a CPU whose DeepSpeed
    accelerator refuses fp16 (AVX2 only: "Type fp16 is not supported on your device") the fp16 checkpoints are
    saved with that check overridden, and the test says so; the second case takes that path on any CPU."""
    import json
    import subprocess
    import sys
    import warnings

    from tests.helpers import env, free_port

    r = subprocess.run([sys.executable, "-c", _SAVE_CHECKPOINTS, str(tmp_path)], check=False, capture_output=True,
                       text=True, timeout=600, env=env(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
                                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
                                                       SIMULATE_NO_FP16=str(int(simulate_no_fp16))))
    assert r.returncode == 0, r.stderr[-4000:]
    if "FP16_FORCED" in r.stdout:
        warnings.warn("this CPU's DeepSpeed accelerator refuses fp16 (is_fp16_supported() is false): the fp16 "
                      "checkpoints were saved with that check overridden", UserWarning, stacklevel=1)
    assert ("FP16_FORCED" in r.stdout) >= simulate_no_fp16
    found = json.loads(r.stdout.split("FOUND", 1)[1])
    assert len(found) >= 12 and any("optim_states" in f for f in found), found
    assert set().union(*map(set, found.values())) == set(compat.CHECKPOINT_GLOBALS), found
    for name in found:
        compat.load_checkpoint_file(tmp_path / name, map_location="meta")


def test_deepspeed_still_calls_the_deprecated_all_gather_into_tensor():
    """compat.silence_deepspeed_all_gather_deprecation: DeepSpeed 0.19.8's ZeRO all-gather calls
    torch.distributed.all_gather_into_tensor, which torch deprecates; when either changes, the filter can go."""
    import importlib

    ds_torch = importlib.import_module("deepspeed.comm.torch")  # (deepspeed.comm's attribute `torch` is torch)
    assert "torch.distributed.all_gather_into_tensor" in inspect.getsource(ds_torch)
    assert "reduce_scatter_tensor(" in inspect.getsource(ds_torch)
    assert "is deprecated" in inspect.getsource(torch.distributed.distributed_c10d).split(
        "def all_gather_into_tensor(", 1)[0][-400:]


def test_the_all_gather_filter_hides_that_deprecation_only():
    import re
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        compat.silence_deepspeed_all_gather_deprecation()
        warnings.warn("`torch.distributed.all_gather_into_tensor` is deprecated. Please use ...", FutureWarning,
                      stacklevel=1)
        warnings.warn("`torch.distributed.all_gather_object` is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["`torch.distributed.all_gather_object` is deprecated"]
    assert re.match(compat.ALL_GATHER_DEPRECATION, "`torch.distributed.all_gather_into_tensor` is deprecated. x")
    assert re.match(compat.ALL_GATHER_DEPRECATION, "`torch.distributed.reduce_scatter_tensor` is deprecated. x")


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


# --------------------------------------------------------------------------- precision this device runs


def _resolve(path: str) -> dict:
    from nash_ds import dist

    return dist.resolve_ds_config(dist.load_ds_config(path), micro_batch_size=2, grad_accum=1, grad_clip=1.0,
                                  num_ranks=1, where=f"train.ds_config {path}")


@pytest.mark.parametrize("fp16_here", [True, False], ids=["cpu_with_fp16", "cpu_without_fp16"])
def test_every_ds_config_gets_the_same_answer_on_any_cpu(monkeypatch, tmp_path, fp16_here):
    """On CPU the config check takes every fp32 ds_config and refuses every bf16 / fp16 one, whatever DeepSpeed's CPU
    accelerator answers: fp16 only where oneDNN has AVX-512 FP16 / AMX, bf16 everywhere (DeepSpeed 0.19.8, pinned
    here). The AVX2-only answer (no fp16) is simulated; a CI machine without AVX-512 decides alike."""
    import json

    from deepspeed.accelerator import get_accelerator
    from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator

    from nash_ds.errors import UserError

    assert "_is_mkldnn_fp16_supported" in inspect.getsource(CPU_Accelerator.is_fp16_supported)
    assert inspect.getsource(CPU_Accelerator.is_bf16_supported).strip().endswith("return True")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(get_accelerator(), "is_fp16_supported", lambda: fp16_here)
    fp16 = tmp_path / "zero2_fp16.json"
    fp16.write_text(json.dumps({**json.loads((REPO / "ds_configs" / "zero2_fp32.json").read_text()),
                                "fp16": {"enabled": True}}))
    paths = [*(f"ds_configs/{p.name}" for p in sorted((REPO / "ds_configs").glob("*.json"))), str(fp16)]
    answers = {}
    for path in paths:
        try:
            answers[path] = _resolve(path)["train_batch_size"]
        except UserError as e:
            answers[path] = str(e)
    refusal = "enables {} but no GPU is present; on CPU use an fp32 config such as ds_configs/zero2_fp32.json"
    for path, answer in answers.items():
        low = "bf16" if "bf16" in path else "fp16" if "fp16" in path else None
        if low is None:
            assert answer == 2, (path, answer)
        else:
            assert isinstance(answer, str) and answer.endswith(refusal.format(low)), (path, answer)
    assert len(answers) == 10 and sum(isinstance(a, str) for a in answers.values()) == 7, answers


def test_a_precision_the_device_cannot_run_is_refused_at_config_time_naming_the_file(monkeypatch):
    from nash_ds.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _resolve("ds_configs/zero2_fp32.json")["train_batch_size"] == 2
    with pytest.raises(UserError) as e:
        _resolve("ds_configs/zero2_bf16.json")
    assert str(e.value) == ("train.ds_config ds_configs/zero2_bf16.json enables bf16 but no GPU is present; on CPU "
                            "use an fp32 config such as ds_configs/zero2_fp32.json")
    # a GPU without bf16 (before Ampere): simulated, as this machine has none
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    from nash_ds import dist

    ds = {**dist.load_ds_config("ds_configs/zero2_bf16.json")}
    with pytest.raises(UserError, match=r"zero2_bf16.json enables bf16 but this GPU \(Tesla V100\) cannot run it; "
                                        "use an fp16 config"):
        dist.check_precision_runs_here(ds, where="train.ds_config ds_configs/zero2_bf16.json")
    dist.check_precision_runs_here({"fp16": {"enabled": True}}, where="x")  # fp16 runs on every GPU
