"""Quality kept (% of the dense teacher) vs generation speedup: one scatter for dense / NASH / CoFi / SFT.

Points come from evaluate reports (``report.json`` of ``run.py evaluate`` or the pipeline):
every row but the baseline becomes a point labelled by its method; the dense baseline sits at
(1x, 100%). Several reports (one per run: NASH k=2/3/4, CoFi, SFT) go into one figure:

    python -m nash_ds.plot runs/*/evaluate/report.json -o docs/speedup.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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


def plot_points(points: list[dict], out: str | Path, *, title: str = "quality vs speed") -> Path:
    """Scatter ``points`` into a PNG at ``out`` (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not points:
        raise ValueError("no points to plot (the reports hold no rows)")
    fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=120)
    seen = set()
    for p in points:
        color, marker = STYLE.get(p["method"], ("tab:gray", "D"))
        ax.scatter(p["speedup"], p["quality_kept"], c=color, marker=marker, s=70 if marker == "*" else 40,
                   label=p["method"] if p["method"] not in seen else None, zorder=3)
        seen.add(p["method"])
        ax.annotate(p["label"], (p["speedup"], p["quality_kept"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=7)
    metrics = sorted({p.get("metric", "") for p in points} - {""})
    ax.axhline(100.0, color="black", lw=0.5, ls=":")
    ax.axvline(1.0, color="black", lw=0.5, ls=":")
    ax.set_xlabel("generation speedup over dense (x)")
    ax.set_ylabel(f"quality kept (% of dense{', ' + '/'.join(metrics) if metrics else ''})")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nash_ds.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", help="report.json files of evaluate runs")
    p.add_argument("-o", "--output", default="speedup.png", help="PNG to write")
    p.add_argument("--title", default="quality vs speed")
    args = p.parse_args(argv)
    out = plot_points(points_from_files(args.reports), args.output, title=args.title)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
