"""Benchmark of the worker's compute path: state -> batch -> Mult-VAE -> masked top-K.

Prints users scored per second for several micro-batch sizes, each as a ratio against
scoring one user per model call (the baseline, measured in the same run), plus the cost of
applying events to state and the state's memory per user. No Kafka: this isolates what
micro-batching buys on the model side. Run with `make bench`, or on a GPU machine:

    python -m tests.benchmarks.bench_inference --device cuda --items 20000 --users 20000 --compare-cpu
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from models.checkpoint import CheckpointMetadata, LoadedModel
from models.multvae import MultVAE
from stream_worker.codec import UserEvent
from stream_worker.config import DEFAULT_EVENT_WEIGHTS
from stream_worker.worker.inference import Inference
from stream_worker.worker.state import UserState

EVENT_TYPES = ("VIEW", "CLICK", "ADD_TO_CART", "PURCHASE")


def build_state(n_users: int, n_items: int, events_per_user: int, recent_items: int) -> tuple[UserState, float]:
    """A state of n_users with random histories; returns it and events applied per second."""
    rng = np.random.default_rng(0)
    n_events = n_users * events_per_user
    users = rng.integers(0, n_users, n_events)
    items = rng.zipf(1.3, n_events) % n_items
    types = rng.integers(0, len(EVENT_TYPES), n_events)
    events = [
        (UserEvent(f"e{n}", f"u{users[n]}", f"i{items[n]}", EVENT_TYPES[types[n]], None, n), 0) for n in range(n_events)
    ]
    state = UserState(
        max_users=n_users, recent_items=recent_items, event_weights=DEFAULT_EVENT_WEIGHTS, decay_half_life_s=86400
    )
    started = time.perf_counter()
    state.apply(events)
    return state, n_events / (time.perf_counter() - started)


def users_per_second(inference: Inference, state: UserState, user_ids: list[str], batch: int, device) -> float:
    def run(ids: list[str]) -> None:
        for lo in range(0, len(ids), batch):
            inference.recommend(state.batch(ids[lo : lo + batch]))
        if device.type == "cuda":
            torch.cuda.synchronize()

    run(user_ids[: batch * 2])  # warm-up: allocator, kernels, lookup table
    started = time.perf_counter()
    run(user_ids)
    return len(user_ids) / (time.perf_counter() - started)


def bench_device(
    device: torch.device, args: argparse.Namespace, state: UserState
) -> tuple[dict[int, float], Inference]:
    torch.manual_seed(0)
    model = MultVAE(args.items)
    meta = CheckpointMetadata(
        kind="multvae", version=1, item_ids=[f"i{i}" for i in range(args.items)], hyperparameters={}
    )
    inference = Inference(LoadedModel(model, meta, path=None), state.items, device, top_k=20)  # type: ignore[arg-type]
    user_ids = [f"u{u}" for u in range(args.users) if f"u{u}" in state]
    results = {}
    for batch in args.batches:
        # The one-user baseline is slow: time it on fewer users so the run stays short.
        sample = user_ids[: max(batch * 8, 400)] if batch == 1 else user_ids
        results[batch] = users_per_second(inference, state, sample, batch, device)
    return results, inference


def bench_training(device: torch.device, args: argparse.Namespace) -> float:
    """Seconds per Mult-VAE epoch on a random (users, items) matrix."""
    import scipy.sparse as sp

    X = sp.random(args.users, args.items, density=min(50 / args.items, 1.0), format="csr", random_state=0)
    X.data[:] = 1.0
    model = MultVAE(args.items, MultVAE.Config(epochs=1)).to(device)
    model.fit(X[: min(2000, args.users)])  # warm-up
    started = time.perf_counter()
    model.fit(X)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--events-per-user", type=int, default=40)
    parser.add_argument("--recent-items", type=int, default=100)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256, 1024])
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[torch.get_num_threads()], help="CPU thread counts to compare"
    )
    parser.add_argument("--compare-cpu", action="store_true", help="also measure the CPU in the same run")
    parser.add_argument("--train", action="store_true", help="also time one training epoch")
    args = parser.parse_args()

    state, events_per_s = build_state(args.users, args.items, args.events_per_user, args.recent_items)
    state_bytes = state.bytes_per_user()
    print(f"catalog {args.items} items, {len(state)} users, torch {torch.__version__}, {os.cpu_count()} cores")
    print(
        f"state: {events_per_s:,.0f} events/s applied; {state_bytes['interactions']:,} bytes/user of "
        f"interactions, {state_bytes['all']:,} with counters"
    )

    devices = [torch.device(args.device)] + ([torch.device("cpu")] if args.compare_cpu and args.device != "cpu" else [])
    served = []
    for device in devices:
        for threads in args.threads if device.type == "cpu" else [torch.get_num_threads()]:
            torch.set_num_threads(threads)
            results, inference = bench_device(device, args, state)
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {threads} thread(s)"
            print(f"\n{name}: users scored per second (Mult-VAE 600-200, top-20, seen items masked)")
            print(f"{'batch':>7} {'users/s':>12} {'vs batch 1':>11}")
            for batch, rate in results.items():
                print(f"{batch:>7} {rate:>12,.0f} {rate / results[args.batches[0]]:>10.1f}x")
            if args.train:
                print(f"training: {bench_training(device, args):.2f} s per epoch over {args.users} users")
        served.append(inference)
    if len(served) == 2:  # same weights (seeded) on both devices: the lists should agree
        sample = state.batch([f"u{u}" for u in range(min(args.users, 512)) if f"u{u}" in state])
        a, b = (inference.recommend(sample).item_ids for inference in served)
        same = sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
        overlap = sum(len(set(x) & set(y)) for x, y in zip(a, b, strict=True)) / sum(len(x) for x in a)
        print(f"\n{args.device} vs cpu: identical top-20 lists for {same:.1%} of users, {overlap:.2%} item overlap")


if __name__ == "__main__":
    main()
