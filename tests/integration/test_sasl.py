"""An authenticated cluster for real: the local broker with a SASL_PLAINTEXT listener and
SCRAM-SHA-512 users, a real worker (credentials from a mounted-Secret-style options file) and a
real trainer round (credentials from STREAMREC_KAFKA_OPTIONS, checkpoints through Kafka), each
allowed only what least-privilege ACLs grant; a wrong password fails in one sentence. Passwords
are generated for each run and never written to the repo."""

from __future__ import annotations

import json
import secrets
import shutil
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from stream_worker.codec import MODEL_UPDATE, make_codec
from stream_worker.config import Settings, load_settings, topics_under
from stream_worker.devtools.replay import publish_events
from stream_worker.devtools.synthetic import SyntheticWorld
from stream_worker.kafka.auth import KafkaLoginError, check_kafka_login
from stream_worker.kafka.local import DEFAULT_HOME, LocalKafka, free_port
from stream_worker.kafka.topics import ensure_topics
from stream_worker.trainer.service import Trainer
from tests.integration.kafka_helpers import (
    drained,
    newest_per_user,
    read_recommendations,
    read_topic,
    running_worker,
    train_synthetic_model,
    wait_until,
)

pytestmark = pytest.mark.integration

WORLD = SyntheticWorld(n_users=60, n_items=150, seed=3)
USERS = ("admin", "worker", "trainer")  # the first is the broker's own identity


@pytest.fixture(scope="session")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    users = {name: secrets.token_urlsafe(18) for name in USERS}
    broker = LocalKafka(
        port=free_port(),
        home=tmp_path_factory.mktemp("kafka-sasl"),
        jars=DEFAULT_HOME / "jars",
        sasl_users=users,
        acls=True,  # worker and trainer may do only what `grant_least_privilege` allows
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.destroy()


def login(broker: LocalKafka, user: str, password: str | None = None) -> dict[str, str]:
    return {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": user,
        "sasl.password": broker.sasl_users[user] if password is None else password,
    }


def grant_least_privilege(admin: Settings, settings: Settings, *, worker: str, trainer: str) -> None:
    """The ACLs worker and trainer need, and no more (what Strimzi KafkaUsers should grant too).
    READ and WRITE imply DESCRIBE. The consumer groups are the worker group and the fixed
    suffixes the watcher, the restore, the trainer and the checkpoint reader add to it."""
    g = settings.group_id
    grants = {
        worker: [
            (ResourceType.TOPIC, settings.events_topic, AclOperation.READ),
            (ResourceType.TOPIC, settings.recommendations_topic, AclOperation.WRITE),
            (ResourceType.TOPIC, settings.dlq_topic, AclOperation.WRITE),
            (ResourceType.TOPIC, settings.model_updates_topic, AclOperation.READ),
            (ResourceType.TOPIC, settings.checkpoints_topic, AclOperation.READ),
            (ResourceType.TOPIC, settings.state_topic, AclOperation.READ),  # restored on assignment ...
            (ResourceType.TOPIC, settings.state_topic, AclOperation.WRITE),  # ... written as users change
            (ResourceType.GROUP, g, AclOperation.READ),
            (ResourceType.GROUP, f"{g}.restore", AclOperation.READ),
            (ResourceType.GROUP, f"{g}.model-watcher", AclOperation.READ),
            (ResourceType.GROUP, f"{g}.checkpoints", AclOperation.READ),
        ],
        trainer: [
            (ResourceType.TOPIC, settings.events_topic, AclOperation.READ),
            (ResourceType.TOPIC, settings.model_updates_topic, AclOperation.WRITE),
            (ResourceType.TOPIC, settings.checkpoints_topic, AclOperation.WRITE),
            (ResourceType.TOPIC, settings.checkpoints_topic, AclOperation.READ),  # manifests: what to delete
            (ResourceType.GROUP, f"{g}.trainer", AclOperation.READ),
            (ResourceType.GROUP, f"{g}.checkpoints", AclOperation.READ),
        ],
    }
    bindings = [
        AclBinding(kind, name, ResourcePatternType.LITERAL, f"User:{user}", "*", operation, AclPermissionType.ALLOW)
        for user, rules in grants.items()
        for kind, name, operation in rules
    ]
    client = AdminClient(admin.kafka_common())  # held until every future is resolved
    for future in client.create_acls(bindings).values():
        future.result(timeout=30)


@pytest.fixture
def base(sasl_broker: LocalKafka, tmp_path) -> dict[str, object]:
    run = uuid.uuid4().hex[:8]
    return {
        "bootstrap_servers": sasl_broker.bootstrap,
        **topics_under(f"t{run}"),
        "group_id": f"t{run}.worker",
        "metrics_port": 0,
        "trainer_metrics_port": 0,
        "max_batch_wait_ms": 20,
        "device": "cpu",
        "torch_threads": 0,
        "top_k": 10,
    }


def test_worker_and_trainer_log_in_with_scram_and_models_travel_through_kafka(sasl_broker, base, tmp_path, monkeypatch):
    # The worker's credentials come from a file, as a Kubernetes Secret would be mounted ...
    secret = tmp_path / "secret" / "kafka.json"
    secret.parent.mkdir()
    secret.write_text(json.dumps(login(sasl_broker, "worker")))
    secret.chmod(0o600)
    monkeypatch.setenv("STREAMREC_KAFKA_OPTIONS_FILE", str(secret))
    worker_settings = load_settings(
        **base, model_dir=tmp_path / "worker-models", checkpoint_cache_dir=tmp_path / "worker-cache"
    )
    monkeypatch.delenv("STREAMREC_KAFKA_OPTIONS_FILE")
    assert sasl_broker.sasl_users["worker"] not in json.dumps(worker_settings.to_env()), "password in the environment"
    # ... the trainer's from STREAMREC_KAFKA_OPTIONS; it publishes checkpoints on the topic.
    monkeypatch.setenv("STREAMREC_KAFKA_OPTIONS", json.dumps(login(sasl_broker, "trainer")))
    trainer_settings = load_settings(
        **base,
        model_dir=tmp_path / "trainer-models",
        checkpoint_store="kafka",
        trainer_min_events=100,
        trainer_epochs=5,
        promotion_margin=1.0,  # promote whatever it trains: this test is about the transport
    )
    monkeypatch.delenv("STREAMREC_KAFKA_OPTIONS")
    check_kafka_login(worker_settings)
    check_kafka_login(trainer_settings)
    # The upstream app and the test's own reading log in as the admin (a super user).
    admin = load_settings(**base, kafka_options=login(sasl_broker, "admin"))
    ensure_topics(admin, partitions=2)
    grant_least_privilege(admin, worker_settings, worker="worker", trainer="trainer")

    first = train_synthetic_model(WORLD, trainer_settings.model_dir)  # v1, on both "pods"
    shutil.copytree(first, worker_settings.model_dir / first.name)
    now_ms = int(time.time() * 1000)
    before = list(WORLD.events(1500, seed=4, start_ms=now_ms - 60_000))
    after = list(WORLD.events(500, seed=5, start_ms=now_ms))
    publish_events(admin, before)

    with running_worker(worker_settings) as worker:
        wait_until(lambda: drained(admin), 60, "the worker to drain the first events over SASL")
        assert Trainer(trainer_settings).round() is not None
        wait_until(lambda: worker.inference.model_version == 2, 90, "the worker to fetch and swap in version 2")
        publish_events(admin, after)
        wait_until(lambda: drained(admin), 60, "the worker to drain the events after the swap")

    codec = make_codec(MODEL_UPDATE, trainer_settings.model_updates_topic, None)
    [update] = [codec.decode(r.value) for r in read_topic(admin, admin.model_updates_topic)]
    assert update["checkpoint_uri"] == f"kafka://{base['checkpoints_topic']}/multvae/v000002"
    assert (tmp_path / "worker-cache" / "multvae" / "v000002" / "weights.safetensors").is_file()
    assert not (worker_settings.model_dir / "v000002").exists(), "the worker must not need the trainer's folder"
    # The ACLs hold: a worker cannot announce a model (nor can anyone without WRITE there).
    refused: list = []
    rogue = Producer(worker_settings.kafka_common())
    rogue.produce(admin.model_updates_topic, b"x", b"multvae", on_delivery=lambda err, _m: refused.append(err))
    rogue.flush(30)
    assert refused and refused[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, refused
    newest = newest_per_user(read_recommendations(admin))
    users_after = {e.user_id for e in after}
    assert users_after <= set(newest)
    assert all(newest[u]["model_version"] == 2 and len(newest[u]["items"]) == 10 for u in users_after)


def test_a_wrong_password_fails_in_one_sentence(sasl_broker, base):
    settings = load_settings(**base, kafka_options=login(sasl_broker, "worker", password="not-the-password"))
    started = time.monotonic()
    with pytest.raises(KafkaLoginError) as refused:
        check_kafka_login(settings, timeout_s=20)
    message = str(refused.value)
    print(f"\n{message}")
    assert time.monotonic() - started < 10, "a refused login must not wait for the timeout"
    assert message.startswith(f"authentication failed at {sasl_broker.bootstrap} for user 'worker' with SCRAM-SHA-512")
    assert "invalid credentials" in message and "\n" not in message
    assert "not-the-password" not in message
