"""What `streamrec evaluate` shows: a table in the terminal and a PNG.

Both take the per-model result objects of `models.evaluate.run_protocol` and the published
rows of the protocol (label -> metric -> value), so they can be drawn from a saved JSON too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def print_table(protocol: str, results: list[dict[str, Any]], published: dict[str, dict[str, float]]) -> None:
    """Our models (mean over seeds +- standard error over users) and the published rows."""
    # Imported here, not at the top: the stream worker imports models.evaluate and needs neither.
    from rich.console import Console
    from rich.table import Table

    metrics = [m for m in results[0] if f"{m}_se" in results[0]]
    seeds = results[0]["seeds"]
    table = Table(title=f"{protocol}: test, mean of {seeds} seed(s) ± standard error over users")
    for column in ["model", *metrics, "train s"]:
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in results:
        cells = [f"{r[m]:.4f}±{r[m + '_se']:.4f}" for m in metrics]
        table.add_row(r["model"], *cells, f"{r['train_seconds']:.1f}")
    for label, values in published.items():
        table.add_row(label, *[f"{values[m]:.4f}" if m in values else "" for m in metrics], "", style="dim")
    console = Console()
    if not console.is_terminal:  # a log file or pipe: do not squeeze the table into 80 columns
        console = Console(width=220)
    console.print(table)
    if seeds > 1:
        spread = ", ".join(f"{r['model']} {max(r[m + '_se_seeds'] for m in metrics):.4f}" for r in results)
        console.print(f"largest standard error over seeds, per model: {spread}")


def plot(protocol: str, results: list[dict[str, Any]], published: dict[str, dict[str, float]], out: Path) -> None:
    """Left: test metrics per model (error bars: SE over users), published figures as outlines.
    Right: the validation metric against epochs for the iterative models (first seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in results[0] if f"{m}_se" in results[0]]
    fig, (bars, curves) = plt.subplots(1, 2, figsize=(16, 5), gridspec_kw={"width_ratios": [3, 2], "wspace": 0.45})
    n_series = len(results) + len(published)
    width = 0.8 / n_series
    x = np.arange(len(metrics))
    for i, r in enumerate(results):
        bars.bar(
            x + i * width, [r[m] for m in metrics], width, yerr=[r[m + "_se"] for m in metrics],
            label=r["model"], capsize=2,
        )  # fmt: skip
    for j, (label, values) in enumerate(published.items()):
        heights = [values.get(m, 0.0) for m in metrics]
        bars.bar(x + (len(results) + j) * width, heights, width, fill=False, hatch="//", label=label)
    bars.set_xticks(x + 0.4 - width / 2, metrics, rotation=30)
    bars.set_title(f"{protocol}: test metrics (mean over {results[0]['seeds']} seed(s))")
    bars.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for r in results:
        curve = [row for row in r["runs"][0]["curve"] if any(k.startswith("val_") for k in row)]
        if curve:
            key = next(k for k in curve[0] if k.startswith("val_"))
            curves.plot([row["epoch"] for row in curve], [row[key] for row in curve], label=r["model"])
            curves.set_ylabel(f"validation {key[4:]}")
    curves.set_xlabel("epoch")
    curves.set_title("training curves (seed 0)")
    if curves.lines:
        curves.legend(fontsize=7)
    else:  # no iterative model among those compared: say so instead of an empty legend
        curves.text(0.5, 0.5, "no iterative model: no training curve", ha="center", va="center")
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)


def format_metrics(metrics: dict[str, float]) -> str:
    """A checkpoint's metrics on one line for people: counts as integers, figures with 4
    decimals, durations left out (e.g. `ndcg@20=0.2503, recall@20=0.3521, users=196`)."""
    shown = []
    for name, value in sorted(metrics.items()):
        if name.endswith("seconds"):
            continue
        is_count = name == "users" or name.endswith("_users") or float(value).is_integer()
        shown.append(f"{name}={value:.0f}" if is_count else f"{name}={value:.4f}")
    return ", ".join(shown)
