"""Benchmark of the trainer's window path at ML-20M's shape: time and peak memory, measured.

What runs, in one process, with figures printed as they are measured:
1. Avro decode: `--decode-sample` real UserEvent records (single-object encoding, the codec the
   trainer uses) are decoded, validated and weighted exactly as `trainer.read_window` does per
   message; the per-event cost is printed (Kafka fetching itself is not part of this run).
2. The window: `--events` events of `--users` users over `--items` items (ML-20M: 20,000,263
   ratings, 138,493 users, 26,744 items), long-tailed item popularity, times spread over five
   years, handed to `WindowBuilder.add_chunk` as id strings in chunks of 1,000 (what one
   `consume()` returns), so interning runs on strings as in the trainer.
3. `temporal_split` (model input as the worker builds it: last 100 events per user, decayed)
   and the candidate's training matrix (`reindex_columns`).
Peak RSS is the process's high-water mark (`ru_maxrss`) after each step.

    python -m tests.benchmarks.bench_trainer_window                    # ML-20M's shape
    python -m tests.benchmarks.bench_trainer_window --events 2000000   # a tenth, quicker
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from stream_worker.codec import USER_EVENT, from_user_event, make_codec, to_user_event
from stream_worker.codec import UserEvent as Event
from stream_worker.config import DEFAULT_EVENT_WEIGHTS
from stream_worker.model_input import decay_rate_per_ms
from stream_worker.trainer.split import reindex_columns, temporal_split
from stream_worker.trainer.window import WindowBuilder
from stream_worker.worker.state import interaction_weight

CHUNK = 1000
YEAR_MS = 365 * 24 * 3600 * 1000


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def decode_cost(n: int) -> float:
    """Seconds per event to decode, validate and weigh real Avro records, as read_window does."""
    codec = make_codec(USER_EVENT, "user-events", None)
    rng = np.random.default_rng(1)
    kinds = ("VIEW", "CLICK", "PURCHASE", "RATING")
    records = [
        (
            f"u{u}".encode(),
            codec.encode(from_user_event(Event(f"e{n}", f"u{u}", f"i{i}", kinds[n % 4], 4.0, 1_700_000_000_000 + n))),
        )
        for n, (u, i) in enumerate(zip(rng.integers(0, 138_493, n), rng.integers(0, 26_744, n), strict=True))
    ]
    started = time.perf_counter()
    for key, value in records:
        event = to_user_event(codec.decode(value), key)
        interaction_weight(DEFAULT_EVENT_WEIGHTS, event.event_type, event.value)
    return (time.perf_counter() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000_263)
    parser.add_argument("--users", type=int, default=138_493)
    parser.add_argument("--items", type=int, default=26_744)
    parser.add_argument("--decode-sample", type=int, default=100_000)
    args = parser.parse_args()
    print(f"start: peak RSS {peak_rss_gib():.2f} GiB (Python, NumPy, torch imported)")

    per_event = decode_cost(args.decode_sample)
    print(
        f"1. Avro decode + validate + weight: {per_event * 1e6:.1f} us/event over {args.decode_sample:,} records "
        f"(at this rate {args.events:,} events take {per_event * args.events:.0f} s of decoding)"
    )

    rng = np.random.default_rng(0)
    builder = WindowBuilder()
    started = time.perf_counter()
    times = np.sort(rng.integers(0, 5 * YEAR_MS, args.events)) + 1_400_000_000_000
    for lo in range(0, args.events, CHUNK):
        n = min(CHUNK, args.events - lo)
        users = rng.integers(0, args.users, n)
        items = (args.items * rng.random(n) ** 3).astype(np.int64)  # long tail: a few items take most events
        builder.add_chunk(
            [f"u{u}" for u in users.tolist()],
            [f"i{i}" for i in items.tolist()],
            rng.choice([1.0, 2.0, 5.0], n).tolist(),
            times[lo : lo + n].tolist(),
        )
    del times
    window = builder.build()
    built = time.perf_counter() - started
    columns_gib = sum(a.nbytes for a in (window.users, window.items, window.weights, window.times_ms)) / 2**30
    print(
        f"2. window of {len(window):,} events ({len(window.user_ids):,} users, {len(window.item_ids):,} items) "
        f"in chunks of {CHUNK}: {built:.1f} s (including making the id strings), columns {columns_gib:.2f} GiB, "
        f"peak RSS {peak_rss_gib():.2f} GiB"
    )

    started = time.perf_counter()
    split = temporal_split(
        window,
        holdout_fraction=0.1,
        not_before_ms=0,
        recent_items=100,
        rate_per_ms=decay_rate_per_ms(30 * 24 * 3600.0),
    )
    trained_items = np.flatnonzero(np.asarray(split.train.sum(axis=0)).ravel() > 0)
    X = reindex_columns(split.train, window.item_ids, [window.item_ids[i] for i in trained_items])
    print(
        f"3. temporal split + training matrix: {time.perf_counter() - started:.1f} s; train {X.shape[0]:,} users x "
        f"{X.shape[1]:,} items, {X.nnz:,} nonzeros from {split.train_events:,} events; evaluation "
        f"{split.eval_inputs.shape[0]:,} users, {split.heldout_events:,} held-out events; "
        f"peak RSS {peak_rss_gib():.2f} GiB"
    )


if __name__ == "__main__":
    main()
