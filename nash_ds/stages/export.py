"""``export``: a finished model for a serving engine.

    python run.py export export.format=ctranslate2 [export.model=<HF dir>] [export.quantization=int8]

Writes ``<output_dir>/export/ctranslate2/``: the CTranslate2 model (CTranslate2's own converter), the tokenizer
files and a README on loading it, atomically (a temp directory renamed into place); a finished output is refused
unless ``overwrite=true``. An export with per-layer widths is refused before anything is written
(``serving.check_convertible``: prune with ``prune.uniform_widths=true``). Rank 0 works, other ranks wait.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nash_ds import dist
from nash_ds.config import RunConfig
from nash_ds.errors import UserError

log = logging.getLogger(__name__)

README = """# CTranslate2 model ({quantization})

Converted by nash-ds (`run.py export`) from `{source}` with CTranslate2's own converter.

    import ctranslate2
    from transformers import AutoTokenizer

    path = "{path}"
    tok = AutoTokenizer.from_pretrained(path)
    translator = ctranslate2.Translator(path, device="cpu")  # or "cuda"; compute_type="int8" etc.
    source = [tok.convert_ids_to_tokens(tok("summarize: ...").input_ids)]
    out = translator.translate_batch(source, beam_size=1, max_decoding_length=64)
    print(tok.decode(tok.convert_tokens_to_ids(out[0].hypotheses[0]), skip_special_tokens=True))

Greedy outputs equal transformers' `generate(num_beams=1)` in float32 (nash-ds tests this per family); with a
BART generation config transformers also forces the end token at the length limit (`forced_eos_token_id`),
CTranslate2 does not.
"""


def source_model(cfg: RunConfig) -> Path:
    """export.model, else the run's newest model."""
    from nash_ds.stages import common

    if cfg.export.model:
        return Path(cfg.export.model)
    newest = common.newest_model(cfg)
    if newest is None:
        raise UserError(f"export.model is not set and {cfg.output_dir} holds no finished model (final/, finalize/ "
                         "or finetune/ model/); set export.model=<HF directory>")
    return newest


def run(cfg: RunConfig, *, stage_dir: Path) -> dict:
    from nash_ds import serving
    from nash_ds.stages import common

    out = stage_dir / cfg.export.format
    if out.exists() and not cfg.overwrite:
        raise UserError(f"{out} already holds a finished export; pass overwrite=true to replace it, or choose "
                         "another output_dir")
    common.check_output_dir(cfg, stage_dir)
    model = source_model(cfg)
    common.check_model_source("export.model", str(model))
    serving.check_convertible(model)  # per-layer widths: refused here, nothing written

    def work() -> None:
        from transformers import AutoTokenizer

        from nash_ds.export import atomic_dir

        with atomic_dir(out, overwrite=cfg.overwrite) as tmp:
            serving.convert_ctranslate2(model, tmp, quantization=cfg.export.quantization)
            AutoTokenizer.from_pretrained(str(model)).save_pretrained(str(tmp))
            (tmp / "README.md").write_text(README.format(quantization=cfg.export.quantization, source=model, path=out))
        log.info("export: %s -> %s (%s, quantization %s)", model, out, cfg.export.format, cfg.export.quantization)

    dist.on_rank_zero(work)
    return {"stage": "export", "model": str(model), "path": str(out), "format": cfg.export.format,
            "quantization": cfg.export.quantization}
