"""Does warm-starting from the serving model save training time at equal quality? Measured.

The demo's synthetic world (2,000 users, 1,000 items). A serving Mult-VAE is trained on a
first window of events (before its cut-off, as the trainer does), then a second window of
later events arrives and candidates are trained on everything before the new cut-off: from
scratch, and from the serving model's weights, for several epoch counts. Each is scored on
the same held-out freshest events (NDCG@20, recall@20 as the trainer's promotion check), with
the trainer's own functions (`temporal_split`, `served_overrides`, `ranked_quality`).

    python -m tests.benchmarks.bench_warm_start [--threads 1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from models.checkpoint import CheckpointMetadata, LoadedModel
from models.train import train_model
from stream_worker.config import DEFAULT_EVENT_WEIGHTS
from stream_worker.devtools.synthetic import SyntheticWorld
from stream_worker.model_input import decay_rate_per_ms, interaction_weight
from stream_worker.trainer.compare import ranked_quality
from stream_worker.trainer.fit import served_overrides, warm_tensors
from stream_worker.trainer.split import reindex_columns, temporal_split
from stream_worker.trainer.window import WindowBuilder

RATE = decay_rate_per_ms(30 * 24 * 3600.0)


def window(world: SyntheticWorld, n_events: int, seeds: list[int]):
    builder = WindowBuilder()
    for k, seed in enumerate(seeds):
        events = list(world.events(n_events, seed=seed, start_ms=1_700_000_000_000 + k * n_events))
        builder.add_chunk(
            [e.user_id for e in events],
            [e.item_id for e in events],
            [interaction_weight(DEFAULT_EVENT_WEIGHTS, e.event_type, e.value) for e in events],
            [e.event_time_ms for e in events],
        )
    return builder.build()


def candidate(split, w, item_ids, epochs: int, initial=None):
    X = reindex_columns(split.train, w.item_ids, item_ids)
    model, report = train_model(
        "multvae",
        X,
        device="cpu",
        epochs=epochs,
        overrides=served_overrides("multvae", X.shape[0], 100),
        initial=initial,
    )
    quality = ranked_quality(model, item_ids, split.eval_inputs, split.eval_targets, w.item_ids, 20)
    return model, report.seconds, quality


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--serving-epochs", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    world = SyntheticWorld(n_users=2000, n_items=1000)

    first = window(world, 40_000, [1])
    split1 = temporal_split(first, holdout_fraction=0.1, not_before_ms=0, recent_items=100, rate_per_ms=RATE)
    trained = np.flatnonzero(np.asarray(split1.train.sum(axis=0)).ravel() > 0)
    serving_ids = [first.item_ids[i] for i in trained]
    serving, seconds, _ = candidate(split1, first, serving_ids, args.serving_epochs)
    print(f"serving model: {args.serving_epochs} epochs on {split1.train_events:,} events, {seconds:.1f} s")

    second = window(world, 40_000, [1, 2])
    split2 = temporal_split(
        second, holdout_fraction=0.1, not_before_ms=split1.cutoff_ms, recent_items=100, rate_per_ms=RATE
    )
    held = ranked_quality(serving, serving_ids, split2.eval_inputs, split2.eval_targets, second.item_ids, 20)
    print(
        f"second window: {split2.train_events:,} training events, {split2.eval_inputs.shape[0]:,} users evaluated "
        f"on {split2.heldout_events:,} held-out events; serving model there: ndcg@20 {held['ndcg@20']:.4f}"
    )
    trained2 = np.flatnonzero(np.asarray(split2.train.sum(axis=0)).ravel() > 0)
    ids = [second.item_ids[i] for i in trained2]
    loaded = LoadedModel(serving, CheckpointMetadata("multvae", 1, serving_ids, {}), Path("."))
    new_items = len(set(ids) - set(serving_ids))
    print(f"catalog: {len(ids)} items, {new_items} of them unknown to the serving model (they start at zero)")
    print("| start | epochs | seconds | ndcg@20 | recall@20 |\n|---|---:|---:|---:|---:|")
    for epochs in (2, 5, 10, 20):
        for start in ("scratch", "warm"):
            initial = warm_tensors(loaded, "multvae", ids) if start == "warm" else None
            _, seconds, quality = candidate(split2, second, ids, epochs, initial)
            print(f"| {start} | {epochs} | {seconds:.1f} | {quality['ndcg@20']:.4f} | {quality['recall@20']:.4f} |")


if __name__ == "__main__":
    main()
