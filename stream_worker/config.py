"""One frozen settings object, read from the environment (prefix STREAMREC_) once, in main.

Every default, topic name and tunable lives here and nowhere else. A bad value stops the
process at start-up with one sentence naming the variable and what it must be
(`load_settings` turns pydantic's report into that sentence).
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

ENV_PREFIX = "STREAMREC_"

# Weight of one interaction in the user's state, by event type (RATING is further scaled by
# value / 5). Purchases say more than views; OTHER is what an old reader sees for a new kind.
DEFAULT_EVENT_WEIGHTS = {
    "VIEW": 1.0,
    "CLICK": 2.0,
    "ADD_TO_CART": 3.0,
    "PURCHASE": 5.0,
    "RATING": 4.0,
    "OTHER": 1.0,
}


class ConfigError(Exception):
    """A setting is missing or invalid; the message says which and what to do."""

    exit_code = 2  # the command line exits with it: a usage error


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    # --- Kafka -------------------------------------------------------------------------
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,...]")
    kafka_options: dict[str, str] = Field(
        default_factory=dict,
        description="Extra librdkafka settings for every client, as JSON (e.g. security.protocol, sasl.*)",
    )
    events_topic: str = Field("user-events", description="User events in (Avro UserEvent, key = user id)")
    recommendations_topic: str = Field("recommendations", description="Recommendations out (Avro Recommendation)")
    model_updates_topic: str = Field("model-updates", description="Checkpoint announcements (Avro ModelUpdate)")
    dlq_topic: str = Field("user-events.dlq", description="Records that could not be used, with the reason in headers")
    state_topic: str = Field(
        "user-state", description="Each user's state (compacted, co-partitioned with the events topic)"
    )
    topic_partitions: int = Field(3, ge=1, description="Partitions of topics that `topics create` makes")
    group_id: str = Field("streamrec-worker", min_length=1, description="Consumer group of the workers")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a group with no committed offset starts"
    )
    schema_registry_url: str | None = Field(
        None, description="Confluent Schema Registry URL; unset = Avro single-object encoding"
    )

    # --- worker ------------------------------------------------------------------------
    model_dir: Path | None = Field(None, description="Checkpoint folder, or a model directory of versions")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda when torch sees a GPU")
    top_k: int = Field(20, ge=1, le=1000, description="Items per recommendation list")
    max_batch_size: int = Field(256, ge=1, description="Users scored together (in one model call) at most")
    max_flush_users: int = Field(
        4096,
        ge=1,
        description="Users coalesced into one flush at most, scored max_batch_size at a time: while records "
        "keep arriving, each user's events up to then are scored once",
    )
    max_batch_wait_ms: int = Field(
        200,
        ge=0,
        description="Upper bound on coalescing while polls come back full (the worker is behind); a poll that "
        "does not fill up is scored at once (greedy), so this is not a fixed delay",
    )
    poll_max_records: int = Field(1000, ge=1, description="Records taken from Kafka per loop turn at most")
    state_max_users: int = Field(
        200_000, ge=1, description="Users held in memory (about 1.4 kB each); least recently active evicted"
    )
    state_recent_items: int = Field(100, ge=1, le=10_000, description="Interactions remembered per user")
    event_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS),
        description="Weight per event type, as JSON; given types override the defaults (RATING x value/5)",
    )
    decay_half_life_s: float = Field(
        30 * 24 * 3600.0, ge=0, description="Interaction weight halves after this long; 0 = no decay"
    )
    torch_threads: int = Field(
        1,
        ge=0,
        description="CPU threads per model call in the worker; 0 = torch's default (one per core). "
        "1 avoids stalls when cores are shared; scale out with partitions instead",
    )
    # --- durable state and delivery --------------------------------------------------------------
    processing_guarantee: Literal["at-least-once", "exactly-once"] = Field(
        "at-least-once",
        description="exactly-once = Kafka transactions: lists, state and offsets commit together "
        "(readers use isolation.level=read_committed)",
    )
    instance_id: str | None = Field(
        None,
        description="Static group membership id (e.g. the pod name): a restarted worker gets its "
        "partitions back without waiting for the session timeout",
    )
    restore_timeout_s: float = Field(
        300.0, gt=0, description="Longest a worker may take to restore its partitions' users from the state topic"
    )
    # --- hardening: limits, outages, the model channel ----------------------------------------
    max_id_length: int = Field(256, ge=1, le=100_000, description="Longest event_id, user_id or item_id accepted")
    max_clock_skew_s: float = Field(
        300.0, ge=0, description="An event_time further in the future than this is a dead letter (reason invalid)"
    )
    state_max_items: int = Field(
        1_000_000, ge=1, description="Item ids held in state; when full, ids no held user references are reclaimed"
    )
    dlq_max_bytes: int | None = Field(
        None,
        ge=1024,
        description="Largest dead letter (key + value + headers); longer values are truncated. "
        "Unset = the DLQ topic's max.message.bytes, at most 1,000,000",
    )
    flush_timeout_s: float = Field(
        30.0, gt=0, description="On stop or rebalance, how long to wait for the broker to acknowledge what is in flight"
    )
    commit_interval_ms: int = Field(
        100,
        ge=0,
        description="At-least-once: acknowledged offsets are committed at most this often (a crash replays "
        "at most this much more); each flush's offsets would otherwise be one request",
    )
    max_in_flight_records: int = Field(
        50_000, ge=1, description="Records produced but not yet acknowledged before the worker stops consuming"
    )
    model_load_timeout_s: float = Field(
        60.0, gt=0, description="Longest an announced checkpoint may take to verify and load before it is rejected"
    )
    model_max_bytes: int = Field(
        4 * 1024**3, ge=1024, description="Largest weights file an announced checkpoint may have"
    )
    model_min_item_overlap: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Share of the items seen in the stream an announced model must know (checked once 100 are seen)",
    )
    model_max_version_jump: int = Field(
        1000, ge=1, description="An announced version more than this above the newest known one is rejected"
    )
    metrics_port: int = Field(9464, ge=0, le=65535, description="Port of /metrics, /healthz, /readyz; 0 = off")
    metrics_host: str = Field("0.0.0.0", description="Interface the HTTP endpoint binds")

    # --- trainer -----------------------------------------------------------------------
    trainer_model_kind: str = Field(
        "multvae", description="multvae, multdae, cfgan, sasrec, hstu, ease, itemknn or pop"
    )
    trainer_interval_s: float = Field(
        300.0, gt=0, description="Seconds between training rounds (after a failed one: 10 s, doubling up to this)"
    )
    trainer_window_s: float = Field(
        7 * 24 * 3600.0, gt=0, description="Each round reads the events appended to the log in this many last seconds"
    )
    trainer_min_events: int = Field(1000, ge=1, description="Skip a round with fewer events than this")
    trainer_epochs: int | None = Field(None, ge=1, description="Epochs per round; unset = early stopping on validation")
    trainer_torch_threads: int = Field(0, ge=0, description="CPU threads for training; 0 = torch's default")
    trainer_metrics_port: int = Field(9465, ge=0, le=65535, description="The trainer's /metrics port; 0 = off")

    # --- model lifecycle ---------------------------------------------------------------
    promotion_metric: str = Field(
        "ndcg@20",
        pattern=r"^(ndcg|recall)@[1-9][0-9]*$",
        description="Metric that decides promotion, on the freshest events of the window: ndcg@K or recall@K",
    )
    promotion_margin: float = Field(
        0.02,
        ge=0,
        le=1,
        description="A candidate is promoted unless its metric is below the serving model's by more than "
        "this fraction of it",
    )
    trainer_holdout_fraction: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="Share of the window's events, the freshest, held out to compare candidate and serving model",
    )
    trainer_warm_start: bool = Field(
        False,
        description="Start training from the serving model's weights (Mult-VAE/DAE: mapped onto the new catalog); "
        "pays off only with fewer STREAMREC_TRAINER_EPOCHS",
    )
    # --- operations ------------------------------------------------------------
    kafka_stats_interval_ms: int = Field(
        5000, ge=0, description="How often the worker's consumer reports lag and assignment to /metrics; 0 = off"
    )
    # --- checkpoints through Kafka ---------------------------------------------------------
    checkpoint_store: Literal["directory", "kafka"] = Field(
        "directory",
        description="Where the trainer's checkpoints reach workers: directory = the model directory (a shared "
        "volume), kafka = chunked records on the checkpoints topic",
    )
    checkpoints_topic: str = Field(
        "model-checkpoints", description="Compacted topic that carries checkpoint files in chunks (store = kafka)"
    )
    trainer_keep_versions: int = Field(
        10,
        ge=2,
        description="Versions kept in the model directory (at least 2): the newest N, the serving one and the "
        "newest N that have served (rollback targets); the trainer deletes older ones after each round",
    )
    checkpoints_keep: int = Field(
        3, ge=1, description="Versions per model name kept on the checkpoints topic; older ones are tombstoned"
    )
    checkpoint_cache_dir: Path | None = Field(
        None,
        description="Where a worker assembles checkpoints fetched from Kafka; unset = <temp dir>/streamrec-checkpoints",
    )
    checkpoint_fetch_timeout_s: float = Field(
        300.0, gt=0, description="Longest a worker spends fetching one checkpoint from Kafka"
    )

    # --- Kafka credentials from a file ---------------------------------------------------
    kafka_options_file: Path | None = Field(
        None,
        description="JSON or key=value file of librdkafka settings (e.g. sasl.password, mounted from a Secret), "
        "or a folder of one file per key; read when a client is built; STREAMREC_KAFKA_OPTIONS wins on the same key",
    )
    # --- first hour: reachability ---------------------------------------------------------
    kafka_check_timeout_s: float = Field(
        5.0, gt=0, description="Commands give up on an unreachable cluster after this many seconds"
    )

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers_look_like_host_port(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port")
        return value

    @field_validator("event_weights")
    @classmethod
    def _weights_cover_every_event_type(cls, value: dict[str, float]) -> dict[str, float]:
        merged = {**DEFAULT_EVENT_WEIGHTS, **{k.upper(): v for k, v in value.items()}}
        unknown = set(merged) - set(DEFAULT_EVENT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown event types {sorted(unknown)}; known: {sorted(DEFAULT_EVENT_WEIGHTS)}")
        if any(w < 0 for w in merged.values()):
            raise ValueError("weights must be >= 0")
        return merged

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        seen: dict[str, str] = {}
        for name in TOPIC_SETTINGS:
            topic = getattr(self, name)
            if topic in seen:
                raise ValueError(
                    f"the {name.removesuffix('_topic').replace('_', ' ')} topic must differ from the other topics: "
                    f"{topic!r} is also {ENV_PREFIX}{seen[topic].upper()} (all topics must be different)"
                )
            seen[topic] = name
        # Users waiting to be scored are the most recently active, so eviction (least recent
        # first) can never take one of them as long as they all fit at once.
        if self.state_max_users < self.max_flush_users + self.poll_max_records:
            raise ValueError(
                f"state_max_users ({self.state_max_users}) must be at least max_flush_users + "
                f"poll_max_records ({self.max_flush_users + self.poll_max_records})"
            )
        return self

    @field_validator("kafka_options_file")
    @classmethod
    def _options_file_is_readable(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_kafka_options_file(value)  # fail at start-up, not when the first client is built
        return value

    def to_env(self) -> dict[str, str]:
        """These settings as STREAMREC_* variables, for a child process (dicts as JSON)."""
        env = {}
        for name, value in self.model_dump(mode="json").items():
            if value is not None:
                env[f"{ENV_PREFIX}{name.upper()}"] = json.dumps(value) if isinstance(value, dict) else str(value)
        return env

    def kafka_common(self) -> dict[str, Any]:
        """librdkafka settings every client of ours shares."""
        return {
            "bootstrap.servers": self.bootstrap_servers,
            **read_kafka_options_file(self.kafka_options_file),
            **self.kafka_options,
        }


def read_kafka_options_file(path: Path | None) -> dict[str, str]:
    """librdkafka settings from a file: a JSON object, or `key=value` lines (`#` comments); or
    from a folder with one file per setting, named by its key (a Secret mounted as a volume, e.g.
    Strimzi's KafkaUser Secret with `items: [{key: password, path: sasl.password}]`).

    Read each time a client is built, so a rotated Secret takes effect with the next client.
    Hand-written because the `key=value` subset that Secrets hold needs no properties library
    (no escapes or line continuations are interpreted). Raises ValueError naming the file."""
    if path is None:
        return {}
    if Path(path).is_dir():
        # Kubernetes adds hidden entries (..data, ..<timestamp>) beside the key files.
        keys = sorted(p for p in Path(path).iterdir() if not p.name.startswith(".") and p.is_file())
        return {p.name: p.read_text().rstrip("\r\n") for p in keys}
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"cannot read the Kafka options file {path}: {exc.strerror or exc}") from None
    if text.lstrip().startswith("{"):
        try:
            options = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"the Kafka options file {path} is not valid JSON: {exc}") from None
        if not isinstance(options, dict):
            raise ValueError(f"the Kafka options file {path} must hold a JSON object")
        return {str(k): str(v) for k, v in options.items()}
    options = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"line {number} of the Kafka options file {path} is not key=value")
        options[key.strip()] = value.strip()
    return options


# Every setting that names a topic.
TOPIC_SETTINGS = (
    "events_topic",
    "recommendations_topic",
    "model_updates_topic",
    "dlq_topic",
    "state_topic",
    "checkpoints_topic",
)


def topics_under(prefix: str) -> dict[str, str]:
    """Every topic setting as `<prefix>.<default name>` (e.g. `t1a2b.user-events`): a run with
    topics of its own, for tests, benchmarks and the demo."""
    return {name: f"{prefix}.{Settings.model_fields[name].default}" for name in TOPIC_SETTINGS}


# STREAMREC_* variables that are not settings of the worker or trainer, but are read elsewhere.
OTHER_VARIABLES = {
    f"{ENV_PREFIX}DATA_DIR",  # models.evaluate: where the MovieLens splits are
    f"{ENV_PREFIX}TEST_BOOTSTRAP_SERVERS",  # tests: an existing cluster to test against
}


def load_settings(**overrides: Any) -> Settings:
    """Environment + command-line overrides (which win), or ConfigError with one clear sentence."""
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields} | OTHER_VARIABLES
    for variable in sorted(v for v in os.environ if v.startswith(ENV_PREFIX) and v not in known):
        close = difflib.get_close_matches(variable, known, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"{variable} is not a streamrec setting (see the README's configuration table){hint}")
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except SettingsError as exc:
        raise ConfigError(_not_json_sentence(exc)) from None
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "settings"
            where = f"{ENV_PREFIX}{field.upper()}" if error["loc"] else "settings"
            if error["loc"] and error["loc"][0] == "kafka_options" and len(error["loc"]) > 1:
                where = f"{ENV_PREFIX}KAFKA_OPTIONS[{error['loc'][1]!r}]"
                error["msg"] += ' (librdkafka values are JSON strings, e.g. {"linger.ms": "20"})'
            problems.append(f"{where}: {error['msg']}")
        raise ConfigError("Invalid configuration - " + "; ".join(problems)) from None


def _not_json_sentence(exc: SettingsError) -> str:
    """pydantic-settings could not parse a variable as JSON; name it and show the shape it wants."""
    field = str(exc).split('"')[1] if str(exc).count('"') >= 2 else ""
    variable = f"{ENV_PREFIX}{field.upper()}" if field else "a STREAMREC_ variable"
    examples = {
        "kafka_options": '\'{"security.protocol": "SASL_SSL", "linger.ms": "20"}\' (values are strings)',
        "event_weights": '\'{"PURCHASE": 10, "VIEW": 0.5}\'',
    }
    return f"{variable} is not valid JSON; write a JSON object, e.g. {variable}={examples.get(field, '{...}')}"
