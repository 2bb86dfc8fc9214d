"""Reading the recommendations topic back, for people (`streamrec tail`) and the demo."""

from __future__ import annotations

import csv
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

from stream_worker.codec import RECOMMENDATION, DecodeError, make_codec
from stream_worker.config import Settings
from stream_worker.kafka.clients import new_reader


def follow(
    settings: Settings,
    *,
    from_beginning: bool = False,
    idle_timeout_s: float | None = None,
    stop: threading.Event | None = None,
    limit: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Decoded recommendation records, as they arrive on every partition (no group, no commits)."""
    topic = settings.recommendations_topic
    codec = make_codec(RECOMMENDATION, topic, settings.schema_registry_url)
    consumer = new_reader(settings, f"streamrec-tail-{uuid.uuid4()}")
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in partitions])
        seen, last_record = 0, time.monotonic()
        while not (stop and stop.is_set()) and (limit is None or seen < limit):
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                if idle_timeout_s is not None and time.monotonic() - last_record > idle_timeout_s:
                    return
                continue
            last_record = time.monotonic()
            try:
                yield codec.decode(msg.value() or b"")
            except DecodeError as exc:
                yield {"user_id": (msg.key() or b"").decode(errors="replace"), "error": str(exc)}
            seen += 1
    finally:
        consumer.close()


HEADER = f"{'user':>12}  {'model':<12} {'events':>6} {'latency':>8}  top items (score)"
LEGEND = (
    "events: interactions the list reflects; latency: the user's newest event -> list published; "
    "score: the model's, higher = more recommended"
)


def format_recommendation(record: dict[str, Any], n_items: int = 5, titles: dict[str, str] | None = None) -> str:
    """One line per list, under `HEADER`; item ids become titles where `titles` knows them."""
    if "error" in record:
        return f"{record['user_id']:>12}  undecodable: {record['error']}"
    latency_ms = record["generated_at"] - record["last_event_time"]
    names = titles or {}
    shown = ", ".join(
        f"{names.get(item['item_id'], item['item_id'])} ({item['score']:.2f})" for item in record["items"][:n_items]
    )
    more = len(record["items"]) - n_items
    model = f"{record['model_name']} v{record['model_version']}"
    return (
        f"{record['user_id']:>12}  {model:<12} {record['events_reflected']:>6} {latency_ms:>5} ms  "
        f"{shown}{f' +{more} more' if more > 0 else ''}"
    )


class TitlesFileError(ValueError):
    """A titles file that cannot be read; the message names the file and line."""

    exit_code = 2  # the command line exits with it: a usage error


def load_titles(path: Path) -> dict[str, str]:
    """Item id -> title from MovieLens `u.item` (ML-100K: id|title|..., Latin-1), `movies.dat`
    (ML-1M/10M: id::title::genres) or `movies.csv` (ML-20M+: movieId,title,genres with a header)."""
    raw = Path(path).read_bytes()
    text = raw.decode("utf-8") if _is_utf8(raw) else raw.decode("latin-1")
    lines = text.splitlines()
    titles: dict[str, str] = {}
    if lines and lines[0].lower().startswith("movieid,"):
        rows: Iterator[list[str]] = csv.reader(lines[1:])
        first_line = 2
    else:
        sep = "::" if "::" in (lines[0] if lines else "") else "|"
        rows = (line.split(sep) for line in lines)
        first_line = 1
    for number, row in enumerate(rows, start=first_line):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2 or not row[0].strip():
            raise TitlesFileError(
                f"{path}:{number}: expected 'id|title|...' (u.item), 'id::title::genres' (movies.dat) "
                "or 'movieId,title,genres' (movies.csv)"
            )
        titles[row[0].strip()] = row[1].strip()
    if not titles:
        raise TitlesFileError(f"{path} holds no titles; give MovieLens u.item, movies.dat or movies.csv")
    return titles


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
