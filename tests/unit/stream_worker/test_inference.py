import numpy as np
import torch

from models.base import Recommender
from models.checkpoint import CheckpointMetadata, LoadedModel
from stream_worker.codec import UserEvent
from stream_worker.config import DEFAULT_EVENT_WEIGHTS
from stream_worker.worker.inference import Inference, Ranked
from stream_worker.worker.state import UserState


class FixedScores(Recommender):
    """A test double: scores are a fixed vector; remembers the input it was given."""

    kind = "fixed-test-double"
    Config = dict

    def __init__(self, scores: list[float]) -> None:
        super().__init__(len(scores), {})
        self.scores = torch.tensor(scores)
        self.seen_input: torch.Tensor | None = None

    def fit(self, X, *, seed=0, on_epoch=None):
        raise NotImplementedError

    def score(self, X: torch.Tensor) -> torch.Tensor:
        self.seen_input = X.clone()
        return self.scores.expand(X.shape[0], -1).clone()

    def tensors(self):
        return {"scores": self.scores}

    def load_tensors(self, tensors):
        self.scores = tensors["scores"]

    def hyperparameters(self):
        return {}


def loaded(item_ids: list[str], scores: list[float], version: int = 1) -> LoadedModel:
    meta = CheckpointMetadata(kind="fixed-test-double", version=version, item_ids=item_ids, hyperparameters={})
    return LoadedModel(model=FixedScores(scores), metadata=meta, path=None)  # type: ignore[arg-type]


def state_with(events: list[tuple[str, str, str]]) -> UserState:
    s = UserState(max_users=10, recent_items=8, event_weights=DEFAULT_EVENT_WEIGHTS, decay_half_life_s=0)
    s.apply((UserEvent(f"e{n}", u, i, kind, None, n), 0, -1) for n, (u, i, kind) in enumerate(events))
    return s


def test_seen_items_are_masked_and_the_rest_ranked_by_score():
    s = state_with([("a", "i1", "VIEW"), ("a", "i3", "VIEW"), ("b", "i0", "VIEW")])
    inference = Inference(loaded(["i0", "i1", "i2", "i3"], [0.4, 0.9, 0.1, 0.8]), s.items, torch.device("cpu"), 3)
    ranked = inference.recommend(s.batch(["a", "b"]))
    assert ranked.item_ids == [["i0", "i2"], ["i1", "i3", "i2"]]  # a has seen 2 of 4: only 2 left
    assert ranked.scores[1] == sorted(ranked.scores[1], reverse=True)


def test_the_model_input_sums_repeated_items_and_ignores_unknown_ones():
    s = state_with([("a", "i1", "VIEW"), ("a", "unknown", "PURCHASE"), ("a", "i1", "CLICK")])
    model = loaded(["i0", "i1"], [0.5, 0.1])
    inference = Inference(model, s.items, torch.device("cpu"), 5)
    ranked = inference.recommend(s.batch(["a"]))
    assert model.model.seen_input.tolist() == [[0.0, 3.0]]  # VIEW 1 + CLICK 2; the unknown item is absent
    assert ranked.item_ids == [["i0"]]


def test_a_swapped_model_brings_its_own_vocabulary():
    s = state_with([("a", "x", "VIEW")])
    inference = Inference(loaded(["y", "z"], [1.0, 2.0]), s.items, torch.device("cpu"), 5)
    assert inference.recommend(s.batch(["a"])).item_ids == [["z", "y"]]
    inference.swap(loaded(["x", "y", "w"], [3.0, 1.0, 2.0], version=2))
    s.apply([(UserEvent("e9", "a", "w", "VIEW", None, 9), 0, -1)])
    assert inference.recommend(s.batch(["a"])).item_ids == [["y"]]  # x and w are now known, and seen
    assert inference.model_version == 2


def test_lookup_grows_with_new_items_without_rebuilding():
    s = state_with([("a", "i0", "VIEW")])
    inference = Inference(loaded(["i0", "i1"], [1.0, 2.0]), s.items, torch.device("cpu"), 1)
    inference.recommend(s.batch(["a"]))
    s.apply([(UserEvent("e1", "b", "i1", "VIEW", None, 1), 0, -1)])
    assert inference.recommend(s.batch(["b"])).item_ids == [["i0"]]
    assert np.array_equal(inference._lookup, [0, 1, -1])


def test_ranked_holds_arrays_with_per_row_counts_and_padding():
    s = state_with([("a", "i1", "VIEW"), ("a", "i3", "VIEW"), ("b", "i0", "VIEW")])
    inference = Inference(loaded(["i0", "i1", "i2", "i3"], [0.4, 0.9, 0.1, 0.8]), s.items, torch.device("cpu"), 3)
    ranked = inference.recommend(s.batch(["a", "b"]))
    assert ranked.counts.tolist() == [2, 3]
    assert ranked.index.tolist() == [[0, 2, -1], [1, 3, 2]]
    assert ranked.top_ids.tolist() == [["i0", "i2", ""], ["i1", "i3", "i2"]]
    assert ranked.top_scores.dtype == np.float32 and ranked.top_scores[0, 2] == -np.inf
    assert ranked.row(0) == [("i0", np.float32(0.4)), ("i2", np.float32(0.1))]
    assert ranked.vocabulary is inference.vocabulary


def test_sparse_and_dense_scoring_serve_the_same_lists_with_a_real_mult_vae():
    from models.multvae import MultVAE

    torch.manual_seed(0)
    n_items = 300
    meta = CheckpointMetadata(kind="multvae", version=1, item_ids=[f"i{i}" for i in range(n_items)], hyperparameters={})
    model = LoadedModel(model=MultVAE(n_items), metadata=meta, path=None)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    s = UserState(max_users=100, recent_items=30, event_weights=DEFAULT_EVENT_WEIGHTS, decay_half_life_s=60)
    kinds = ["VIEW", "CLICK", "PURCHASE"]
    s.apply(
        (UserEvent(f"e{n}", f"u{rng.integers(40)}", f"i{rng.zipf(1.5) % 320}", kinds[n % 3], None, n * 1000), 0, -1)
        for n in range(2000)  # repeats, decayed weights, and items 300..319 the model does not know
    )
    batch = s.batch([f"u{u}" for u in range(40)])
    sparse = Inference(model, s.items, torch.device("cpu"), 20).recommend(batch)
    dense = Inference(model, s.items, torch.device("cpu"), 20, sparse=False).recommend(batch)
    assert np.array_equal(sparse.index, dense.index)
    np.testing.assert_allclose(sparse.top_scores, dense.top_scores, rtol=1e-5, atol=1e-5)
    seen = {b: set(batch.item_codes[b][batch.item_codes[b] >= 0].tolist()) for b in range(40)}
    assert all(not {s.items.code_of.get(i, -1) for i in sparse.top_ids[b]} & seen[b] for b in range(40))


def test_ranked_from_lists_pads_short_rows():
    ranked = Ranked.from_lists([["b", "a"], ["c"], []], [[2.0, 1.0], [0.5], []])
    assert ranked.counts.tolist() == [2, 1, 0]
    assert ranked.item_ids == [["b", "a"], ["c"], []] and ranked.scores == [[2.0, 1.0], [0.5], []]
    assert ranked.top_ids.tolist() == [["b", "a"], ["c", ""], ["", ""]]


class OrderedScores(FixedScores):
    """A sequence-model test double: remembers the ordered codes and times it was given."""

    reads_order = True

    def score_sequences(self, codes: torch.Tensor, times_s: torch.Tensor | None = None) -> torch.Tensor:
        self.seen_codes, self.seen_times = codes.clone(), times_s
        return self.scores.expand(codes.shape[0], -1).clone()


def test_a_sequence_model_gets_the_users_items_in_order_unknown_ones_closed_up():
    s = state_with([("a", "i2", "VIEW"), ("a", "unknown", "VIEW"), ("a", "i0", "CLICK"), ("b", "i1", "VIEW")])
    model = OrderedScores([0.1, 0.2, 0.3, 0.4])
    meta = CheckpointMetadata(
        kind="ordered-test-double", version=1, item_ids=["i0", "i1", "i2", "i3"], hyperparameters={}
    )
    inference = Inference(LoadedModel(model=model, metadata=meta, path=None), s.items, torch.device("cpu"), 2)  # type: ignore[arg-type]
    ranked = inference.recommend(s.batch(["a", "b"]))
    # (B, L = 8): oldest first, left-padded; the unknown item's hole is closed up, so i0 is newest.
    assert model.seen_codes[0].tolist() == [-1] * 6 + [2, 0] and model.seen_codes[1].tolist() == [-1] * 7 + [1]
    assert model.seen_times[0, -1].item() == 0 and ranked.item_ids == [["i3", "i1"], ["i3", "i2"]]


def test_a_real_sasrec_serves_finite_lists_for_short_left_padded_histories():
    from models.sasrec import SASRec

    s = state_with([("a", "i1", "VIEW"), ("b", "i0", "VIEW"), ("b", "i2", "VIEW")])
    model = SASRec(4, SASRec.Config(d_model=16, n_blocks=1, max_len=8))
    meta = CheckpointMetadata(kind="sasrec", version=1, item_ids=["i0", "i1", "i2", "i3"], hyperparameters={})
    inference = Inference(LoadedModel(model=model, metadata=meta, path=None), s.items, torch.device("cpu"), 4)  # type: ignore[arg-type]
    ranked = inference.recommend(s.batch(["a", "b"]))
    assert np.isfinite(ranked.top_scores[ranked.index >= 0]).all()
    assert sorted(ranked.item_ids[0]) == ["i0", "i2", "i3"] and sorted(ranked.item_ids[1]) == ["i1", "i3"]
