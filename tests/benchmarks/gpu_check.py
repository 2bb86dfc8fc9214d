"""The CUDA path end to end, for a machine with a GPU (no Kafka needed):

sparse scoring first: `score_bag` (the embedding-bag first layer of Mult-VAE/DAE and CFGAN)
must give the dense path's scores on cuda and the CPU's, and its speed against the dense
input is printed for an ML-1M-sized catalog; then train a Mult-VAE on the synthetic world
with `models.train` on cuda -> save a checkpoint -> load it onto cuda -> rolling state from
events -> batched masked top-K on cuda (sparse path), checked against the world's ground
truth and against the same checkpoint served on the CPU; then the sequence model (SASRec): the same
left-padded rows scored on the device and the CPU (finite, equal), training epochs timed on both, and
model-only users/s at batch 1 and 256.

    python -m tests.benchmarks.gpu_check                 # on the GPU machine
    python -m tests.benchmarks.gpu_check --device cpu    # the same checks, CPU only
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from models import REGISTRY, checkpoint
from models.base import densify_bag
from models.train import train_model
from stream_worker.config import DEFAULT_EVENT_WEIGHTS
from stream_worker.devtools.synthetic import SyntheticWorld
from stream_worker.worker.inference import Inference
from stream_worker.worker.state import UserState


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def check_sparse_path(device: str, n_items: int = 3706, n_users: int = 2048, length: int = 100) -> dict[str, float]:
    """score_bag == score(dense rows) on `device` and against the CPU, for Mult-VAE, Mult-DAE and
    CFGAN (random weights); returns model-only users/s, dense vs sparse, at batch 1 and 256."""
    gen = torch.Generator().manual_seed(0)
    index = torch.randint(0, n_items, (n_users, length), generator=gen)  # (B, L)
    index[:, 1] = index[:, 0]  # a repeated item per user
    index[::3, length // 2 :] = -1  # empty slots
    weights = torch.rand(n_users, length, generator=gen) * 5
    figures = {}
    for kind in ("multvae", "multdae", "cfgan"):
        torch.manual_seed(0)
        on_cpu = REGISTRY[kind](n_items)
        torch.manual_seed(0)
        model = REGISTRY[kind](n_items).to(device)
        i, w = index[:256].to(device), weights[:256].to(device)
        dense = model.score(densify_bag(i, w, n_items))
        sparse = model.score_bag(i, w)
        torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(sparse.cpu(), on_cpu.score_bag(index[:256], weights[:256]), rtol=1e-4, atol=1e-4)
        print(f"{kind} on {device}: score_bag equals the dense path and the CPU (max diff "
              f"{(sparse - dense).abs().max().item():.1e})")  # fmt: skip
        if kind != "multvae":
            continue
        i_all, w_all = index.to(device), weights.to(device)
        for batch in (1, 256):
            users = 200 if batch == 1 else n_users
            for name, score in (
                ("dense", lambda a, b, m=model: m.score(densify_bag(a, b, n_items))),
                ("sparse", model.score_bag),
            ):
                score(i_all[:batch], w_all[:batch])  # warm-up
                sync(device)
                started = time.perf_counter()
                for lo in range(0, users, batch):
                    score(i_all[lo : lo + batch], w_all[lo : lo + batch])
                sync(device)
                figures[f"b{batch} {name}"] = users / (time.perf_counter() - started)
        print(f"multvae on {device}, model only, {n_items} items, users/s: "
              + ", ".join(f"{k} {v:,.0f}" for k, v in figures.items()))  # fmt: skip
    return figures


def check_sequence_path(
    device: str, n_items: int = 3706, n_users: int = 2048, length: int = 100, epochs: int = 2
) -> dict[str, float]:
    """SASRec on `device` against the CPU: the same scores for short, left-padded histories (one
    empty, one of length 1), seconds per training epoch on both, and model-only users/s."""
    from models.sequences import Sequences
    from models.train import make_config

    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, n_items, (n_users, length), generator=gen)  # (B, L)
    lengths = torch.randint(1, length + 1, (n_users,), generator=gen)
    lengths[0], lengths[1] = 0, 1
    codes = torch.where(torch.arange(length) >= length - lengths[:, None], codes, -1)  # left padding
    config = make_config("sasrec", {"max_len": length, "epochs": epochs})
    torch.manual_seed(0)
    on_cpu = REGISTRY["sasrec"](n_items, config)
    model = REGISTRY["sasrec"](n_items, config)
    model.load_tensors(on_cpu.tensors())
    model.to(device)
    here, there = model.score_sequences(codes[:256].to(device)), on_cpu.score_sequences(codes[:256])
    assert torch.isfinite(here).all(), "SASRec scores are not finite on padded rows"
    torch.testing.assert_close(here.cpu(), there, rtol=1e-3, atol=1e-3)
    print(
        f"sasrec on {device}: padded rows finite and equal to the CPU's "
        f"(max diff {(here.cpu() - there).abs().max():.1e})"
    )
    figures = {}
    for batch_size in (1, 256):
        rows = codes[: 200 if batch_size == 1 else n_users].to(device)
        model.score_sequences(rows[:batch_size])  # warm-up
        sync(device)
        started = time.perf_counter()
        for lo in range(0, len(rows), batch_size):
            model.score_sequences(rows[lo : lo + batch_size])
        sync(device)
        figures[f"b{batch_size} users/s"] = len(rows) / (time.perf_counter() - started)
    seqs = Sequences([row[row >= 0].numpy() for row in codes], n_items)
    for where in dict.fromkeys([device, "cpu"]):
        torch.manual_seed(0)
        trained = REGISTRY["sasrec"](n_items, config).to(where)
        report = trained.fit_sequences(seqs)
        sync(where)
        figures[f"{where} s/epoch"] = report.seconds / len(report.curve)
    print(f"sasrec on {device}, {n_items} items, L={length}: " + ", ".join(f"{k} {v:,.2f}" for k, v in figures.items()))
    return figures


def main(device: str = "cuda", epochs: int = 20) -> None:
    if device == "cuda":
        assert torch.cuda.is_available(), "no GPU visible to torch (use --device cpu for the CPU-only checks)"
        print(f"{torch.cuda.get_device_name()} torch {torch.__version__}")
    check_sparse_path(device)
    check_sequence_path(device)
    world = SyntheticWorld(n_users=5000, n_items=3000, seed=5)
    users, items, _ = world.sample(200_000, seed=1)
    X = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=(world.n_users, world.n_items))
    X.data[:] = 1.0

    timings = {}
    devices = list(dict.fromkeys([device, "cpu"]))
    for where in devices:
        started = time.perf_counter()
        model, report = train_model("multvae", X, device=where, epochs=epochs, seed=0)
        sync(where)
        timings[where] = time.perf_counter() - started
        print(f"train {epochs} epochs on {where}: {timings[where]:.1f}s (final loss {report.curve[-1]['loss']:.1f})")
        if where == device:
            with tempfile.TemporaryDirectory() as tmp:
                path = checkpoint.save(model, Path(tmp), item_ids=world.item_ids(), name="multvae")
                on_device = checkpoint.load(path, device)
                on_cpu = checkpoint.load(path, "cpu")
    print(f"training speed-up {device} vs cpu: {timings['cpu'] / timings[device]:.1f}x")

    state = UserState(
        max_users=world.n_users, recent_items=100, event_weights=DEFAULT_EVENT_WEIGHTS, decay_half_life_s=0
    )
    state.apply((event, 0) for event in world.events(100_000, seed=2, start_ms=0))
    user_ids = [world.user_id(u) for u in range(world.n_users) if world.user_id(u) in state]
    served = {
        "device": Inference(on_device, state.items, torch.device(device), top_k=20),
        "cpu": Inference(on_cpu, state.items, torch.device("cpu"), top_k=20),
    }
    lists_by_device = {}
    for where, inference in served.items():
        inference.recommend(state.batch(user_ids[:256]))  # warm-up
        started = time.perf_counter()
        ranked = [inference.recommend(state.batch(user_ids[lo : lo + 256])) for lo in range(0, len(user_ids), 256)]
        sync(inference.device.type)
        elapsed = time.perf_counter() - started
        lists = [items for r in ranked for items in r.item_ids]
        hits = np.mean(
            [
                len(set(items) & set(world.true_top(int(u[1:]), 50))) / 20
                for u, items in zip(user_ids, lists, strict=True)
            ]
        )
        print(
            f"serve on {inference.device} (sparse path): {len(user_ids) / elapsed:,.0f} users/s in batches of 256; "
            f"{hits:.0%} of items in the user's true top 50"
        )
        lists_by_device[where] = lists
        if where == "device":
            batch = state.batch(user_ids[:256])
            for b in range(256):
                seen = {state.items.ids[c] for c in batch.item_codes[b] if c >= 0}
                assert not seen & set(lists[b]), "a seen item was recommended"
    agree = np.mean([a == b for a, b in zip(lists_by_device["device"], lists_by_device["cpu"], strict=True)])
    print(f"{device} and cpu serve identical top-20 lists for {agree:.1%} of users")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--epochs", type=int, default=20, help="training epochs (fewer for a quick CPU check)")
    args = parser.parse_args()
    main(args.device, args.epochs)
