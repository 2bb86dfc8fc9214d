"""Only better models go live: gated promotion and rollback on a real broker with real models."""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

from models import checkpoint
from stream_worker.cli.app import app
from stream_worker.codec import MODEL_UPDATE, make_codec
from stream_worker.devtools.replay import publish_events
from stream_worker.devtools.synthetic import SyntheticWorld
from stream_worker.kafka.topics import ensure_topics
from stream_worker.trainer.service import Trainer
from tests.integration.kafka_helpers import drained, read_topic, running_worker, wait_until

pytestmark = pytest.mark.integration

WORLD = SyntheticWorld(n_users=60, n_items=150, seed=3)


@pytest.fixture
def settings(make_settings, tmp_path):
    settings = make_settings(
        top_k=10, model_dir=tmp_path / "models", trainer_min_events=100, trainer_epochs=15, max_batch_size=32
    )
    ensure_topics(settings, partitions=3)
    return settings


def publish(settings, n: int, seed: int, seconds_ago: float) -> None:
    publish_events(settings, WORLD.events(n, seed=seed, start_ms=int((time.time() - seconds_ago) * 1000)))


def announcements(settings) -> list[dict]:
    codec = make_codec(MODEL_UPDATE, settings.model_updates_topic, settings.schema_registry_url)
    return [codec.decode(r.value) for r in read_topic(settings, settings.model_updates_topic)]


def test_a_worse_candidate_is_rejected_and_never_reaches_a_worker(settings):
    publish(settings, 3000, seed=1, seconds_ago=120)
    assert Trainer(settings).round() is not None
    assert checkpoint.serving_version(settings.model_dir) == 1

    with running_worker(settings) as worker:
        publish(settings, 3000, seed=2, seconds_ago=60)
        # One epoch from scratch: deliberately worse than the serving 15-epoch model.
        worse = Trainer(
            settings.model_copy(update={"trainer_epochs": 1, "trainer_warm_start": False, "trainer_keep_versions": 2})
        )
        candidate = checkpoint.read_metadata(worse.round())
        wait_until(lambda: drained(settings), 60, "the worker to drain the events")

        assert candidate.version == 2
        assert candidate.promotion["promoted"] is False
        assert candidate.promotion["candidate"] < candidate.promotion["serving"] * (1 - settings.promotion_margin)
        assert "below serving" in candidate.promotion["reason"]
        assert candidate.promotion["eval_users"] >= 10
        assert worse.metrics.rounds.labels("rejected")._value.get() == 1
        assert worse.metrics.rounds.labels("promoted")._value.get() == 0
        assert checkpoint.serving_version(settings.model_dir) == 1
        assert checkpoint.load(settings.model_dir).metadata.version == 1  # what a starting worker loads
        assert worker.inference.model_version == 1
        assert worker.metrics.model_swaps._value.get() == 0

        # Two more rejected rounds: with 2 versions kept, v2 is deleted and v1, which serves, stays.
        assert [checkpoint.read_metadata(worse.round()).version for _ in range(2)] == [3, 4]
        assert checkpoint.versions(settings.model_dir) == [1, 3, 4]
        assert checkpoint.load(settings.model_dir).metadata.version == 1
    assert [(a["version"], a["action"]) for a in announcements(settings)] == [(1, "promote")]


def test_rollback_returns_running_workers_to_the_previous_version_within_seconds(settings):
    publish(settings, 3000, seed=1, seconds_ago=120)
    assert Trainer(settings).round() is not None
    with running_worker(settings) as worker:
        publish(settings, 3000, seed=2, seconds_ago=60)
        # Margin 100%: any candidate is promoted, so that there is something to roll back from.
        assert Trainer(settings.model_copy(update={"promotion_margin": 1.0})).round() is not None
        wait_until(lambda: worker.inference.model_version == 2, 60, "the worker to swap in v2")

        result = CliRunner().invoke(app, ["models", "rollback"], env=settings.to_env())
        assert result.exit_code == 0, result.output
        started = time.monotonic()
        wait_until(lambda: worker.inference.model_version == 1, 10, "the worker to roll back to v1")
        print(f"rolled back in {time.monotonic() - started:.2f}s")
        assert worker.metrics.model_swaps._value.get() == 2

    assert checkpoint.serving_version(settings.model_dir) == 1
    assert [(a["version"], a["action"]) for a in announcements(settings)] == [
        (1, "promote"),
        (2, "promote"),
        (1, "rollback"),
    ]
    listing = CliRunner().invoke(app, ["models", "list"], env=settings.to_env())
    assert listing.exit_code == 0 and "SERVING" in listing.output, listing.output
