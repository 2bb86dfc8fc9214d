"""A real single-node Apache Kafka (KRaft) on 127.0.0.1, run from jars Maven fetches.

For development, tests and the demo on machines without Docker:

    LocalKafka(port=9092).start()   # fetches jars once, formats storage once, waits until ready
    LocalKafka(port=9092).stop()    # SIGTERM, then SIGKILL after a grace period; no process left

Everything lives under one home folder (default `~/.cache/streamrec/kafka`):
`jars/` (shared by all ports), and per port `broker-<port>/` with the data, server.log,
server.properties and the pid file. Both calls are idempotent.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from importlib import resources
from pathlib import Path

# The broker's pom and log4j config ship inside the package (a link to deploy/kafka in a
# checkout, files in the wheel), so a pip-installed streamrec runs a local broker too.
BROKER_FILES = Path(str(resources.files("stream_worker.kafka") / "broker"))
POM = BROKER_FILES / "pom.xml"
LOG4J_CONFIG = BROKER_FILES / "log4j2.properties"
# Jars and local brokers live in the user's cache, shared by checkouts and installs.
DEFAULT_HOME = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "streamrec" / "kafka"
JAVA_MAIN = "kafka.Kafka"

SERVER_PROPERTIES = """\
# Written by streamrec (stream_worker/kafka/local.py) for a local single-node broker.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data_dir}
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=168
"""


# Appended to SERVER_PROPERTIES when the broker authenticates clients (later keys win in a
# properties file): clients use SASL_PLAINTEXT with SCRAM-SHA-512, the controller stays PLAINTEXT
# on 127.0.0.1. The first user is the broker's own identity on its listener.
SASL_PROPERTIES = """\
# SASL/SCRAM-SHA-512 for clients (LocalKafka(sasl_users=...)); credentials were stored at format time.
listeners=SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{port}
listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required username="{user}" password="{password}";
"""
# Appended as well with LocalKafka(acls=True): only ACLs grant anything, except to super users: the
# first SASL user and ANONYMOUS, the principal of the PLAINTEXT controller listener on 127.0.0.1
# (the broker half of this node talks to its controller half there; KRaft needs it to be allowed).
ACL_PROPERTIES = """\
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:{user};User:ANONYMOUS
allow.everyone.if.no.acl.found=false
"""
SCRAM_MECHANISM = "SCRAM-SHA-512"
# Names and passwords go into `--add-scram 'SCRAM-SHA-512=[name=..,password=..]'` and a JAAS line
# unescaped, so they are kept to characters that need no quoting in either.
_SAFE_CREDENTIAL = re.compile(r"^[A-Za-z0-9_.@+-]{1,128}$")


class KafkaStartError(Exception):
    """The local broker could not be started; the message says why and where its log is."""

    exit_code = 1  # the command line exits with it: a runtime error


class LocalKafka:
    def __init__(
        self,
        port: int = 9092,
        home: Path = DEFAULT_HOME,
        heap: str = "512m",
        jars: Path | None = None,
        sasl_users: dict[str, str] | None = None,
        acls: bool = False,
    ) -> None:
        """`sasl_users` (name -> password): clients must log in with SCRAM-SHA-512 as one of them.
        The credentials are stored when the data folder is formatted (the first start), so later
        starts of the same folder must name the same users. `acls`: the other users may do only
        what ACLs (created by the first user) allow."""
        if acls and not sasl_users:
            raise ValueError("ACLs need SASL users: pass sasl_users too")
        self.acls = acls
        for name, password in (sasl_users or {}).items():
            if not (_SAFE_CREDENTIAL.match(name) and _SAFE_CREDENTIAL.match(password)):
                raise ValueError(f"SASL user {name!r}: names and passwords may use only letters, digits and _.@+-")
        self.sasl_users = dict(sasl_users or {})
        self.port = port
        self.controller_port = port + 1
        self.home = Path(home)
        self.heap = heap
        self.jars = Path(jars) if jars else self.home / "jars"
        self.base = self.home / f"broker-{port}"
        self.data_dir = self.base / "data"
        self.pid_file = self.base / "broker.pid"
        self.log_file = self.base / "server.log"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    # --- public ------------------------------------------------------------------------------

    def start(self, timeout_s: float = 90.0) -> bool:
        """Start the broker unless it runs; returns False if it was already running."""
        if self.running():
            return False
        if _port_open(self.port):
            raise KafkaStartError(
                f"port {self.port} is taken by another process; stop it or choose another port (--port)"
            )
        self.fetch_jars()
        self.base.mkdir(parents=True, exist_ok=True)
        properties = self.base / "server.properties"
        properties.write_text(
            SERVER_PROPERTIES.format(port=self.port, controller_port=self.controller_port, data_dir=self.data_dir)
            + self._sasl_properties()
        )
        properties.chmod(0o600)  # it may hold the broker's SASL password
        if not (self.data_dir / "meta.properties").exists():
            # "=" because a random id may start with "-", which would read as an option.
            self._java(
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={_cluster_id()}",
                "-c",
                str(properties),
                *self._scram_format_args(),
                check=True,
            )
        with open(self.base / "stdout.log", "ab") as out:
            process = subprocess.Popen(
                self._java_command(JAVA_MAIN, str(properties)),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the CLI that started it; not killed by its Ctrl+C
            )
        self.pid_file.write_text(str(process.pid))
        self._wait_ready(process, timeout_s)
        return True

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the broker if it runs; returns False if it was not running."""
        pid = self._pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while process_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)
            while process_alive(pid):
                time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return True

    def running(self) -> bool:
        return self._pid() is not None and _port_open(self.port)

    def destroy(self) -> None:
        """Stop and delete this port's data (the jars stay)."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def fetch_jars(self) -> None:
        if self.jars.is_dir() and any(self.jars.glob("kafka_2.13-*.jar")):
            return
        if shutil.which("mvn") is None:
            raise KafkaStartError(
                "Maven (mvn) is needed once to fetch the Kafka jars; install it (e.g. apt install maven)"
            )
        staging = self.jars.with_name("jars.partial")
        shutil.rmtree(staging, ignore_errors=True)
        result = subprocess.run(
            ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies", f"-DoutputDirectory={staging}"],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise KafkaStartError(f"fetching the Kafka jars with Maven failed:\n{result.stdout}{result.stderr}")
        staging.rename(self.jars)

    def client_options(self) -> dict[str, str]:
        """librdkafka settings to log in as the first SASL user ({} for a PLAINTEXT broker)."""
        if not self.sasl_users:
            return {}
        user, password = next(iter(self.sasl_users.items()))
        return {
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": SCRAM_MECHANISM,
            "sasl.username": user,
            "sasl.password": password,
        }

    # --- internals ---------------------------------------------------------------------------

    def _sasl_properties(self) -> str:
        if not self.sasl_users:
            return ""
        user, password = next(iter(self.sasl_users.items()))
        sasl = SASL_PROPERTIES.format(
            port=self.port, controller_port=self.controller_port, user=user, password=password
        )
        return sasl + (ACL_PROPERTIES.format(user=user) if self.acls else "")

    def _scram_format_args(self) -> list[str]:
        """`--add-scram` per user: KRaft stores SCRAM credentials in the metadata log from format time on."""
        return [
            f"--add-scram={SCRAM_MECHANISM}=[name={name},password={password}]"
            for name, password in self.sasl_users.items()
        ]

    def _java_command(self, main_class: str, *args: str) -> list[str]:
        return [
            shutil.which("java") or "java",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={self.base}",
            "-cp",
            f"{self.jars}/*",
            main_class,
            *args,
        ]

    def _java(self, main_class: str, *args: str, check: bool) -> None:
        result = subprocess.run(self._java_command(main_class, *args), capture_output=True, text=True)
        if check and result.returncode != 0:
            raise KafkaStartError(f"{main_class} {' '.join(args)} failed:\n{result.stdout}{result.stderr}")

    def pid(self) -> int | None:
        """The broker's process id while it runs."""
        return self._pid()

    def _pid(self) -> int | None:
        """The broker's pid if our pid file names a live Kafka process, else None (stale file removed)."""
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        if process_alive(pid) and JAVA_MAIN in _cmdline(pid):
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def _wait_ready(self, process: subprocess.Popen[bytes], timeout_s: float) -> None:
        from confluent_kafka.admin import AdminClient

        deadline = time.monotonic() + timeout_s
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0, **self.client_options()})
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise KafkaStartError(f"the broker exited with code {process.returncode}; see {self.log_file}")
            if _port_open(self.port):
                try:
                    metadata = admin.list_topics(timeout=2)
                    if metadata.brokers:
                        return
                except Exception:  # not ready to answer metadata yet
                    pass
            time.sleep(0.25)
        self.stop()
        raise KafkaStartError(f"the broker did not become ready within {timeout_s:.0f}s; see {self.log_file}")


def _cluster_id() -> str:
    """A random Kafka cluster id: 16 bytes, URL-safe base64 without padding (as `random-uuid` prints)."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) still answers kill(0).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now, whose next port is free too (the controller's)."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < 65535 and not _port_open(port + 1):
            return port
    raise RuntimeError("no free pair of ports found on 127.0.0.1")
