"""`streamrec bench`: the end-to-end benchmark on a Kafka broker, in one command and one run.

    1. stage limits, each stage alone in this process on the same events: consume, decode,
       state, model (batch 1 and 256; a bag model's dense input and sparse bags, a sequence
       model's ordered codes), encode (+ produce);
    2. a naive per-event consumer on the same records: poll 1, decode, batch-1 forward, produce;
    3. the real worker (`streamrec worker`, its own process) draining the backlog;
    4. latency at fixed rates: a producer process sends events at R/s stamped with the time
       they are sent, a reader process receives the recommendations, and latency = time the
       reader has a list - `event_time` of the newest event it reflects. The worker's own
       stage times over each run come from its /metrics. Then again at `loaded_rates` with a
       CPU hog (a process spinning on one core) beside the worker: the tail under load.

The model is a random-initialised `--kind` (Mult-VAE 600-200 by default; SASRec, HSTU, ...) with
the hyperparameters it serves with (`models/presets.py`; speed does not depend on the weights),
of `n_items` items; events pick users uniformly and items from a Zipf law. Figures go to a table
on stdout, `bench.json` and `bench.png` in the output folder. Nothing here is faked: every figure
is measured in the same run, on whatever else the machine is doing.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream_worker.codec import RECOMMENDATION, USER_EVENT, SingleObjectCodec, from_user_event
from stream_worker.config import Settings, topics_under
from stream_worker.devtools.bench_report import markdown, plot, table
from stream_worker.devtools.bench_setup import (
    BenchConfig,
    Results,
    consume_all,
    create_topics,
    item_ids,
    make_events,
    produce_all,
    warm_producer,
)
from stream_worker.devtools.bench_worker import WorkerProcess, at_rate, drain
from stream_worker.kafka.clients import new_consumer, position

if TYPE_CHECKING:  # models.* imports torch: imported when the bench runs, so `streamrec --help` stays quick
    from models.base import Recommender


def stage_limits(config: BenchConfig, settings: Settings, model_dir: Path, results: Results) -> None:
    import torch

    from models import checkpoint
    from stream_worker.codec import to_user_event
    from stream_worker.config import DEFAULT_EVENT_WEIGHTS
    from stream_worker.worker.encoders import RecommendationEncoder, record
    from stream_worker.worker.inference import Inference
    from stream_worker.worker.state import UserState

    stages = results.stages
    rate, msgs = consume_all(settings, settings.events_topic, config.backlog_events)
    stages["consume events/s"] = rate

    codec = SingleObjectCodec(USER_EVENT)
    started = time.perf_counter()
    events = [(to_user_event(codec.decode(m.value()), m.key()), m.partition(), m.offset()) for m in msgs]
    stages["decode events/s"] = len(events) / (time.perf_counter() - started)

    state = UserState(
        max_users=config.n_users * 2,
        recent_items=config.recent_items,
        event_weights=DEFAULT_EVENT_WEIGHTS,
        decay_half_life_s=Settings.model_fields["decay_half_life_s"].default,
    )
    started = time.perf_counter()
    state.apply(events)
    stages["state events/s"] = len(events) / (time.perf_counter() - started)
    results.state_bytes = state_bytes_per_user(config, msgs)

    device = torch.device(config.device)
    loaded = checkpoint.load(model_dir, device)
    users = sorted({e.user_id for e, *_ in events})
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    # Bag models: the dense (B, n_items) input against the sparse bags the worker uses; a sequence
    # model has one path (ordered codes), measured once.
    paths = ["sequence"] if loaded.model.reads_order else ["dense", "sparse"]
    for path in paths:
        inference = Inference(loaded, state.items, device, config.top_k, sparse=path != "dense")
        for batch_size in (1, 256):
            ids = users[: config.model_batch1_users] if batch_size == 1 else users
            inference.recommend(state.batch(ids[:batch_size]))  # warm-up
            sync()
            started = time.perf_counter()
            for lo in range(0, len(ids), batch_size):
                inference.recommend(state.batch(ids[lo : lo + batch_size]))
            sync()
            name = f"model b{batch_size} {path} users/s"
            stages[name] = len(ids) / (time.perf_counter() - started)

    # Encoding: the per-record codec (fastavro) against the batch encoder, on 256-user batches.
    batches = [(b := state.batch(users[lo : lo + 256]), inference.recommend(b)) for lo in range(0, len(users), 256)]
    out_codec = SingleObjectCodec(RECOMMENDATION)
    started = time.perf_counter()
    for batch, ranked in batches:
        [out_codec.encode(record(batch, ranked, b, config.kind, 1, 0)) for b in range(len(batch.user_ids))]
    stages["encode (codec) lists/s"] = len(users) / (time.perf_counter() - started)
    encoder = RecommendationEncoder(out_codec)
    started = time.perf_counter()
    for batch, ranked in batches:
        encoder.encode(batch, ranked, model_name=config.kind, model_version=1, generated_at=0)
    stages["encode (batch encoder) lists/s"] = len(users) / (time.perf_counter() - started)
    topic = f"{settings.recommendations_topic}.stage"
    producer = warm_producer(settings, topic)
    started = time.perf_counter()
    for batch, ranked in batches:
        values = encoder.encode(batch, ranked, model_name=config.kind, model_version=1, generated_at=0)
        for user_id, value in zip(batch.user_ids, values, strict=True):
            producer.produce(topic, value, user_id.encode())
        producer.poll(0)
    assert producer.flush(60) == 0, "stage encode+produce: records unacknowledged"
    stages["encode+produce lists/s"] = len(users) / (time.perf_counter() - started)


def state_bytes_per_user(config: BenchConfig, msgs: list[Any]) -> dict[str, float]:
    """What a user costs in the state: its arrays per user (interactions, and with the per-user
    counters), and every byte Python allocated for the state while decoding into it (ids and
    the dict included; tracemalloc, so strings the state keeps are counted once)."""
    import tracemalloc

    from stream_worker.codec import to_user_event
    from stream_worker.config import DEFAULT_EVENT_WEIGHTS
    from stream_worker.worker.state import UserState

    codec = SingleObjectCodec(USER_EVENT)
    tracemalloc.start()
    try:
        state = UserState(
            max_users=config.n_users,  # arrays sized to the users exactly: no spare rows counted
            recent_items=config.recent_items,
            event_weights=DEFAULT_EVENT_WEIGHTS,
            decay_half_life_s=Settings.model_fields["decay_half_life_s"].default,
        )
        for lo in range(0, len(msgs), 1000):
            chunk = msgs[lo : lo + 1000]
            state.apply([(to_user_event(codec.decode(m.value()), m.key()), m.partition(), m.offset()) for m in chunk])
        allocated = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    arrays = state.bytes_per_user()
    return {
        "interactions bytes": arrays["interactions"],
        "arrays bytes": arrays["all"],
        "allocated bytes": allocated / len(state),
    }


def naive_consumer(config: BenchConfig, settings: Settings, model_dir: Path) -> float:
    """Per event: poll 1, decode, apply, score that one user, encode, produce. Returns events/s."""
    import torch

    from models import checkpoint
    from stream_worker.codec import to_user_event
    from stream_worker.config import DEFAULT_EVENT_WEIGHTS
    from stream_worker.worker.encoders import record
    from stream_worker.worker.inference import Inference
    from stream_worker.worker.state import UserState

    state = UserState(
        max_users=config.n_users * 2,
        recent_items=config.recent_items,
        event_weights=DEFAULT_EVENT_WEIGHTS,
        decay_half_life_s=Settings.model_fields["decay_half_life_s"].default,
    )
    inference = Inference(checkpoint.load(model_dir, config.device), state.items, torch.device(config.device), 20)
    in_codec, out_codec = SingleObjectCodec(USER_EVENT), SingleObjectCodec(RECOMMENDATION)
    consumer = new_consumer(
        settings, f"{settings.group_id}.naive", **{"enable.auto.commit": True, "auto.offset.reset": "earliest"}
    )
    topic = f"{settings.recommendations_topic}.naive"
    producer = warm_producer(settings, topic)
    consumer.subscribe([settings.events_topic])
    try:
        done, started = 0, None
        deadline = time.monotonic() + 300
        while done < config.naive_events and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            started = started or time.perf_counter()  # from the first record: joining the group is not counted
            event = to_user_event(in_codec.decode(msg.value() or b""), msg.key())
            state.apply([(event, *position(msg)[1:])])
            batch = state.batch([event.user_id])
            ranked = inference.recommend(batch)
            value = out_codec.encode(record(batch, ranked, 0, config.kind, 1, int(time.time() * 1000)))
            producer.produce(topic, value, msg.key())
            producer.poll(0)
            done += 1
        assert producer.flush(60) == 0, "naive consumer: records unacknowledged"
        assert started is not None and done == config.naive_events, f"naive consumer read {done} records"
        return done / (time.perf_counter() - started)
    finally:
        consumer.close()


def run_bench(
    config: BenchConfig,
    out_dir: Path,
    *,
    bootstrap_servers: str | None = None,
    say: Callable[[str], None] = print,
) -> Results:
    """The whole benchmark; starts (and stops) its own local broker unless `bootstrap_servers` names one."""
    import torch

    from models import checkpoint
    from stream_worker.config import load_settings
    from stream_worker.kafka.local import DEFAULT_HOME, LocalKafka, free_port
    from stream_worker.kafka.topics import ensure_topics

    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # as the worker (STREAMREC_TORCH_THREADS=1): stage limits on the same footing
    results = Results(
        config=asdict(config),
        environment={
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if config.device == "cuda" else "cpu",
            "load average at start": os.getloadavg()[0],
            "model": f"{config.kind} as served (models/presets.py), random initial weights",
        },
    )
    with tempfile.TemporaryDirectory(prefix="streamrec-bench-") as tmp_name:
        tmp = Path(tmp_name)
        broker = None
        if bootstrap_servers is None:
            say("starting a local Kafka broker for the benchmark ...")
            broker = LocalKafka(port=free_port(), home=tmp / "kafka", jars=DEFAULT_HOME / "jars")
            broker.start()
            bootstrap_servers = broker.bootstrap
        worker = None
        try:
            run = uuid.uuid4().hex[:8]
            settings = load_settings(
                bootstrap_servers=bootstrap_servers,
                **topics_under(f"bench{run}"),
                group_id=f"bench{run}.worker",
                model_dir=tmp / "model",
                device=config.device,
                torch_threads=1,
                top_k=config.top_k,
                state_recent_items=config.recent_items,
                metrics_port=free_port(),
            )
            ensure_topics(settings, partitions=config.partitions)
            extra = [f"{settings.recommendations_topic}.{name}" for name in ("stage", "naive")]
            create_topics(settings, extra, config.partitions)
            torch.manual_seed(config.seed)
            checkpoint.save(served_model(config), tmp / "model", item_ids=item_ids(config), name=config.kind)

            say(f"producing a backlog of {config.backlog_events:,} events ({config.n_users:,} users, "
                f"{config.n_items:,} items) ...")  # fmt: skip
            codec = SingleObjectCodec(USER_EVENT)
            newest_is_now = int(time.time() * 1000) - config.backlog_events  # no event_time in the future
            events = make_events(config, config.backlog_events, config.seed, newest_is_now)
            values = [(e.user_id.encode(), codec.encode(from_user_event(e))) for e in events]
            results.stages["produce events/s"] = produce_all(settings, settings.events_topic, values)

            say("1/4 stage limits, each stage alone ...")
            stage_limits(config, settings, tmp / "model", results)
            say("2/4 the naive per-event consumer ...")
            results.naive_events_per_s = naive_consumer(config, settings, tmp / "model")
            say("3/4 the worker draining the backlog ...")
            worker = WorkerProcess(settings, out_dir / "worker.log")
            results.drain = drain(settings, worker, config.backlog_events)
            for rate in config.rates:
                say(f"4/4 latency at {rate:g} events/s for {config.seconds_per_rate:g} s ...")
                results.rates.append(at_rate(settings, worker, config, rate, tmp, broker.pid() if broker else None))
            for rate in config.loaded_rates:
                say(f"4/4 latency at {rate:g} events/s with a CPU hog beside the worker ...")
                broker_pid = broker.pid() if broker else None
                results.rates.append(at_rate(settings, worker, config, rate, tmp, broker_pid, hog=True))
            code = worker.stop()
            worker = None
            assert code == 0, f"the worker exited with code {code}; see {out_dir / 'worker.log'}"
        finally:
            if worker is not None:
                worker.stop()
            if broker is not None:
                broker.destroy()

    results.ratios = ratios(results)
    (out_dir / "bench.json").write_text(json.dumps(asdict(results), indent=1))
    (out_dir / "bench.md").write_text(markdown(results))
    plot(results, out_dir / "bench.png")
    say(table(results))
    say(f"wrote {out_dir / 'bench.json'}, bench.md (the tables for README) and bench.png")
    return results


def served_model(config: BenchConfig) -> Recommender:
    """A `config.kind` model with the hyperparameters it serves with, for `n_items` items."""
    from models.base import REGISTRY
    from models.presets import SERVED
    from models.train import make_config

    overrides = dict(SERVED.get(config.kind, {}))
    if REGISTRY[config.kind].reads_order:
        overrides["max_len"] = config.recent_items  # what the worker gives it, as the trainer sets it
    return REGISTRY[config.kind](config.n_items, make_config(config.kind, overrides))


def ratios(results: Results) -> dict[str, float]:
    """The run's figures against each other (all measured in the same run)."""
    s = results.stages
    path = "sequence" if "model b256 sequence users/s" in s else "sparse"  # how the worker scores this kind
    served = f"model b256 {path} users/s"
    out = {
        "drain / naive": results.drain["events/s"] / results.naive_events_per_s,
        f"model b256 / b1 ({path})": s[served] / s[f"model b1 {path} users/s"],
        "batch encoder / codec": s["encode (batch encoder) lists/s"] / s["encode (codec) lists/s"],
        # Model vs the other stage limits (events or lists per second over users per second):
        # how many times faster than the model each of the worker's other stages is.
        **{
            f"{name} / model b256 {path}": s[name] / s[served]
            for name in ("consume events/s", "decode events/s", "state events/s", "encode+produce lists/s")
        },
    }
    if path == "sparse":
        out["model b256 sparse / dense"] = s["model b256 sparse users/s"] / s["model b256 dense users/s"]
        out["model b1 sparse / dense"] = s["model b1 sparse users/s"] / s["model b1 dense users/s"]
    return out


def quick_or_full(quick: bool, **overrides: Any) -> BenchConfig:
    config = BenchConfig.quick() if quick else BenchConfig()
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
