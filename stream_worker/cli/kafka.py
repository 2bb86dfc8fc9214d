"""`streamrec kafka start|stop` (a local broker) and `streamrec topics create`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stream_worker.cli.common import RUNTIME, Bootstrap, cli_settings, console, fail, need_kafka, shown
from stream_worker.kafka.local import DEFAULT_HOME, KafkaStartError, LocalKafka

kafka_app = typer.Typer(help="A local single-node Apache Kafka (KRaft) for development and tests.")


topics_app = typer.Typer(help="The topics streamrec reads and writes.")


KafkaPort = Annotated[
    int | None,
    typer.Option(
        help="Client port; the controller takes port + 1 "
        "(default: the port of STREAMREC_BOOTSTRAP_SERVERS when it is 127.0.0.1/localhost, else 9092)"
    ),
]


KafkaHome = Annotated[Path, typer.Option(help="Jars, data and logs (per port: <home>/broker-<port>/)")]


def _local_port(port: int | None) -> int:
    """--port, else the port of STREAMREC_BOOTSTRAP_SERVERS when it names this machine, else 9092."""
    from stream_worker.kafka.check import local_port

    if port is not None:
        return port
    return local_port(cli_settings().bootstrap_servers) or 9092


@kafka_app.command("start")
def kafka_start(port: KafkaPort = None, home: KafkaHome = DEFAULT_HOME) -> None:
    """Start the local broker (fetching its jars with Maven the first time); returns once it is ready.

    streamrec kafka start --port 19092   (then STREAMREC_BOOTSTRAP_SERVERS=127.0.0.1:19092)
    """
    broker = LocalKafka(port=_local_port(port), home=home)
    try:
        started = broker.start()
    except KafkaStartError as exc:
        fail(str(exc), RUNTIME)
    console.print(
        f"Kafka {'started' if started else 'is already running'} on {broker.bootstrap} "
        f"(controller on port {broker.controller_port}; data and log in {shown(broker.base)})"
    )


@kafka_app.command("stop")
def kafka_stop(port: KafkaPort = None, home: KafkaHome = DEFAULT_HOME) -> None:
    """Stop the local broker (its data stays for the next start).

    streamrec kafka stop --port 19092
    """
    broker = LocalKafka(port=_local_port(port), home=home)
    if broker.stop():
        console.print(f"Kafka on {broker.bootstrap} stopped")
        return
    others = sorted(
        int(folder.name.removeprefix("broker-"))
        for folder in Path(home).glob("broker-*")
        if folder.name.removeprefix("broker-").isdigit()
        and LocalKafka(port=int(folder.name.removeprefix("broker-")), home=home).running()
    )
    elsewhere = (
        f"; a broker started from {shown(home)} runs on port {', '.join(map(str, others))} "
        "(streamrec kafka stop --port N)"
        if others
        else ""
    )
    console.print(f"nothing to stop: Kafka on {broker.bootstrap} was not running (started by streamrec){elsewhere}")


@topics_app.command("create")
def topics_create(
    bootstrap_servers: Bootstrap = None,
    partitions: Annotated[int | None, typer.Option(help="Default: STREAMREC_TOPIC_PARTITIONS or 3")] = None,
) -> None:
    """Create streamrec's topics; existing ones are left as they are.

    streamrec topics create --partitions 6
    """
    from stream_worker.kafka.topics import ensure_topics

    settings = cli_settings(bootstrap_servers=bootstrap_servers, topic_partitions=partitions)
    need_kafka(settings)
    for topic, outcome in ensure_topics(settings).items():
        console.print(f"{topic}: {outcome}")
