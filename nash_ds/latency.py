"""Honest generation latency of any Hugging Face encoder-decoder model.

What the NASH reference code got wrong (``time.time()`` around blocks, no device sync, early
stops flattering short models) is done right here: untimed warm-up runs, ``torch.cuda.synchronize``
before and after every timed call on GPU, ``time.perf_counter``, medians over repeats, and a
*forced* output length (``min_new_tokens = max_new_tokens = N``, so EOS cannot end a sequence
early). Every model under comparison gets the same clean generation config (no
``no_repeat_ngram_size``, forced tokens or length penalties a checkpoint may carry), and models
measured together are timed interleaved (repeat r of every model before repeat r+1), so drift on
a shared machine hits them alike.

Measured per (batch size, beams):
- ``encoder_ms``: one encoder forward over the input;
- ``generate_ms``: end-to-end ``generate`` of exactly N new tokens (encoder included);
- ``first_token_ms``: ``generate`` of 1 new token (encoder + one decoder step + fixed overhead);
- ``decoder_ms_per_token``: (generate_ms - first_token_ms) / (N - 1), the marginal cost of one
  decoding step with the KV cache, free of encoder time and per-call overhead;
- ``tokens_per_s``: batch_size * N / generate time (returned tokens; beams are not counted apart).

Times are wall-clock medians over ``repeats``; the ``*_min`` fields give the fastest repeat, and
the ``*_cpu_*`` fields the process CPU time (median): on a CPU that other jobs load, wall time
includes time spent descheduled, while single-threaded CPU time measures the work itself.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import torch

from nash_ds.errors import UserError

LATENCY_KEYS = ("batch_size", "num_beams", "source_length", "new_tokens", "encoder_ms", "first_token_ms",
                "generate_ms", "decoder_ms_per_token", "tokens_per_s")
"""Keys of every row ``measure_latency`` returns (plus device, dtype, threads, repeats)."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"latency device {name!r} asked for, but no GPU is visible (use cpu or auto)")
    return torch.device(name)


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    dtypes = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
              "float16": torch.float16, "fp16": torch.float16}
    if name not in dtypes:
        raise UserError(f"latency dtype must be one of {', '.join(dtypes)}, got {name!r}")
    return dtypes[name]


def prepare_model(model: torch.nn.Module, *, device: str | torch.device = "auto",
                  dtype: str | torch.dtype = "float32") -> torch.nn.Module:
    """``model`` in eval mode on ``device`` in ``dtype`` (moved in place, returned for chaining)."""
    dev = resolve_device(device) if isinstance(device, str) else device
    return model.to(device=dev, dtype=resolve_dtype(dtype)).eval()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call of ``fn``, with the device drained before and after."""
    synchronize(device)
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0, time.process_time() - c0


def random_inputs(model, *, batch_size: int, source_length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random non-special token ids [batch, source_length] and an all-ones mask, on the model's device."""
    vocab = int(model.config.vocab_size)
    special = {getattr(model.config, k, None) for k in ("pad_token_id", "eos_token_id", "bos_token_id",
                                                          "decoder_start_token_id")}
    low = max([s for s in special if isinstance(s, int)] + [-1]) + 1
    if low >= vocab:  # special ids at the top of the vocabulary: draw from below them
        low = 0
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, vocab, (batch_size, source_length), generator=g)
    device = next(model.parameters()).device
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}


def clean_generation_config(model):
    """A GenerationConfig with only the model's special tokens: greedy, no n-gram blocking, no forced ids."""
    from transformers import GenerationConfig

    c, g = model.config, getattr(model, "generation_config", None)

    def token(name):
        value = getattr(g, name, None) if g is not None else None
        return value if value is not None else getattr(c, name, None)

    return GenerationConfig(decoder_start_token_id=token("decoder_start_token_id"), pad_token_id=token("pad_token_id"),
                            eos_token_id=token("eos_token_id"), bos_token_id=token("bos_token_id"))


def forced_generate(model, inputs: Mapping[str, torch.Tensor], *, new_tokens: int, num_beams: int = 1,
                    generation_config=None) -> torch.Tensor:
    """``generate`` exactly ``new_tokens`` tokens per sequence (EOS suppressed until then); returns the ids."""
    gen = copy.deepcopy(generation_config if generation_config is not None else clean_generation_config(model))
    gen.update(min_new_tokens=new_tokens, max_new_tokens=new_tokens, num_beams=num_beams, do_sample=False,
               use_cache=True)
    return model.generate(**inputs, generation_config=gen)


def _median_ms(values: list[float]) -> float:
    return 1000.0 * statistics.median(values)


def measure_many(models: Mapping[str, torch.nn.Module], *, batch_size: int = 1, source_length: int = 64,
                 new_tokens: int = 16, num_beams: int = 1, warmup: int = 2, repeats: int = 5,
                 seed: int = 0) -> dict[str, dict]:
    """Latency of each model (see the module docstring), measured interleaved; name -> row.

    Every model must already sit on its device in eval mode (``prepare_model``); they share the
    same random input ids (when their vocabularies agree).
    """
    if new_tokens < 2:
        raise UserError(f"latency new_tokens must be >= 2 (the per-token decoder time is a difference), got {new_tokens}")
    if repeats < 1 or warmup < 0:
        raise UserError(f"latency needs repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    runs = {}
    for name, model in models.items():
        inputs = random_inputs(model, batch_size=batch_size, source_length=source_length, seed=seed)
        gen = clean_generation_config(model)
        device = next(model.parameters()).device
        encoder = model.get_encoder()
        calls = {
            "encoder": lambda e=encoder, x=inputs: e(**x),
            "first": lambda m=model, x=inputs, g=gen: forced_generate(m, x, new_tokens=1, num_beams=num_beams,
                                                                       generation_config=g),
            "generate": lambda m=model, x=inputs, g=gen: forced_generate(m, x, new_tokens=new_tokens,
                                                                          num_beams=num_beams, generation_config=g),
        }
        runs[name] = (model, device, inputs, calls)

    times: dict[str, dict[str, list[float]]] = {name: {k: [] for k in ("encoder", "first", "generate")}
                                                for name in models}
    cpu_times = copy.deepcopy(times)
    with torch.inference_mode():
        for name, (model, device, inputs, calls) in runs.items():
            out = forced_generate(model, inputs, new_tokens=new_tokens, num_beams=num_beams,
                                  generation_config=clean_generation_config(model))
            generated = out.shape[1] - 1  # the decoder start token leads every sequence
            assert generated == new_tokens, f"{name}: generated {generated} tokens, wanted exactly {new_tokens}"
        for r in range(warmup + repeats):
            for name, (model, device, inputs, calls) in runs.items():
                for key, fn in calls.items():
                    wall, cpu = timed(fn, device)
                    if r >= warmup:
                        times[name][key].append(wall)
                        cpu_times[name][key].append(cpu)
    out_rows = {}
    for name, (model, device, inputs, calls) in runs.items():
        t, c = times[name], cpu_times[name]
        gen_ms, first_ms = _median_ms(t["generate"]), _median_ms(t["first"])
        out_rows[name] = {
            "batch_size": batch_size,
            "num_beams": num_beams,
            "source_length": source_length,
            "new_tokens": new_tokens,
            "encoder_ms": _median_ms(t["encoder"]),
            "first_token_ms": first_ms,
            "generate_ms": gen_ms,
            # the median of per-repeat differences is steadier than a difference of medians
            "decoder_ms_per_token": 1000.0 * statistics.median(
                (g - f) / (new_tokens - 1) for g, f in zip(t["generate"], t["first"])),
            "tokens_per_s": batch_size * new_tokens / (gen_ms / 1000.0),
            # minima: the least disturbed repeat, steadier than medians on a shared, loaded machine
            "encoder_ms_min": 1000.0 * min(t["encoder"]),
            "generate_ms_min": 1000.0 * min(t["generate"]),
            "decoder_ms_per_token_min": 1000.0 * (min(t["generate"]) - min(t["first"])) / (new_tokens - 1),
            # process CPU time (all threads): blind to time spent descheduled, so on a CPU shared
            # with other jobs it tracks the work done; meaningless for GPU kernels
            "encoder_cpu_ms": _median_ms(c["encoder"]),
            "generate_cpu_ms": _median_ms(c["generate"]),
            "decoder_cpu_ms_per_token": 1000.0 * statistics.median(
                (g - f) / (new_tokens - 1) for g, f in zip(c["generate"], c["first"])),
            "device": str(device),
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "repeats": repeats,
        }
    return out_rows


def measure_latency(model: torch.nn.Module, *, batch_size: int = 1, source_length: int = 64, new_tokens: int = 16,
                    num_beams: int = 1, warmup: int = 2, repeats: int = 5, seed: int = 0) -> dict:
    """Latency of one model (already on its device, eval mode) for one batch size and beam count."""
    return measure_many({"model": model}, batch_size=batch_size, source_length=source_length, new_tokens=new_tokens,
                        num_beams=num_beams, warmup=warmup, repeats=repeats, seed=seed)["model"]


def latency_table(models: Mapping[str, torch.nn.Module], *, batch_sizes: Sequence[int] = (1,),
                  beams: Sequence[int] = (1,), source_length: int = 64, new_tokens: int = 16, warmup: int = 2,
                  repeats: int = 5, seed: int = 0) -> list[dict]:
    """Rows ``{"model": name, **measure row}`` for every batch size x beam count, models interleaved."""
    rows = []
    for batch_size in batch_sizes:
        for num_beams in beams:
            measured = measure_many(models, batch_size=batch_size, source_length=source_length,
                                    new_tokens=new_tokens, num_beams=num_beams, warmup=warmup, repeats=repeats,
                                    seed=seed)
            rows.extend({"model": name, **row} for name, row in measured.items())
    return rows

