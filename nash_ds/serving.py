"""Serving engines: an exported Hugging Face directory converted for CTranslate2, and greedy generation in it.

Stock-shaped exports (dense, decoder-cut, ``prune.uniform_widths``) go through CTranslate2's own converter
(``compat.ctranslate2_converter``). Exports with per-layer widths (the remote classes) are refused before anything
is written: CTranslate2 holds one ``num_heads`` per stack, and a hand-filled spec for per-layer FFN widths is not
written yet. Token ids go in and come out; CTranslate2 takes tokens, so the export's tokenizer maps them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nash_ds.errors import UserError

FORMATS = ("ctranslate2",)
"""export.format values."""
QUANTIZATIONS = ("none", "int8", "int8_float32", "float16", "bfloat16", "int8_float16")
"""export.quantization values (CTranslate2's weight types; none keeps float32)."""
ENGINES = ("transformers", "ctranslate2")
"""evaluate.engine values."""


def check_convertible(model_dir: str | Path, *, key: str = "export.model") -> Any:
    """The config of ``model_dir`` if CTranslate2 can take it, else ValueError (per-layer widths name
    ``prune.uniform_widths``)."""
    from nash_ds.models import family_for, load_config

    config = load_config(str(model_dir))
    family = family_for(config)
    if family.is_export(config):
        heads = {k: v for k, v in config.to_dict().items() if k.startswith("nash_") and "heads" in k}
        raise UserError(f"{key}={model_dir} has per-layer widths ({type(config).__name__}; heads per layer "
                         f"{ {k: [len(h) if isinstance(h, list) else h for h in v] for k, v in heads.items()} }); "
                         "CTranslate2 holds one head count per stack: prune with prune.uniform_widths=true for a "
                         "stock-shaped export")
    return config


def convert_ctranslate2(model_dir: str | Path, out_dir: str | Path, *, quantization: str = "none") -> None:
    """Write the CTranslate2 model of the stock-shaped export ``model_dir`` into the (empty) ``out_dir``."""
    from nash_ds.compat import ctranslate2_converter
    from nash_ds.models import family_for

    config = check_convertible(model_dir)
    converter = ctranslate2_converter(str(model_dir), config_fixes=dict(family_for(config).ctranslate2_config))
    converter.convert(str(out_dir), quantization=None if quantization == "none" else quantization, force=True)
    _set_decoder_start(Path(out_dir), model_dir, config)


def _set_decoder_start(out_dir: Path, model_dir: str | Path, config) -> None:
    """CTranslate2's mBART loader leaves ``decoder_start_token`` unset (mBART-25 passes a language code as the
    target prefix); the export's own ``decoder_start_token_id`` goes there, so greedy decoding needs no prefix."""
    import json

    from transformers import AutoTokenizer

    path = out_dir / "config.json"
    ct2 = json.loads(path.read_text())
    if ct2.get("decoder_start_token") is None and config.decoder_start_token_id is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        ct2["decoder_start_token"] = tokenizer.convert_ids_to_tokens(config.decoder_start_token_id)
        path.write_text(json.dumps(ct2, indent=2))


def translator(model_dir: str | Path, *, device: str = "cpu", compute_type: str = "default",
               threads: int | None = None):
    """A ``ctranslate2.Translator`` of a converted model (``threads``: intra-op threads, default torch's)."""
    import ctranslate2
    import torch

    return ctranslate2.Translator(str(model_dir), device=device, compute_type=compute_type,
                                  inter_threads=1, intra_threads=threads or torch.get_num_threads())


def generate_ids(engine, tokenizer, input_ids: Sequence[Sequence[int]], *, max_new_tokens: int,
                 min_new_tokens: int = 0) -> list[list[int]]:
    """Greedy output ids of a CTranslate2 translator for unpadded source ids (no start token, no end token)."""
    source = [tokenizer.convert_ids_to_tokens(list(ids)) for ids in input_ids]
    results = engine.translate_batch(source, beam_size=1, max_decoding_length=max_new_tokens,
                                     min_decoding_length=min_new_tokens)
    return [tokenizer.convert_tokens_to_ids(r.hypotheses[0]) for r in results]


def unpadded(input_ids, attention_mask) -> list[list[int]]:
    """Rows of a padded batch (tensors) without their padding."""
    return [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask, strict=True)]


def hf_greedy_ids(model, input_ids, attention_mask, *, max_new_tokens: int, min_new_tokens: int = 0) -> list[list[int]]:
    """transformers' greedy ``generate`` as CTranslate2 returns it: without the start token, cut at the end token."""
    import torch

    with torch.no_grad():
        # forced_eos_token_id (BART's generation configs) forces the end token at the length limit: CTranslate2
        # has no such option, so it is off here
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                             min_new_tokens=min_new_tokens, do_sample=False, num_beams=1, forced_eos_token_id=None)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    rows = []
    for row in out[:, 1:].tolist():
        cut = next((i for i, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows


def engines_of(engine: str | Sequence[str]) -> list[str]:
    """evaluate.engine as a list."""
    return [engine] if isinstance(engine, str) else list(engine)


def ctranslate2_latency(models: dict[str, Any], paths: dict[str, Path], tokenizer, *, batch_sizes: Sequence[int],
                        source_length: int, new_tokens: int, warmup: int, repeats: int, seed: int, device: str,
                        compute_type: str) -> list[dict]:
    """Greedy generation time in CTranslate2 of each model (``paths``: its HF export; ``models``: the loaded
    transformers model, for the same random inputs as ``latency``), exactly ``new_tokens`` out, models
    interleaved per repeat, median; ``speedup`` against the first model in this engine."""
    import statistics
    import tempfile
    import time

    from nash_ds import latency

    rows = []
    with tempfile.TemporaryDirectory(prefix="nash-ct2-") as work:
        engines = {}
        for name, path in paths.items():
            convert_ctranslate2(path, Path(work) / name)
            engines[name] = translator(Path(work) / name, device=device, compute_type=compute_type)
        for batch in batch_sizes:
            sources = {name: _unpadded_inputs(latency.random_inputs(models[name], batch_size=batch,
                                                              source_length=source_length, seed=seed))
                       for name in paths}
            times = {name: [] for name in paths}
            for rep in range(warmup + repeats):
                for name, engine in engines.items():
                    t0 = time.perf_counter()
                    generate_ids(engine, tokenizer, sources[name], max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens)
                    if rep >= warmup:
                        times[name].append(1000.0 * (time.perf_counter() - t0))
            base = statistics.median(times[next(iter(paths))])
            for name, ts in times.items():
                ms = statistics.median(ts)
                rows.append({"model": name, "engine": "ctranslate2", "batch_size": batch, "generate_ms": ms,
                             "tokens_per_s": batch * new_tokens / (ms / 1000.0), "speedup": base / ms,
                             "compute_type": compute_type, "device": device})
    return rows


def _unpadded_inputs(inputs: dict) -> list[list[int]]:
    return unpadded(inputs["input_ids"].cpu(), inputs["attention_mask"].cpu())
