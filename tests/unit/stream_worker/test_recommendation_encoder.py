import numpy as np
import torch

from stream_worker.codec import RECOMMENDATION, SingleObjectCodec
from stream_worker.worker.encoders import RecommendationEncoder, record
from stream_worker.worker.inference import Inference

from .test_inference import loaded, state_with

# Ids that stress the encoding: multi-byte UTF-8, a length over 63 bytes (two-byte varint), empty-ish.
ITEM_IDS = ["i0", "livre-été-ü", "x" * 70, "🎬", "i4", "i5"]


def scored_batch(top_k: int = 4):
    # u1 has seen 4 of the 6 items: fewer than top_k left, so its row is padded.
    s = state_with(
        [("u0", "i0", "VIEW"), ("u1", "i4", "CLICK"), ("u1", "🎬", "VIEW"), ("u1", "i5", "VIEW"), ("u1", "i0", "VIEW")]
        + [("ünïcode-user", "x" * 70, "PURCHASE")] * 3
    )
    # Negative, tiny and large scores; the model is a fixed vector.
    model = loaded(ITEM_IDS, [-1.5, 3.0e-8, 2.5, 1e30, -2.0, 0.25], version=300)
    inference = Inference(model, s.items, torch.device("cpu"), top_k)
    batch = s.batch(["u0", "u1", "ünïcode-user"])
    batch.last_event_ms[0] = 1_764_000_000_123  # a real epoch-millis value (multi-byte varint)
    return batch, inference.recommend(batch)


def test_batch_encoding_is_byte_identical_to_the_codec_and_decodes_to_the_same_records():
    codec = SingleObjectCodec(RECOMMENDATION)
    batch, ranked = scored_batch()
    assert ranked.counts.tolist() == [4, 2, 4]
    values = RecommendationEncoder(codec).encode(
        batch, ranked, model_name="multvae", model_version=300, generated_at=1_764_000_000_999
    )
    expected = [record(batch, ranked, b, "multvae", 300, 1_764_000_000_999) for b in range(len(batch.user_ids))]
    assert values == [codec.encode(r) for r in expected]
    decoded = [codec.decode(v) for v in values]
    assert [d["items"] for d in decoded] == [
        [{"item_id": i, "score": float(np.float32(sc))} for i, sc in ranked.row(b)] for b in range(3)
    ]
    assert [d["user_id"] for d in decoded] == ["u0", "u1", "ünïcode-user"]
    assert decoded[1]["items"][0]["item_id"] == "x" * 70 and decoded[0]["last_event_time"] == 1_764_000_000_123


def test_a_second_model_vocabulary_is_encoded_afresh():
    codec = SingleObjectCodec(RECOMMENDATION)
    encoder = RecommendationEncoder(codec)
    batch, ranked = scored_batch()
    encoder.encode(batch, ranked, model_name="m", model_version=1, generated_at=0)
    s = state_with([("u0", "a", "VIEW")])
    other = Inference(loaded(["a", "bb", "ccc"], [1.0, 2.0, 3.0]), s.items, torch.device("cpu"), 2)
    batch2 = s.batch(["u0"])
    ranked2 = other.recommend(batch2)
    (value,) = encoder.encode(batch2, ranked2, model_name="m", model_version=2, generated_at=0)
    assert codec.decode(value)["items"] == [{"item_id": "ccc", "score": 3.0}, {"item_id": "bb", "score": 2.0}]


def test_a_user_with_nothing_left_to_recommend_gets_an_empty_list():
    codec = SingleObjectCodec(RECOMMENDATION)
    s = state_with([("u0", "a", "VIEW"), ("u0", "b", "VIEW")])
    inference = Inference(loaded(["a", "b"], [1.0, 2.0]), s.items, torch.device("cpu"), 2)
    batch = s.batch(["u0"])
    ranked = inference.recommend(batch)
    (value,) = RecommendationEncoder(codec).encode(batch, ranked, model_name="m", model_version=1, generated_at=5)
    assert value == codec.encode(record(batch, ranked, 0, "m", 1, 5))
    assert codec.decode(value)["items"] == []
