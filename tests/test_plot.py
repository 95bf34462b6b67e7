"""Figures a person can read: mask pictures (TensorBoard and finalize) and the quality plot."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from PIL import Image

from nash_ds.plot import mask_images, save_mask_figures
from nash_ds.stages.prune import mask_figures_due

MIN_WIDTH = 400


def _masks(seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    alive = {"encoder_heads": torch.rand(4, 4, generator=g), "encoder_ffn": torch.rand(4, 128, generator=g),
             "encoder_mha": torch.rand(4, generator=g), "hidden": torch.rand(64, generator=g)}
    return alive, {k: (v > 0.5).float() for k, v in alive.items()}


def test_mask_images_are_wide_rgb_pictures_one_per_mask_with_units():
    alive, kept = _masks()
    images = mask_images(alive, kept)
    assert set(images) == {"masks/encoder_heads", "masks/encoder_ffn", "masks/hidden"}  # _mha is a scalar
    for name, img in images.items():
        assert img.dtype.name == "uint8" and img.ndim == 3 and img.shape[2] == 3, name
        assert img.shape[1] >= MIN_WIDTH and img.shape[0] >= 200, (name, img.shape)
        assert img.std() > 10  # something was drawn


def test_finalize_pictures_are_pngs_at_least_400_px_wide(tmp_path):
    alive, kept = _masks(1)
    paths = save_mask_figures(alive, kept, tmp_path)
    assert sorted(p.name for p in paths) == ["masks_encoder_ffn.png", "masks_encoder_heads.png", "masks_hidden.png"]
    for p in paths:
        with Image.open(p) as im:
            assert im.size[0] >= MIN_WIDTH, (p, im.size)
    # the kept picture alone (no probabilities) draws too
    (tmp_path / "kept_only").mkdir()
    assert save_mask_figures({}, {"encoder_heads": kept["encoder_heads"]}, tmp_path / "kept_only")


def test_mask_figures_are_drawn_once_per_eval_interval_and_at_the_end():
    train = SimpleNamespace(max_steps=400, log_every=10, eval_every=100)
    drawn, last = [], None
    for step in range(10, 401, 10):
        if mask_figures_due(step, last, train):
            drawn.append(step)
            last = step
    assert drawn == [10, 100, 200, 300, 400]
    train = SimpleNamespace(max_steps=95, log_every=5, eval_every=0)  # no evaluation: every 10 logging steps
    drawn, last = [], None
    for step in [*range(5, 95, 5), 95]:
        if mask_figures_due(step, last, train):
            drawn.append(step)
            last = step
    assert drawn == [5, 50, 95]
