"""Is the Kafka cluster there? One bounded check, and one sentence when it is not.

Every command that needs Kafka calls `check_kafka` before it builds its clients, so a broker
that is away, a wrong security setting or a missing topic ends in one line that names the
address and the likely fix, instead of librdkafka retrying (and logging) for a minute:

    cannot reach Kafka at 127.0.0.1:19092 within 5 s — is it running? (streamrec kafka start --port 19092)

`quiet` keeps librdkafka's own log out of the terminal unless asked for (`--verbose`);
`wait_for_kafka` retries for processes that must outlive an outage (the worker), logging once
a minute; `clients.ThrottledLog` is the same once-a-minute log for long-lived
clients.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable

from confluent_kafka import KafkaError, KafkaException

from stream_worker.config import Settings
from stream_worker.kafka.clients import ThrottledLog, new_admin

LOCAL_HOSTS = ("127.0.0.1", "localhost")


class KafkaUnavailable(Exception):
    """The cluster cannot be used as configured; the message is one sentence with the fix."""

    exit_code = 1  # the command line exits with it: a runtime error


class KafkaConfigError(KafkaUnavailable):
    """librdkafka refused a setting (e.g. an unknown property in STREAMREC_KAFKA_OPTIONS): a usage error."""

    exit_code = 2  # the command line exits with it: a usage error


class MissingTopic(KafkaUnavailable):
    """The cluster answers but a topic the command needs does not exist."""


def quiet(settings: Settings, verbose: bool = False) -> Settings:
    """`settings` whose Kafka clients keep librdkafka's own log quiet (log_level 0), unless
    `verbose` or the user set log_level in STREAMREC_KAFKA_OPTIONS. Errors still reach the
    code through exceptions, delivery reports and message errors."""
    if verbose or "log_level" in settings.kafka_options:
        return settings
    return settings.model_copy(update={"kafka_options": {**settings.kafka_options, "log_level": "0"}})


def check_kafka(settings: Settings, topics: Iterable[str] = (), timeout_s: float | None = None) -> None:
    """Return when the cluster answers a metadata request within `timeout_s` (default
    `settings.kafka_check_timeout_s`) and every one of `topics` exists; else raise
    KafkaUnavailable (KafkaConfigError, MissingTopic) with one sentence saying what to do."""
    timeout_s = settings.kafka_check_timeout_s if timeout_s is None else timeout_s
    errors: list[KafkaError] = []
    try:
        admin = new_admin(settings, **{"log_level": 0, "error_cb": errors.append})
    except KafkaException as exc:
        raise KafkaConfigError(
            f"Kafka refused the client settings: {_reason(exc.args[0])} — fix STREAMREC_KAFKA_OPTIONS "
            "(names and values as in librdkafka's CONFIGURATION.md, values as JSON strings)"
        ) from None
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException:
        admin.poll(0)  # delivers the errors behind the failure to error_cb
        raise KafkaUnavailable(_unreachable_sentence(settings, errors, timeout_s)) from None
    missing = [topic for topic in topics if topic not in metadata.topics]
    if missing:
        names = ", ".join(repr(t) for t in missing)
        which = f"topics {names} do not exist" if len(missing) > 1 else f"topic {names} does not exist"
        raise MissingTopic(
            f"{which} on {settings.bootstrap_servers} — create {'them' if len(missing) > 1 else 'it'} with "
            "`streamrec topics create` (with the same STREAMREC_* settings)"
        )


def wait_for_kafka(
    settings: Settings,
    stop: threading.Event,
    log: logging.Logger,
    *,
    topics: Iterable[str] = (),
    retry_s: float = 5.0,
    log_every_s: float = 60.0,
) -> bool:
    """Check until the cluster answers (True) or `stop` is set (False), logging the reason at
    most once every `log_every_s`. A usage error (KafkaConfigError) is raised at once."""
    topics = list(topics)
    throttled = ThrottledLog(log, log_every_s)
    while not stop.is_set():
        try:
            check_kafka(settings, topics)
            return True
        except KafkaConfigError:
            raise
        except KafkaUnavailable as exc:
            throttled.warning("unavailable", "%s; retrying every %.0f s", exc, retry_s)
        stop.wait(retry_s)
    return False


def local_port(bootstrap_servers: str) -> int | None:
    """The port of the first bootstrap server when it is on this machine (127.0.0.1 or
    localhost), else None: the port a local broker for these settings listens on."""
    host, _, port = bootstrap_servers.split(",")[0].strip().rpartition(":")
    return int(port) if host in LOCAL_HOSTS and port.isdigit() else None


# --- the sentence ----------------------------------------------------------------------------


def _unreachable_sentence(settings: Settings, errors: list[KafkaError], timeout_s: float) -> str:
    address = settings.bootstrap_servers
    options = settings.kafka_common()  # with the options file, where credentials may come from
    auth = [e for e in errors if e.code() == KafkaError._AUTHENTICATION]
    if auth:
        mechanism = options.get("sasl.mechanism", options.get("sasl.mechanisms", "GSSAPI"))
        protocol = options.get("security.protocol", "PLAINTEXT")
        return (
            f"authentication failed at {address} ({protocol}, SASL mechanism {mechanism}): {_reason(auth[0])} "
            "— check security.protocol, sasl.mechanism, sasl.username and sasl.password in STREAMREC_KAFKA_OPTIONS"
        )
    tls = [e for e in errors if "SSL" in e.str()]
    if tls:
        return (
            f"TLS handshake with Kafka at {address} failed: {_reason(tls[0])} — check security.protocol "
            "and ssl.* in STREAMREC_KAFKA_OPTIONS"
        )
    port = local_port(address)
    hint = f"streamrec kafka start --port {port}" if port else "check STREAMREC_BOOTSTRAP_SERVERS and the network"
    return f"cannot reach Kafka at {address} within {timeout_s:g} s — is it running? ({hint})"


def _reason(error: KafkaError) -> str:
    """librdkafka's message without the broker prefix and the state suffix."""
    text = error.str()
    text = re.sub(r"^\w+://[^/\s]+(/\w+)?: ", "", text)  # "sasl_plaintext://127.0.0.1:9092/bootstrap: "
    return re.sub(r"\s*\(after \d+ms in state \w+\)$", "", text).strip().rstrip(":").strip()
