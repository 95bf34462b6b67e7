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


def test_quality_plot_draws_measured_points_with_seed_error_bars_and_targets_as_lines(tmp_path):
    from nash_ds.plot import group_points, plot_points

    points = [{"method": "dense", "label": "dense", "speedup": 1.0, "quality_kept": 100.0, "metric": "rougeL"}]
    points += [{"method": "nash", "label": "nash k=3", "speedup": s, "quality_kept": q, "metric": "rougeL"}
               for s, q in ((2.5, 96.0), (2.7, 98.0))]  # two seeds of one recipe
    grouped = {p["label"]: p for p in group_points(points)}
    assert grouped["nash k=3"]["n"] == 2 and grouped["nash k=3"]["quality_kept"] == 97.0
    assert abs(grouped["nash k=3"]["quality_std"] - 2 ** 0.5) < 1e-12 and grouped["dense"]["quality_std"] == 0.0

    import matplotlib.axes

    drawn = {"errorbar": [], "axhline": []}
    real = {k: getattr(matplotlib.axes.Axes, k) for k in drawn}

    def spy(kind):
        def f(self, *a, **kw):
            drawn[kind].append((a, kw))
            return real[kind](self, *a, **kw)
        return f

    try:
        for k in drawn:
            setattr(matplotlib.axes.Axes, k, spy(k))
        out = plot_points(points, tmp_path / "q.png", targets=[{"quality_kept": 97.0, "label": "target: 97% kept"}])
    finally:
        for k, f in real.items():
            setattr(matplotlib.axes.Axes, k, f)
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert len(drawn["errorbar"]) == 2  # dense and one NASH point at the mean of its seeds
    nash = next(kw for a, kw in drawn["errorbar"] if a[0] == 2.6)
    assert abs(nash["yerr"] - 2 ** 0.5) < 1e-12 and drawn["errorbar"][0][1]["yerr"] is None
    assert [(a[0], kw.get("label")) for a, kw in drawn["axhline"] if kw.get("label")] == [(97.0, "target: 97% kept")]


def test_quality_bench_replots_from_the_table_in_benchmarks_md():
    from bench.quality import rows_from_markdown
    from tests.helpers import REPO

    rows = {r["model"]: r for r in rows_from_markdown((REPO / "docs" / "BENCHMARKS.md").read_text())}
    assert rows["teacher"]["method"] == "dense" and rows["teacher"]["quality_kept"] == 100.0
    assert "CoFi s=0.7" in rows  # "(closest to NASH k=2 speed)" stripped from the name
    assert rows["NASH k=3"]["speedup_cpu"] > 0 and rows["NASH k=2"]["quality_kept"] > 0
