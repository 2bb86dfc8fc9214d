"""Does the cluster accept our credentials? One sentence when it does not.

A client with a wrong SASL password does not fail on its own: librdkafka logs the refusal and
retries for ever, so a worker would sit there unready. `check_kafka_login` asks for cluster
metadata once at start-up and turns the refusal into one sentence naming the user, the mechanism
and where the credentials come from.
"""

from __future__ import annotations

import re
import time

from confluent_kafka import KafkaError, KafkaException

from stream_worker.config import Settings
from stream_worker.kafka.clients import new_admin


class KafkaLoginError(Exception):
    """The cluster refused our credentials, or did not answer in time; the message says which."""


def check_kafka_login(settings: Settings, timeout_s: float = 15.0) -> None:
    """Return once a broker answered a metadata request with the configured credentials."""
    errors: list[KafkaError] = []
    common = settings.kafka_common()
    admin = new_admin(settings, **{"error_cb": errors.append, "log_level": 0})
    deadline = time.monotonic() + timeout_s
    while True:
        admin.poll(0.2)  # serves error_cb: librdkafka reports a refused login only there
        refused = [e for e in errors if e.code() == KafkaError._AUTHENTICATION]
        if refused:
            raise KafkaLoginError(login_refused_message(common, refused[0].str()))
        try:
            admin.list_topics(timeout=1)
            return
        except KafkaException:
            if time.monotonic() > deadline:
                last = errors[-1].str() if errors else "no answer"
                raise KafkaLoginError(
                    f"no Kafka broker at {common['bootstrap.servers']} answered within {timeout_s:.0f}s ({last})"
                ) from None


def login_refused_message(options: dict, reason: str) -> str:
    """One sentence: who was refused, with which mechanism, and where to fix it (no password in it)."""
    user = options.get("sasl.username", "(no sasl.username)")
    mechanism = options.get("sasl.mechanism", options.get("sasl.mechanisms", "GSSAPI"))
    return (
        f"authentication failed at {options['bootstrap.servers']} for user {user!r} with {mechanism}: check "
        "sasl.username and sasl.password in STREAMREC_KAFKA_OPTIONS or the file STREAMREC_KAFKA_OPTIONS_FILE "
        f"names (librdkafka: {_detail(reason)})"
    )


def _detail(reason: str) -> str:
    """librdkafka's reason without the broker address in front and the timing behind."""
    return re.sub(r"\s*\(after \d+ms in state \w+\)$", "", reason.split(": ", 1)[-1])
