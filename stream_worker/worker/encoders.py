"""Recommendation values for a whole batch at once, from `Ranked`'s arrays.

The bytes are exactly what `SingleObjectCodec(RECOMMENDATION).encode` writes for each record
(single-object header + Avro binary body), which a unit test checks by decoding both. With a
Schema Registry the codec's own serializer is used record by record instead.

Why by hand: fastavro's writer walks the schema and a dict per record and per item (about
20 dicts per list); at hundreds of lists per batch that costs more than the model. The
Recommendation schema is fixed and its Avro binary form is simple (strings and longs are
zig-zag varints, a float is 4 little-endian bytes, an array is a count, the items, a 0), so
the item ids are encoded once per model vocabulary and each batch's items are copied into
place with NumPy; only the few per-record fields are written in a short Python loop.
"""

from __future__ import annotations

import numpy as np

from stream_worker.codec import RECOMMENDATION, SINGLE_OBJECT_MAGIC, Codec, SingleObjectCodec
from stream_worker.codec import avro_long as _long
from stream_worker.codec import avro_string as _string
from stream_worker.worker.inference import Ranked
from stream_worker.worker.state import StateBatch


class RecommendationEncoder:
    def __init__(self, codec: Codec) -> None:
        self._codec = codec
        reference = SingleObjectCodec(RECOMMENDATION)
        self._fast = isinstance(codec, SingleObjectCodec) and codec.fingerprint == reference.fingerprint
        self._header = SINGLE_OBJECT_MAGIC + reference.fingerprint.to_bytes(8, "little")
        self._vocabulary: np.ndarray | None = None

    def encode(
        self, batch: StateBatch, ranked: Ranked, *, model_name: str, model_version: int, generated_at: int
    ) -> list[bytes]:
        """One value per user of `batch`, in order: their list from `ranked` and the batch's fields."""
        if not self._fast:
            return [
                self._codec.encode(record(batch, ranked, b, model_name, model_version, generated_at))
                for b in range(len(batch.user_ids))
            ]
        blocks = self._item_blocks(ranked)  # one bytes per user: the array's items, already encoded
        middle = _string(model_name) + _long(model_version) + _long(generated_at)
        header = self._header
        values = []
        for user_id, count, items, last_ms, last_id, seen in zip(
            batch.user_ids,
            ranked.counts.tolist(),
            blocks,
            batch.last_event_ms.tolist(),
            batch.last_event_ids,
            batch.events_seen.tolist(),
            strict=True,
        ):
            array = _long(count) + items + b"\x00" if count else b"\x00"
            values.append(
                b"".join((header, _string(user_id), array, middle, _long(last_ms), _string(last_id), _long(seen)))
            )
        return values

    def _item_blocks(self, ranked: Ranked) -> list[bytes]:
        """Per user, the concatenated (item id, score) pairs of their valid entries."""
        if ranked.vocabulary is not self._vocabulary:  # a new model: encode its item ids once
            encoded = [_string(item_id) for item_id in ranked.vocabulary.tolist()]
            self._blob = np.frombuffer(b"".join(encoded), np.uint8)
            self._id_len = np.array([len(e) for e in encoded], np.int64)  # (n_items,)
            self._id_off = np.concatenate([[0], np.cumsum(self._id_len)[:-1]])  # (n_items,)
            self._vocabulary = ranked.vocabulary
        n_users, k = ranked.index.shape
        valid = np.arange(k)[None, :] < ranked.counts[:, None]  # (B, K)
        index = ranked.index[valid]  # (n,) row-major: user by user, best first
        id_len = self._id_len[index]  # (n,)
        seg_len = id_len + 4  # id bytes, then the float score
        seg_end = np.cumsum(seg_len)
        seg_start = seg_end - seg_len
        out = np.empty(int(seg_end[-1]) if len(index) else 0, np.uint8)
        # Item ids: byte j of pair s comes from the blob at the id's offset + j.
        pair = np.repeat(np.arange(len(index)), id_len)  # (id bytes,)
        within = np.arange(len(pair)) - np.repeat(np.cumsum(id_len) - id_len, id_len)
        out[seg_start[pair] + within] = self._blob[self._id_off[index][pair] + within]
        # Scores: 4 little-endian float32 bytes after each id.
        score_bytes = ranked.top_scores[valid].astype("<f4").view(np.uint8).reshape(-1, 4)
        out[(seg_start + id_len)[:, None] + np.arange(4)] = score_bytes
        data = out.tobytes()
        row_end = np.cumsum(np.bincount(np.nonzero(valid)[0], weights=seg_len, minlength=n_users)).astype(np.int64)
        bounds = np.concatenate([[0], row_end]).tolist()
        return [data[bounds[b] : bounds[b + 1]] for b in range(n_users)]


def record(batch: StateBatch, ranked: Ranked, b: int, model_name: str, model_version: int, generated_at: int) -> dict:
    """User b's Recommendation record as a dict (what the codec encodes)."""
    return {
        "user_id": batch.user_ids[b],
        "items": [{"item_id": item, "score": score} for item, score in ranked.row(b)],
        "model_name": model_name,
        "model_version": model_version,
        "generated_at": generated_at,
        "last_event_time": int(batch.last_event_ms[b]),
        "last_event_id": batch.last_event_ids[b],
        "events_reflected": int(batch.events_seen[b]),
    }
