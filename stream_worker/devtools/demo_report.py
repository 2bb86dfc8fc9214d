"""The demo's picture: one PNG with what the run did, for people who would rather look than read.

    ┌ latency p50/p99 over time ─────┐ ┌ throughput over time ──────────┐
    │ (the model swap marked)        │ │ (events/s in, lists/s out)     │
    └────────────────────────────────┘ └────────────────────────────────┘
    ┌ true-taste overlap per version ┐ ┌ users' latent space ───────────┐
    │ (vs random items)              │ │ Mult-VAE encoder mean, PCA 2-D,│
    └────────────────────────────────┘ │ coloured by hidden taste       │
                                       └────────────────────────────────┘

The latent-space panel is the picture the Mult-VAE article draws: each user's history goes
through the serving model's encoder, the means mu are projected on their two principal axes
(an SVD of the centred means), and each dot is coloured by the synthetic world's hidden taste
(the user's strongest generating factor), which the model never saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream_worker.devtools.synthetic import SyntheticWorld


@dataclass
class DemoRecord:
    """One recommendation list the demo read back."""

    user_id: str
    model_version: int
    overlap: float  # share of its items among the user's true top items


def write_report(
    path: Path,
    series: list[dict[str, float]],
    records: list[DemoRecord],
    world: SyntheticWorld,
    model_dir: Path | None,
    *,
    history_seed: int,
    history: int,
    true_top: int = 50,
) -> Path:
    """Draw the four panels into `path` (PNG); returns `path`.

    series: the progress table's rows (seconds, events_per_s, recs_per_s, p50_s, p99_s,
    model_version); records: every list published; the newest checkpoint in `model_dir`
    encodes the users' histories (the `history` events of `world` drawn with `history_seed`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    (latency, throughput), (quality, latent) = axes
    seconds = np.array([row["seconds"] for row in series])
    swap = next((row["seconds"] for row in series if row["model_version"] >= 2), None)

    p50 = np.array([row["p50_s"] for row in series]) * 1000
    p99 = np.array([row["p99_s"] for row in series]) * 1000
    latency.plot(seconds, p50, label="p50", marker=".")
    latency.plot(seconds, p99, label="p99", marker=".")
    # Log scale: the history backlog at the start is minutes old, live events take milliseconds.
    latency.set_yscale("log")
    latency.set(
        title="event → recommendation latency (the first minutes: the history backlog)",
        xlabel="seconds since the worker started",
        ylabel="ms (log scale)",
    )
    throughput.plot(seconds, [row["events_per_s"] for row in series], label="events in /s")
    throughput.plot(seconds, [row["recs_per_s"] for row in series], label="recommendation lists out /s")
    throughput.set(title="throughput", xlabel="seconds since the worker started", ylabel="per second")
    for ax in (latency, throughput):
        if swap is not None:
            ax.axvline(swap, color="grey", linestyle="--", label="model v2 swapped in")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)

    versions = sorted({r.model_version for r in records})
    means = [np.mean([r.overlap for r in records if r.model_version == v]) for v in versions]
    counts = [sum(r.model_version == v for r in records) for v in versions]
    bars = quality.bar([f"v{v}" for v in versions], means, color="tab:green")
    for bar, n in zip(bars, counts, strict=True):
        quality.annotate(f"{bar.get_height():.0%}\n{n} lists", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                         ha="center", va="bottom", fontsize=9)  # fmt: skip
    random_overlap = true_top / world.n_items
    quality.axhline(random_overlap, color="grey", linestyle="--", label=f"random items ({random_overlap:.0%})")
    quality.set(
        title=f"share of recommended items among the user's true top {true_top}",
        xlabel="model version that made the list",
        ylim=(0, 1),
    )
    quality.legend(fontsize=8)

    _latent_panel(latent, world, model_dir, history_seed=history_seed, history=history)
    fig.suptitle("streamrec demo: a synthetic world served live, with a model swap mid-stream")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _latent_panel(ax, world: SyntheticWorld, model_dir: Path | None, *, history_seed: int, history: int) -> None:
    import torch

    from models import checkpoint

    loaded = checkpoint.load(model_dir) if model_dir is not None else None
    net = getattr(loaded.model, "net", None) if loaded is not None else None
    if loaded is None or net is None or not hasattr(net, "encode"):
        ax.text(0.5, 0.5, "the serving model has no encoder to draw", ha="center", va="center")
        ax.set_axis_off()
        return
    # Each user's history as the model saw it: counts over the checkpoint's item vocabulary.
    users, items, _types = world.sample(history, seed=history_seed)
    column = {item_id: i for i, item_id in enumerate(loaded.metadata.item_ids)}
    cols = np.array([column.get(world.item_id(int(i)), -1) for i in items])
    X = np.zeros((world.n_users, len(column)), np.float32)  # (U, I)
    np.add.at(X, (users[cols >= 0], cols[cols >= 0]), 1.0)
    seen = X.sum(axis=1) > 0
    net.eval()
    with torch.inference_mode():
        mu = net.encode(torch.from_numpy(X[seen]).to(loaded.model.device))[0].cpu().numpy()  # (U, D)
    centred = mu - mu.mean(axis=0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ axes[:2].T  # (U, 2)
    explained = singular[:2] ** 2 / max(float((singular**2).sum()), 1e-12)
    taste = np.argmax(world.user_factors[seen], axis=1)  # the strongest hidden factor
    scatter = ax.scatter(xy[:, 0], xy[:, 1], c=taste, cmap="tab10", vmin=0, vmax=9, s=8, alpha=0.8)
    handles = [
        ax.scatter([], [], color=scatter.cmap(scatter.norm(t)), label=f"taste {t + 1}") for t in np.unique(taste)
    ]
    ax.legend(handles=handles, fontsize=8, title="hidden taste", loc="upper right")
    ax.text(
        0.01, 0.01, "hidden taste: the user's strongest generating factor, which the model never sees",
        transform=ax.transAxes, fontsize=8, color="dimgrey",
    )  # fmt: skip
    ax.set(
        title=f"users in {loaded.metadata.name} v{loaded.metadata.version}'s latent space (encoder mean μ)",
        xlabel=f"principal axis 1 ({explained[0]:.0%} of variance)",
        ylabel=f"principal axis 2 ({explained[1]:.0%} of variance)",
    )
