"""The trainer's pure parts: window columns, the temporal split, the comparison, the decision."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from models.baselines import Popularity
from models.presets import SERVED
from stream_worker.config import Settings
from stream_worker.trainer.compare import decide, ranked_quality
from stream_worker.trainer.fit import ANNEAL_EPOCHS, served_overrides
from stream_worker.trainer.service import Trainer, next_round_in
from stream_worker.trainer.split import temporal_split
from stream_worker.trainer.window import WindowBuilder


def window_of(rows: list[tuple[str, str, int]]):
    builder = WindowBuilder()
    for lo in range(0, len(rows), 2):  # chunks of two events
        chunk = rows[lo : lo + 2]
        builder.add_chunk(
            [u for u, _, _ in chunk], [i for _, i, _ in chunk], [1.0] * len(chunk), [t for *_, t in chunk]
        )
    return builder.build()


def test_window_columns_intern_ids_across_chunks_as_codes_in_sorted_id_order():
    w = window_of([("b", "y", 1), ("a", "x", 2), ("b", "x", 3), ("c", "z", 4), ("a", "y", 5)])
    assert w.user_ids == ["a", "b", "c"] and w.item_ids == ["x", "y", "z"]
    assert w.users.tolist() == [1, 0, 1, 2, 0] and w.items.tolist() == [1, 0, 0, 2, 1]
    assert w.users.dtype == np.int32 and w.items.dtype == np.int32 and w.times_ms.dtype == np.int64
    assert (len(w), w.start_ms, w.end_ms) == (5, 1, 5)


def test_the_same_events_read_in_another_partition_order_give_the_same_window_rows():
    # Users a and c on one partition, b on another: two reads interleave them differently.
    first = window_of([("a", "x", 1), ("b", "y", 2), ("a", "z", 3), ("c", "y", 4), ("b", "x", 5)])
    second = window_of([("b", "y", 2), ("b", "x", 5), ("a", "x", 1), ("a", "z", 3), ("c", "y", 4)])
    assert (first.user_ids, first.item_ids) == (second.user_ids, second.item_ids)
    split = {
        name: temporal_split(w, holdout_fraction=0.2, not_before_ms=0, recent_items=10, rate_per_ms=0.001)
        for name, w in (("first", first), ("second", second))
    }
    assert (split["first"].train != split["second"].train).nnz == 0
    assert (split["first"].eval_targets != split["second"].eval_targets).nnz == 0


def test_the_holdout_is_the_freshest_slice_and_never_what_the_serving_model_saw():
    # Users a and b: three events before t=10, then new items (and one repeat) after it.
    rows = [("a", "x", 1), ("a", "y", 2), ("b", "x", 3), ("b", "z", 4), ("c", "z", 5), ("a", "w", 6)]
    rows += [("a", "v", 20), ("a", "x", 21), ("b", "y", 22), ("d", "x", 23)]
    w = window_of(rows)
    split = temporal_split(w, holdout_fraction=0.4, not_before_ms=0, recent_items=10, rate_per_ms=0.0)
    assert split.cutoff_ms == 20  # 40% of 10 events after it
    assert split.train_events == 6 and split.heldout_events == 4
    assert split.train.shape[0] == 3  # a, b, c (d has nothing before the cut-off)
    assert split.train.sum() == 6
    # a: target v only (x is in a's state, so the worker could never recommend it); b: target y; d: no input.
    items = {i: n for n, i in enumerate(w.item_ids)}
    targets = split.eval_targets.toarray()
    assert targets.shape[0] == 2
    assert targets[0].nonzero()[0].tolist() == [items["v"]] and targets[1].nonzero()[0].tolist() == [items["y"]]
    np.testing.assert_array_equal(split.eval_inputs.toarray()[0] > 0, np.isin(np.arange(5), [items[i] for i in "xyw"]))

    later = temporal_split(w, holdout_fraction=0.4, not_before_ms=22, recent_items=10, rate_per_ms=0.0)
    assert later.cutoff_ms == 22 and later.heldout_events == 2  # the serving model trained before 22


def test_a_target_the_model_does_not_know_is_a_miss_not_dropped():
    pop = Popularity(3)
    pop.fit(sp.csr_matrix(np.array([[1, 1, 0], [1, 1, 0], [1, 0, 0]], np.float32)))
    inputs = sp.csr_matrix(np.array([[1, 0, 0, 0]], np.float32))  # window items a b c d; the model knows a b c
    found = sp.csr_matrix(np.array([[0, 1, 0, 0]], np.float32))
    unknown = sp.csr_matrix(np.array([[0, 0, 0, 1]], np.float32))
    both = sp.csr_matrix(np.array([[0, 1, 0, 1]], np.float32))
    ids, model_ids = ["a", "b", "c", "d"], ["a", "b", "c"]
    assert ranked_quality(pop, model_ids, inputs, found, ids, k=1)["recall@1"] == 1.0
    assert ranked_quality(pop, model_ids, inputs, unknown, ids, k=1)["recall@1"] == 0.0
    assert ranked_quality(pop, model_ids, inputs, both, ids, k=2)["recall@2"] == pytest.approx(0.5)


def test_promotion_needs_the_candidate_within_the_margin_of_serving():
    assert decide(0.30, None, metric="ndcg@20", margin=0.02, serving_version=None)[0]
    assert decide(0.295, 0.30, metric="ndcg@20", margin=0.02, serving_version=3)[0]
    promoted, reason = decide(0.29, 0.30, metric="ndcg@20", margin=0.02, serving_version=3)
    assert not promoted and "0.2900" in reason and "v3" in reason and "below" in reason


def test_served_mult_vae_anneals_over_the_evaluated_number_of_epochs_at_any_size():
    assert served_overrides("multvae", 943, 100) == {"batch_size": 100, "total_anneal_steps": ANNEAL_EPOCHS * 10}
    assert served_overrides("multvae", 138_493, 100)["total_anneal_steps"] == ANNEAL_EPOCHS * 1385
    assert served_overrides("ease", 1000, 100) == SERVED["ease"]  # one source: models/presets.py
    assert "epochs" not in served_overrides("cfgan", 1000, 100)
    # A sequence model reads what the worker holds: its context is the state's recent items.
    assert served_overrides("sasrec", 1000, 50)["max_len"] == 50 and "epochs" not in served_overrides("hstu", 10, 8)


def test_warm_start_carries_known_items_weights_into_a_changed_catalog():
    from models.checkpoint import CheckpointMetadata, LoadedModel
    from models.multvae import MultVAE, MultVAEConfig
    from stream_worker.trainer.fit import warm_tensors

    config = MultVAEConfig(hidden_dim=8, latent_dim=4)
    serving = MultVAE(3, config)
    meta = CheckpointMetadata(kind="multvae", version=1, item_ids=["a", "b", "c"], hyperparameters={})
    loaded = LoadedModel(model=serving, metadata=meta, path=None)
    tensors = warm_tensors(loaded, "multvae", ["c", "a", "d"])
    warm = MultVAE(3, config)
    warm.load_tensors(tensors)
    x_old = torch.tensor([[1.0, 0.0, 2.0]])  # a, b, c
    x_new = torch.tensor([[2.0, 1.0, 0.0]])  # c, a, d
    old, new = serving.score(x_old)[0], warm.score(x_new)[0]
    torch.testing.assert_close(new[:2], torch.stack([old[2], old[0]]))  # c and a score as before
    assert torch.all(tensors["p_layers.1.weight"][2] == 0)  # d starts from nothing
    assert warm_tensors(loaded, "multdae", ["a"]) is None  # another kind: from scratch


def test_without_a_set_epoch_count_it_is_chosen_by_early_stopping_on_an_earlier_slice(monkeypatch):
    from models.train import train_model as real_train_model
    from stream_worker.devtools.synthetic import SyntheticWorld
    from stream_worker.trainer.fit import choose_epochs

    world = SyntheticWorld(n_users=60, n_items=150, seed=3)
    events = list(world.events(4000, seed=1, start_ms=1_700_000_000_000))
    w = window_of([(e.user_id, e.item_id, e.event_time_ms) for e in events])
    settings = Settings(trainer_holdout_fraction=0.2)
    split = temporal_split(w, holdout_fraction=0.2, not_before_ms=0, recent_items=100, rate_per_ms=0.0)
    trained_epochs = []

    def recording_train_model(*args, **kwargs):
        model, report = real_train_model(*args, **kwargs)
        trained_epochs.append(len(report.curve))
        return model, report

    monkeypatch.setattr("stream_worker.trainer.fit.train_model", recording_train_model)
    epochs = choose_epochs(settings, w, split.cutoff_ms, w.item_ids, served_overrides("multvae", 48, 100), None)
    assert epochs is not None and epochs >= 1
    assert trained_epochs == [epochs + 10], "stops PATIENCE epochs after the best one, far below the default 200"


def test_a_deletion_request_drops_the_users_earlier_events_from_training_but_not_later_ones():
    builder = WindowBuilder()
    builder.add_chunk(["a", "b", "a"], ["x", "y", "z"], [1.0] * 3, [1, 2, 3])
    builder.forget("a")  # a tombstone for a, read after their first two events
    builder.add_chunk(["a", "b"], ["w", "x"], [1.0] * 2, [4, 5])
    w = builder.build()
    kept = [(w.user_ids[u], w.item_ids[i]) for u, i in zip(w.users.tolist(), w.items.tolist(), strict=True)]
    assert kept == [("b", "y"), ("a", "w"), ("b", "x")]


def test_a_failed_round_is_tried_again_sooner_backing_off_up_to_the_interval():
    assert next_round_in(300.0, failures=0) == 300.0
    assert [next_round_in(300.0, failures=n) for n in range(1, 7)] == [10.0, 20.0, 40.0, 80.0, 160.0, 300.0]
    assert next_round_in(5.0, failures=1) == 5.0  # never later than a round would be anyway


def test_the_trainer_loop_retries_sooner_after_failures_and_returns_to_the_interval(tmp_path):
    trainer = Trainer(Settings(model_dir=tmp_path, trainer_interval_s=300.0, trainer_metrics_port=0))
    outcomes = [RuntimeError("the broker is away"), RuntimeError("still away"), None, RuntimeError("away again")]

    def one_round() -> None:
        if error := outcomes.pop(0):
            raise error

    waits: list[float] = []

    class Stop:  # the loop's stop event: records each wait, stops after four rounds
        def is_set(self) -> bool:
            return not outcomes

        def wait(self, timeout: float) -> None:
            waits.append(timeout)

    trainer.round, trainer.stop = one_round, Stop()
    trainer.run()
    assert waits == [10.0, 20.0, 300.0, 10.0]  # a success resets the back-off
    assert trainer.metrics.rounds.labels("failed")._value.get() == 3


def test_a_sequence_model_trains_from_the_window_and_the_gate_scores_it_on_the_sequence_view():
    """A world where only order carries signal: each user walks the catalog in steps of +1 from a
    random start, so the next item follows from the last one alone and popularity is flat. SASRec
    trained by the trainer's own steps (split -> training_input -> train -> quality) learns it."""
    from models.train import train_model
    from stream_worker.trainer.fit import quality, training_input

    rng = np.random.default_rng(0)
    n_items, rows = 20, []
    for u in range(120):
        start = int(rng.integers(0, n_items))
        # Users walk side by side in time: the held-out freshest events are everyone's last steps.
        rows += [(f"u{u:03d}", f"i{(start + step) % n_items:02d}", 1000 * step + u) for step in range(8)]
    rows.sort(key=lambda r: r[2])
    w = window_of(rows)
    split = temporal_split(w, holdout_fraction=0.1, not_before_ms=0, recent_items=6, rate_per_ms=0.0)
    items = w.item_ids
    X = training_input("sasrec", split, items, items)
    assert len(X) == split.train.shape[0] and all((np.diff(c) % n_items == 1).all() for c in X.codes), (
        "training sequences are each user's events in order"
    )
    overrides = served_overrides("sasrec", len(X), 6) | {"d_model": 32, "dropout": 0.0, "batch_size": 32}
    model, _ = train_model("sasrec", X, device="cpu", epochs=40, overrides=overrides, seed=0)
    pop, _ = train_model("pop", split.train, device="cpu")
    learnt, flat = quality(model, items, split, w, 1), quality(pop, items, split, w, 1)
    assert learnt["ndcg@1"] > 0.8 and learnt["ndcg@1"] > 3 * flat["ndcg@1"], (learnt, flat)
