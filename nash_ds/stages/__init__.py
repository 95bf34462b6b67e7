"""One module per stage; each exposes ``run(cfg, *, stage_dir) -> dict``."""
