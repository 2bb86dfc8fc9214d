"""`streamrec`: the command line. One command per job; settings from STREAMREC_* or options.

streamrec kafka start            a local single-node broker on 127.0.0.1:9092
streamrec topics create          user-events, recommendations, model-updates, user-events.dlq
streamrec train --ratings ml-100k/u.data --out runs/models
streamrec worker --model runs/models
streamrec trainer --model-dir runs/models
streamrec replay --synthetic --events 20000 --rate 2000
streamrec tail
streamrec demo                   all of the above, end to end, then stops everything
"""

from __future__ import annotations

# Each command module registers its commands on `common.app` when imported.
from stream_worker.cli import dev, offline, serve  # noqa: F401
from stream_worker.cli.checkpoints import checkpoints_app
from stream_worker.cli.common import app
from stream_worker.cli.kafka import kafka_app, topics_app
from stream_worker.cli.models import app as models_app

__all__ = ["app", "main"]

app.add_typer(kafka_app, name="kafka")  # cli/kafka.py
app.add_typer(topics_app, name="topics")  # cli/kafka.py
app.add_typer(models_app, name="models")  # cli/models.py
app.add_typer(checkpoints_app, name="checkpoints")  # checkpoints on the Kafka topic (cli/checkpoints.py)


def main() -> None:
    """`python -m stream_worker`."""
    app(prog_name="streamrec")
