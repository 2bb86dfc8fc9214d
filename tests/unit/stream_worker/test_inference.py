import numpy as np
import torch

from models.base import Recommender
from models.checkpoint import CheckpointMetadata, LoadedModel
from stream_worker.codec import UserEvent
from stream_worker.config import DEFAULT_EVENT_WEIGHTS
from stream_worker.inference import Inference
from stream_worker.state import UserState


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
