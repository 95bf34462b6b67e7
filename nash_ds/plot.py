"""Figures: quality kept vs speedup, and the pruning masks (matplotlib, Agg backend).

**Masks** (``mask_figure``, ``mask_images``, ``save_mask_figures``): one figure per mask type (encoder heads,
FFN dims, ...): layers x units coloured by keep probability during training and by the deterministic
keep the finalizer prunes with, and the units kept per layer as bars. The prune stage logs them to
TensorBoard; finalize saves them as PNG beside ``pruning_report.json``.

**Quality vs speed**: points come from evaluate reports (``report.json`` of ``run.py evaluate`` or the pipeline):
every row but the baseline becomes a point labelled by its method; the dense baseline sits at
(1x, 100%). Several reports (one per run: NASH k=2/3/4, CoFi, SFT) go into one figure; reports of the
same recipe (seeds) become one point at their mean with mean +- std error bars. Only measured points
are drawn: a target is a labelled dashed line (``--target``):

    python -m nash_ds.plot runs/*/evaluate/report.json -o docs/speedup.png --target 97
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nash_ds.errors import UserError

MASK_DPI = 100
"""Pixels per inch of the mask figures (TensorBoard images and PNGs): 9 in wide -> 900 px."""
MASK_LABELS = {"heads": "attention head", "ffn": "FFN dim", "hidden": "hidden dim"}
"""Unit axis label per mask kind (the key's last part)."""

STYLE = {"dense": ("black", "*"), "nash": ("tab:red", "o"), "cofi": ("tab:blue", "s"), "sft": ("tab:green", "^")}
"""Colour and marker per method; anything else is grey diamonds."""


def points_from_report(report: dict) -> list[dict]:
    """``{"method", "label", "speedup", "quality_kept"}`` per row of one evaluate report (baseline included)."""
    points = []
    for row in report["rows"]:
        if row["quality_kept"] is None:  # the baseline scored 0: quality kept is undefined
            continue
        is_base = row["model"] == report["baseline"]
        method = "dense" if is_base else row["method"]
        k = row.get("decoder_layers")
        label = "dense" if is_base else f"{method} k={k}" if k is not None else method
        points.append({"method": method, "label": label, "speedup": float(row["speedup"]),
                       "quality_kept": float(row["quality_kept"]), "metric": row["metric"]})
    return points


def points_from_files(paths: list[str | Path]) -> list[dict]:
    """Points of several report.json files; the dense baseline appears once."""
    points, have_dense = [], False
    for path in paths:
        for p in points_from_report(json.loads(Path(path).read_text())):
            if p["method"] == "dense":
                if have_dense:
                    continue
                have_dense = True
            points.append(p)
    return points


def group_points(points: list[dict]) -> list[dict]:
    """One point per (method, label): several runs of one recipe (seeds) become their mean, with the
    standard deviation of each axis (``speedup_std``, ``quality_std``; 0 for a single run) and ``n``."""
    import statistics

    groups: dict[tuple[str, str], list[dict]] = {}
    for p in points:
        groups.setdefault((p["method"], p["label"]), []).append(p)
    out = []
    for (method, label), runs in groups.items():
        xs, ys = [float(r["speedup"]) for r in runs], [float(r["quality_kept"]) for r in runs]
        out.append({"method": method, "label": label, "metric": runs[0].get("metric", ""), "n": len(runs),
                    "speedup": statistics.fmean(xs), "quality_kept": statistics.fmean(ys),
                    "speedup_std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
                    "quality_std": statistics.stdev(ys) if len(ys) > 1 else 0.0})
    return out


def plot_points(points: list[dict], out: str | Path, *, title: str = "quality vs speed",
                targets: list[dict] = ()) -> Path:
    """Measured points into a PNG at ``out`` (matplotlib, Agg backend): one marker per recipe; a recipe
    measured several times (points with the same method and label, e.g. seeds) is drawn at its mean with
    mean +- std error bars. ``targets`` (``{"quality_kept", "label"}``) are dashed horizontal lines, named
    as targets in the legend: a goal, never a point that could be read as a result."""
    plt = _pyplot()
    if not points:
        raise UserError("no points to plot (the reports hold no rows)")
    fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=120)
    seen = set()
    several = False
    for p in group_points(points):
        color, marker = STYLE.get(p["method"], ("tab:gray", "D"))
        has_err = p["n"] > 1
        several |= has_err
        ax.errorbar(p["speedup"], p["quality_kept"], xerr=p["speedup_std"] if has_err else None,
                    yerr=p["quality_std"] if has_err else None, fmt=marker, color=color, ecolor=color,
                    elinewidth=1, capsize=3, markersize=9 if marker == "*" else 6, zorder=3,
                    label=p["method"] if p["method"] not in seen else None)
        seen.add(p["method"])
        ax.annotate(p["label"] + (f" (n={p['n']})" if has_err else ""), (p["speedup"], p["quality_kept"]),
                    textcoords="offset points", xytext=(5, 4), fontsize=7)
    for i, t in enumerate(targets):
        ax.axhline(float(t["quality_kept"]), color="tab:purple", lw=1.2, ls=(0, (5, 3 + i)), zorder=2,
                   label=t["label"])
    metrics = sorted({p.get("metric", "") for p in points} - {""})
    ax.axhline(100.0, color="black", lw=0.5, ls=":")
    ax.axvline(1.0, color="black", lw=0.5, ls=":")
    ax.set_xlabel("generation speedup over dense (x)")
    ax.set_ylabel(f"quality kept (% of dense{', ' + '/'.join(metrics) if metrics else ''})")
    ax.set_title(title + ("\n(error bars: mean +- std over seeds)" if several else ""), fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.margins(y=0.08)  # a target line at the edge stays visible
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _as_grid(values) -> Any:
    """A mask as a float numpy [layers, units] array (1-D masks such as CoFi's hidden: one row)."""
    import numpy as np

    a = np.asarray(values.detach().float().cpu() if hasattr(values, "detach") else values, dtype=float)
    return a[None, :] if a.ndim == 1 else a


def mask_figure(name: str, *, alive=None, kept=None):
    """One mask type as a matplotlib figure, 900 px wide: heatmaps of layers x units coloured by the keep
    probability during training (``alive``, 1 - P(gate = 0)) and by the deterministic keep that finalize
    prunes with (``kept``, 0/1), and bars of the units kept per layer. Either may be None."""
    import numpy as np
    from matplotlib.colors import ListedColormap
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    panels = [(_as_grid(g), kind) for g, kind in ((alive, "prob"), (kept, "kept")) if g is not None]
    if not panels:
        raise ValueError(f"mask {name}: nothing to draw (alive and kept are both None)")
    layers, units = panels[0][0].shape
    stack, _, kind = name.rpartition("_")
    unit_label = MASK_LABELS.get(kind, "unit")
    height = min(8.0, 2.4 + 0.2 * layers)  # inches; margins in inches too (no layout engine: it costs 0.15 s)
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(9.0, height), dpi=MASK_DPI,
                             gridspec_kw={"width_ratios": [3] * len(panels) + [1.4]})
    fig.subplots_adjust(left=0.06, right=0.98, wspace=0.28, bottom=0.75 / height, top=1 - 0.6 / height)
    for ax, (grid, what) in zip(axes, panels):
        prob = what == "prob"
        im = ax.imshow(grid, aspect="auto", interpolation="nearest", vmin=0.0, vmax=1.0,
                       cmap="viridis" if prob else ListedColormap(["#d9d9d9", "tab:red"]),
                       extent=(-0.5, units - 0.5, layers - 0.5, -0.5))
        ax.set_title("keep probability (training)" if prob else "kept (red), eval and finalize", fontsize=9)
        ax.set_xlabel(f"{unit_label} (of {units})", fontsize=8)
        ax.set_ylabel("layer", fontsize=8)
        ax.set_yticks(range(layers) if layers <= 24 else np.linspace(0, layers - 1, 6).round().astype(int))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        if prob:
            fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02).ax.tick_params(labelsize=7)
            if units <= 16 and layers <= 16:  # heads: the value in each cell
                for (i, j), v in np.ndenumerate(grid):
                    ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=6,
                            color="white" if v < 0.6 else "black")
    bars = axes[-1]
    rows = np.arange(layers)
    if kept is not None:
        bars.barh(rows, _as_grid(kept).sum(axis=1), color="tab:red", height=0.7)
    if alive is not None:
        bars.plot(_as_grid(alive).sum(axis=1), rows, "k|", markersize=9)
    bars.set_xlim(0, units)
    bars.set_ylim(layers - 0.5, -0.5)
    bars.set_title("kept per layer", fontsize=9)
    bars.set_xlabel(f"{unit_label}s kept" + ("\n(| expected)" if alive is not None else ""), fontsize=8)
    bars.set_yticks([])
    bars.xaxis.set_major_locator(MaxNLocator(nbins=3, integer=True))
    bars.tick_params(labelsize=7)
    title = f"{stack.replace('_', ' ')} {unit_label}s" if stack else f"{unit_label}s"
    fig.suptitle(f"{title} mask: {layers} layer{'s' if layers > 1 else ''} x {units}", fontsize=10)
    return fig


def figure_to_array(fig) -> Any:
    """Render ``fig`` (Agg) into an RGB uint8 array [H, W, 3] and close it."""
    import numpy as np

    plt = _pyplot()
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return rgb


def mask_images(alive: dict, kept: dict | None = None) -> dict[str, Any]:
    """``{"masks/<name>": RGB array [H, W, 3]}`` per mask with units (heads, FFN dims, hidden dims), for
    TensorBoard (``add_image(..., dataformats="HWC")``). Whole-sublayer gates (``_mha``/``_mlp``) are scalars."""
    kept = kept or {}
    return {f"masks/{name}": figure_to_array(mask_figure(name, alive=a, kept=kept.get(name)))
            for name, a in alive.items() if not name.endswith(("_mha", "_mlp"))}


def save_mask_figures(alive: dict, kept: dict, out_dir: str | Path) -> list[Path]:
    """``masks_<name>.png`` per mask with units in ``out_dir`` (finalize: beside pruning_report.json)."""
    plt = _pyplot()
    out = []
    for name, k in kept.items():
        if name.endswith(("_mha", "_mlp")):
            continue
        fig = mask_figure(name, alive=alive.get(name), kept=k)
        out.append(Path(out_dir) / f"masks_{name}.png")
        fig.savefig(out[-1])
        plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nash_ds.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", help="report.json files of evaluate runs")
    p.add_argument("-o", "--output", default="speedup.png", help="PNG to write")
    p.add_argument("--title", default="quality vs speed")
    p.add_argument("--target", type=float, default=None, help="draw a target line at this quality kept (%%)")
    args = p.parse_args(argv)
    targets = [] if args.target is None else [{"quality_kept": args.target, "label": f"target: {args.target:g}% kept"}]
    out = plot_points(points_from_files(args.reports), args.output, title=args.title, targets=targets)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
