"""The Grafana dashboard: portable (datasource variable, no datasource uid), and every query runs
against a real Prometheus scraping a real worker and trainer during a short stream."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from stream_worker.devtools.replay import publish_events
from stream_worker.devtools.synthetic import SyntheticWorld
from stream_worker.kafka.local import free_port
from stream_worker.kafka.topics import ensure_topics
from stream_worker.trainer.service import Trainer
from tests.deploy.conftest import DEPLOY, prometheus_path
from tests.integration.kafka_helpers import drained, running_worker, train_synthetic_model, wait_until

DASHBOARD = json.loads((DEPLOY / "grafana" / "streamrec.json").read_text())
# Grafana's built-in variables, as Grafana would fill them in for a short time range.
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__interval": "15s", "$__range": "5m"}
# Every metric the dashboard shows exists; none is excused from returning series.
PENDING_METRICS: set[str] = set()
WORLD = SyntheticWorld(n_users=60, n_items=150, seed=5)


def panels() -> list[dict]:
    return [p for p in DASHBOARD["panels"] if p["type"] != "row"]


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana's variables filled in) for every target of every panel."""
    out = []
    for panel in panels():
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            out.append((panel["title"], expr))
    return out


def test_the_dashboard_uses_a_datasource_variable_and_no_fixed_datasource():
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    datasources = [p["datasource"] for p in panels()] + [t["datasource"] for p in panels() for t in p["targets"]]
    assert datasources and all(d == {"type": "prometheus", "uid": "${datasource}"} for d in datasources)
    assert all("$" not in expr for _, expr in queries()), "a query uses a variable the test does not fill in"
    assert len({p["id"] for p in DASHBOARD["panels"]}) == len(DASHBOARD["panels"])


def test_the_dashboard_page_lists_every_panel():
    page = (Path(__file__).resolve().parents[2] / "docs" / "operations" / "dashboard.md").read_text()
    for panel in panels():
        assert f"**{panel['title']}**" in page, f"docs/operations/dashboard.md lacks the panel {panel['title']!r}"


# --- the live check ------------------------------------------------------------------------


class Prometheus:
    """A real Prometheus (Debian's package) on 127.0.0.1, scraping the given jobs every second."""

    def __init__(self, home: Path, jobs: dict[str, int]) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]} for job, port in jobs.items()
            ],
        }
        (home / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log = (home / "prometheus.log").open("w")
        self.process = subprocess.Popen(
            [
                prometheus_path(),
                f"--config.file={home / 'prometheus.yml'}",
                f"--storage.tsdb.path={home / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)
        wait_until(self._ready, 60, "Prometheus to become ready")

    def _ready(self) -> bool:
        assert self.process.poll() is None, f"prometheus exited; see {self.log.name}"
        try:
            return self.api.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def query(self, expr: str) -> list[dict]:
        """The instant query's result; fails the test on a PromQL error."""
        response = self.api.get("/api/v1/query", params={"query": expr})
        body = response.json()
        assert body["status"] == "success", f"Prometheus rejected {expr!r}: {body.get('error')}"
        return body["data"]["result"]

    def close(self) -> None:
        self.api.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            self.log.close()


@pytest.fixture
def prometheus_scraping(tmp_path: Path) -> Iterator[tuple[Prometheus, int, int]]:
    ports = free_port(), free_port()
    prometheus = Prometheus(tmp_path, {"streamrec-worker-metrics": ports[0], "streamrec-trainer-metrics": ports[1]})
    try:
        yield prometheus, *ports
    finally:
        prometheus.close()


@contextmanager
def running_trainer(trainer: Trainer) -> Iterator[Trainer]:
    """The trainer's own loop (a round at once, then every interval) on a thread, with its /metrics."""
    thread = threading.Thread(target=trainer.run, name="trainer-under-test", daemon=True)
    thread.start()
    try:
        yield trainer
    finally:
        trainer.stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the trainer did not stop within 60s"


ROUND_RESULTS = ("promoted", "rejected", "skipped", "failed")


def referenced_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:streamrec|process)_[a-z_]+)", expr))


@pytest.mark.integration
def test_every_dashboard_query_returns_series_from_a_real_worker_and_trainer(make_settings, prometheus_scraping):
    prometheus, worker_port, trainer_port = prometheus_scraping
    settings = make_settings(
        metrics_port=worker_port,
        trainer_metrics_port=trainer_port,
        metrics_host="127.0.0.1",
        kafka_stats_interval_ms=500,
        trainer_min_events=100,
        trainer_epochs=3,
        trainer_interval_s=3600.0,  # one round at start is all this test needs
        promotion_margin=1.0,  # always promoted: the gate has its own tests, this one needs a swap to v2
    )
    ensure_topics(settings, partitions=3)
    train_synthetic_model(WORLD, settings.model_dir, n_events=5000, epochs=5)
    now_ms = int(time.time() * 1000)
    publish_events(settings, WORLD.events(1500, seed=1, start_ms=now_ms - 30_000))

    with running_worker(settings) as worker:
        wait_until(lambda: drained(settings), 60, "the worker to drain the events")
        with running_trainer(Trainer(settings, CollectorRegistry())) as trainer:
            rounds = {result: trainer.metrics.rounds.labels(result) for result in ROUND_RESULTS}
            wait_until(lambda: any(c._value.get() for c in rounds.values()), 120, "the trainer's first round")
            finished = {result: c._value.get() for result, c in rounds.items()}
            assert finished["promoted"] == 1, f"the first round did not promote v2: {finished}"
            assert trainer.metrics.model_version._value.get() == 2
            wait_until(lambda: worker.inference.model_version == 2, 60, "the worker to swap in v2")
            # Events after the swap: the rate panels then have samples on both sides of the window.
            publish_events(settings, WORLD.events(1000, seed=2, start_ms=int(time.time() * 1000)))
            wait_until(lambda: drained(settings), 60, "the worker to drain the second events")
            wait_until(
                lambda: (
                    bool(prometheus.query("streamrec_model_version == 2"))
                    and bool(prometheus.query("streamrec_trainer_rounds_total{result=~'promoted|rejected'} > 0"))
                    and bool(prometheus.query("sum(streamrec_consumer_lag_messages)"))
                ),
                30,
                "Prometheus to scrape the swap, the finished round and the consumer lag",
            )
            exposed = {series["metric"]["__name__"] for series in prometheus.query('{__name__=~"streamrec_.+"}')}

            empty: list[str] = []

            def every_query_answers() -> bool:
                empty.clear()
                for title, expr in queries():
                    if prometheus.query(expr):  # a PromQL error fails the test right here
                        continue
                    if referenced_metrics(expr) & (PENDING_METRICS - exposed):
                        continue
                    empty.append(f"{title}: {expr}")
                return not empty

            try:
                wait_until(every_query_answers, 30, "every dashboard query to return series")
            except AssertionError:
                pytest.fail("dashboard queries with no series:\n" + "\n".join(empty))
    assert len(queries()) >= 25
