"""The CUDA path end to end, for a machine with a GPU (no Kafka needed):

train a Mult-VAE on the synthetic world with `models.train` on cuda -> save a checkpoint ->
load it onto cuda -> rolling state from events -> batched masked top-K on cuda, checked
against the world's ground truth and against the same checkpoint served on the CPU.

    python -m tests.benchmarks.gpu_check
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from models import checkpoint
from models.train import train_model
from stream_worker.config import DEFAULT_EVENT_WEIGHTS
from stream_worker.inference import Inference
from stream_worker.state import UserState
from stream_worker.synthetic import SyntheticWorld


def main() -> None:
    assert torch.cuda.is_available(), "no GPU visible to torch"
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__}")
    world = SyntheticWorld(n_users=5000, n_items=3000, seed=5)
    users, items, _ = world.sample(200_000, seed=1)
    X = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(world.n_users, world.n_items))
    X.data[:] = 1.0

    timings = {}
    for device in ("cuda", "cpu"):
        started = time.perf_counter()
        model, report = train_model("multvae", X, device=device, epochs=20, seed=0)
        torch.cuda.synchronize()
        timings[device] = time.perf_counter() - started
        print(f"train 20 epochs on {device}: {timings[device]:.1f}s (final loss {report.curve[-1]['loss']:.1f})")
        if device == "cuda":
            with tempfile.TemporaryDirectory() as tmp:
                path = checkpoint.save(model, Path(tmp), item_ids=world.item_ids(), name="multvae")
                on_cuda = checkpoint.load(path, "cuda")
                on_cpu = checkpoint.load(path, "cpu")
    print(f"training speed-up cuda vs cpu: {timings['cpu'] / timings['cuda']:.1f}x")

    state = UserState(
        max_users=world.n_users, recent_items=100, event_weights=DEFAULT_EVENT_WEIGHTS, decay_half_life_s=0
    )
    state.apply((event, 0) for event in world.events(100_000, seed=2, start_ms=0))
    user_ids = [world.user_id(u) for u in range(world.n_users) if world.user_id(u) in state]
    served = {
        device: Inference(loaded, state.items, torch.device(device), top_k=20)
        for device, loaded in (("cuda", on_cuda), ("cpu", on_cpu))
    }
    lists_by_device = {}
    for device, inference in served.items():
        inference.recommend(state.batch(user_ids[:256]))  # warm-up
        started = time.perf_counter()
        ranked = [inference.recommend(state.batch(user_ids[lo : lo + 256])) for lo in range(0, len(user_ids), 256)]
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        lists = [items for r in ranked for items in r.item_ids]
        hits = np.mean(
            [
                len(set(items) & set(world.true_top(int(u[1:]), 50))) / 20
                for u, items in zip(user_ids, lists, strict=True)
            ]
        )
        print(
            f"serve on {device}: {len(user_ids) / elapsed:,.0f} users/s in batches of 256; "
            f"{hits:.0%} of items in the user's true top 50"
        )
        lists_by_device[device] = lists
        if device == "cuda":
            batch = state.batch(user_ids[:256])
            for b in range(256):
                seen = {state.items.ids[c] for c in batch.item_codes[b] if c >= 0}
                assert not seen & set(lists[b]), "a seen item was recommended"
    agree = np.mean([a == b for a, b in zip(lists_by_device["cuda"], lists_by_device["cpu"], strict=True)])
    print(f"cuda and cpu serve identical top-20 lists for {agree:.1%} of users")


if __name__ == "__main__":
    main()
