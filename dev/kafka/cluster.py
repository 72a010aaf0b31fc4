"""Apache Kafka brokers as child JVMs: the embedded default, the tests' cluster, the benchmark's broker.

    with KafkaCluster(nodes=3) as cluster:          # formats storage, starts, waits for metadata
        cluster.create_topic("orders", partitions=6)
        producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, ...)
        leader = cluster.kill_leader("orders", 0)   # SIGKILL; leadership moves
        cluster.start_node(leader)                  # back, and registered again

Each node is a combined broker and controller (KRaft, static quorum) started
from the jars `make kafka` resolved from Maven Central (`pom.xml` beside this
file), on loopback ports picked at start and kept for the cluster's life, so a
node restarts where the others expect it. Storage is formatted with the same
jars (`kafka.tools.StorageTool`): since Kafka 4.4 a newer tool's format is not
readable by an older broker. A node is ready when the cluster's metadata lists
it, which is what a client needs; start-up is never timed with sleeps.

Nothing outlives its owner. Each JVM runs in a process group of its own and
gets SIGKILL from Linux when this process dies (PR_SET_PDEATHSIG, set from one
long-lived spawner thread because the signal follows the thread that forked);
`close()` stops every node (SIGTERM, then SIGKILL past a deadline), an atexit
hook does the same for clusters never closed, and a node directory reused after
a crash (the embedded broker's data) first loses the JVM its pid file names.
When a node fails to start, the exception carries the tail of its own log.

Sized for a 2-core machine: a 512 MiB heap, two network and two I/O threads,
one of everything else, small internal topics. `python -m keystone_ingest.dev.kafka`
runs a cluster in the foreground.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from keystone_ingest.server.files import pid_alive

if TYPE_CHECKING:
    from confluent_kafka.admin import AdminClient

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.4.0"
MIN_JAVA = 17
LIBS_ENV = "KEYSTONE_KAFKA_LIBS"
# Where `make kafka` puts the broker's classpath, relative to the checkout.
DEFAULT_LIBS = Path(".cache") / "kafka" / "libs"
LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")
POM = Path(__file__).with_name("pom.xml")

HOST = "127.0.0.1"

# Broker settings for a small machine (2 cores): Kafka's defaults size thread
# pools and internal topics for servers with many cores and disks.
SMALL_MACHINE: dict[str, str] = {
    "num.network.threads": "2",
    "num.io.threads": "2",
    "background.threads": "2",
    "num.replica.fetchers": "1",
    "num.recovery.threads.per.data.dir": "1",
    "log.cleaner.threads": "1",
    # The cleaner allocates this up front; 128 MiB by default.
    "log.cleaner.dedupe.buffer.size": str(8 << 20),
    # 50 partitions each by default: every one is created, loaded and
    # replicated at start, which is most of a small cluster's start-up.
    "offsets.topic.num.partitions": "6",
    "transaction.state.log.num.partitions": "4",
    "share.coordinator.state.topic.num.partitions": "4",
    # Consumer groups of tests and the demo form without the 3 s pause.
    "group.initial.rebalance.delay.ms": "0",
    # Lets consumers (the Bronze workers in tests) use sessions of a second or
    # two, so a killed member leaves its group in seconds.
    "group.min.session.timeout.ms": "1000",
    # As on MSK: topics exist because someone created them, never by a typo.
    "auto.create.topics.enable": "false",
}

_PR_SET_PDEATHSIG = 1
_NODE_ID_BASE = 1


class KafkaUnavailable(RuntimeError):
    """Kafka cannot be started here: Java or the jars are missing, or a node failed to start."""


# --------------------------------------------------------------------------- prerequisites


def find_libs(libs: str | os.PathLike | None = None) -> Path:
    """The directory of the broker's jars: `libs`, else $KEYSTONE_KAFKA_LIBS,
    else .cache/kafka/libs under the current directory."""
    path = Path(libs or os.environ.get(LIBS_ENV) or DEFAULT_LIBS).expanduser()
    if not any(path.glob("kafka_2.13-*.jar")):
        raise KafkaUnavailable(
            f"no Apache Kafka jars in {path}: run `make kafka` in the repository (needs Java {MIN_JAVA}+ and "
            f"Maven), or set {LIBS_ENV} to a directory holding kafka_2.13-{KAFKA_VERSION}.jar and its dependencies"
        )
    return path.resolve()


def find_java() -> str:
    """The `java` of $JAVA_HOME or the PATH, checked to be Java 17 or newer."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home and (Path(home) / "bin" / "java").exists() else shutil.which("java")
    if java is None:
        raise KafkaUnavailable(
            f"no java found (JAVA_HOME or PATH): Apache Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+"
        )
    version = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    found = re.search(r'version "(\d+)(?:\.(\d+))?', version)
    major = int(found.group(1)) if found else 0
    if major == 1 and found and found.group(2):  # "1.8.0_392"
        major = int(found.group(2))
    if major < MIN_JAVA:
        raise KafkaUnavailable(f"{java} is Java {major or '?'}; Apache Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+")
    return java


def cluster_id() -> str:
    """A new KRaft cluster id: 16 random bytes, URL-safe base64 without padding
    (what `StorageTool random-uuid` prints, without starting a JVM for it).
    Like Kafka's own Uuid, never one starting with '-', which a command line
    would take for an option."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- processes

# PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the
# process; every JVM is forked from this one thread, which lives as long as the
# interpreter, so a node started from a short-lived thread is not killed with it.
_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-spawn")
# util-linux's setpriv sets the death signal and execs the JVM (same pid). It
# spares a Python preexec_fn, which forces a plain fork() of a process that may
# be running gRPC's threads (gRPC then warns on every start).
_SETPRIV = shutil.which("setpriv")
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") and not _SETPRIV else None


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: no Python imports or locks here.
    assert _libc is not None  # _spawn passes this as preexec_fn only when there is one
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _spawn(command: list[str], log_path: Path, cwd: Path) -> subprocess.Popen:
    if _SETPRIV:
        command = [_SETPRIV, "--pdeathsig", "KILL", "--", *command]

    def start() -> subprocess.Popen:
        with open(log_path, "ab") as out:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent if _libc is not None else None,
            )

    return _spawner.submit(start).result()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 200 * lines))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


# librdkafka logs every refused connection; while nodes start or stop that is expected.
_QUIET_LIBRDKAFKA = logging.getLogger(f"{__name__}.librdkafka")
_QUIET_LIBRDKAFKA.setLevel(logging.CRITICAL)

_live: set[KafkaCluster] = set()


@atexit.register
def _kill_leftovers() -> None:
    for cluster in list(_live):
        cluster.kill_all()


# --------------------------------------------------------------------------- cluster


@dataclass
class Node:
    """One combined broker+controller JVM and its directory."""

    node_id: int
    ports: dict[str, int]  # listener name -> port, CONTROLLER included
    dir: Path
    process: subprocess.Popen | None = None
    paused: bool = False
    started_at: float = 0.0

    @property
    def properties(self) -> Path:
        return self.dir / "node.properties"

    @property
    def log_file(self) -> Path:
        return self.dir / "logs" / "server.log"

    @property
    def jvm_out(self) -> Path:
        return self.dir / "jvm.out"

    @property
    def pid_file(self) -> Path:
        return self.dir / "kafka.pid"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass(eq=False)
class KafkaCluster:
    """`nodes` Apache Kafka nodes on loopback; see the module docstring.

    `data_dir`: where the nodes keep their logs and metadata; a directory that
    already holds a formatted cluster is reused (the embedded broker's data
    survives restarts). None: a temporary directory removed by `close()`.
    `listeners`: client listeners by name -> security protocol; the first is
    also the inter-broker listener and `bootstrap` names it. `config`: broker
    settings on top of the defaults. `format_args`: extra `StorageTool format`
    arguments (e.g. `--add-scram` credentials).
    """

    nodes: int = 1
    data_dir: str | os.PathLike | None = None
    libs: str | os.PathLike | None = None
    heap_mb: int = 512
    listeners: Mapping[str, str] = field(default_factory=lambda: {"PLAINTEXT": "PLAINTEXT"})
    config: Mapping[str, str] = field(default_factory=dict)
    format_args: Iterable[str] = ()
    ready_timeout_s: float = 120.0
    stop_timeout_s: float = 20.0
    # Kafka serves consumer groups (dev/embedded.py's EmbeddedBroker asks); unannotated, so not a field.
    consumer_groups = True

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError("a cluster needs at least one node")
        if "CONTROLLER" in self.listeners:
            raise ValueError("CONTROLLER is the controller listener's name; choose another")
        self._libs = find_libs(self.libs)
        self._java = find_java()
        self._temporary = self.data_dir is None
        self.root = Path(
            tempfile.mkdtemp(prefix="keystone-kafka-") if self.data_dir is None else self.data_dir
        ).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        names = [*self.listeners, "CONTROLLER"]
        self._nodes = {
            i: Node(i, {name: _free_port() for name in names}, self.root / f"node-{i}")
            for i in range(_NODE_ID_BASE, _NODE_ID_BASE + self.nodes)
        }
        self._admin: AdminClient | None = None
        self._lock = threading.Lock()

    # -- addresses

    def bootstrap_for(self, listener: str) -> str:
        return ",".join(f"{HOST}:{n.ports[listener]}" for n in self._nodes.values())

    @property
    def bootstrap(self) -> str:
        """Every node's address on the first (inter-broker) listener."""
        return self.bootstrap_for(next(iter(self.listeners)))

    @property
    def node_ids(self) -> list[int]:
        return list(self._nodes)

    def pids(self) -> dict[int, int]:
        """The JVM of each running node, by node id."""
        return {i: n.process.pid for i, n in self._nodes.items() if n.process is not None and n.running}

    # -- lifecycle

    def start(self) -> KafkaCluster:
        """Format what is not formatted yet, start every node, wait until the
        metadata lists them all. Raises KafkaUnavailable with the logs."""
        _live.add(self)
        try:
            self._format()
            for node in self._nodes.values():
                self._launch(node)
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> KafkaCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every node and forget a temporary data_dir. Data that is kept
        gets a graceful stop (SIGTERM; SIGKILL past stop_timeout_s); data about
        to be deleted does not need one: SIGKILL, which takes no time where a
        graceful stop of a whole cluster takes ~6 s (each controller waits for
        the quorum that is leaving with it)."""
        self._stop(list(self._nodes.values()), 0.0 if self._temporary else self.stop_timeout_s)
        _live.discard(self)
        if self._temporary:
            shutil.rmtree(self.root, ignore_errors=True)

    def kill_all(self) -> None:
        for node in self._nodes.values():
            if node.process is not None:
                _signal_group(node.process, signal.SIGKILL)

    # -- one node at a time (tests)

    def stop_node(self, node_id: int) -> None:
        """Graceful stop (SIGTERM: controlled shutdown, leadership handed over)."""
        self._stop([self._node(node_id)], self.stop_timeout_s)

    def kill_node(self, node_id: int) -> None:
        """SIGKILL: no controlled shutdown; the controller notices the missed heartbeats."""
        self._stop([self._node(node_id)], 0.0)

    def pause_node(self, node_id: int) -> None:
        """SIGSTOP: the node keeps its connections open and answers nothing."""
        node = self._node(node_id)
        if node.process is None:
            raise RuntimeError(f"node {node_id} was never started")
        _signal_group(node.process, signal.SIGSTOP)
        node.paused = True

    def resume_node(self, node_id: int) -> None:
        node = self._node(node_id)
        if node.process is None:
            raise RuntimeError(f"node {node_id} was never started")
        _signal_group(node.process, signal.SIGCONT)
        node.paused = False

    def start_node(self, node_id: int) -> None:
        """Start a stopped node again (same id, ports and data); wait until it is registered."""
        node = self._node(node_id)
        if node.running:
            raise RuntimeError(f"node {node_id} is running")
        self._launch(node)
        self.wait_ready([node_id])

    def stop_all(self) -> None:
        self._stop(list(self._nodes.values()), self.stop_timeout_s)

    def start_all(self) -> None:
        """Start every node that is not running and wait for all of them."""
        for node in self._nodes.values():
            if node.paused:
                self.resume_node(node.node_id)
            if not node.running:
                self._launch(node)
        self.wait_ready()

    def kill_leader(self, topic: str, partition: int) -> int:
        """SIGKILL the current leader of topic-partition; return its node id."""
        leader = self.leader(topic, partition)
        self.kill_node(leader)
        return leader

    def log_tail(self, node_id: int, lines: int = 60) -> str:
        node = self._node(node_id)
        return "\n".join(filter(None, [_tail(node.log_file, lines), _tail(node.jvm_out, 20)]))

    # -- metadata and topics

    def metadata(self, topic: str | None = None, timeout_s: float = 5.0, via: int | None = None):
        """The cluster's metadata (confluent-kafka ClusterMetadata) as one node
        sees it; `via`: ask that node (a client of its own, so a paused node
        elsewhere cannot hold the request)."""
        if via is None:
            return self._admin_client().list_topics(topic, timeout=timeout_s)
        from confluent_kafka.admin import AdminClient

        node = self._node(via)
        client = AdminClient(
            {"bootstrap.servers": f"{HOST}:{node.ports[next(iter(self.listeners))]}"}, logger=_QUIET_LIBRDKAFKA
        )
        return client.list_topics(topic, timeout=timeout_s)

    def leader(self, topic: str, partition: int, timeout_s: float = 30.0, via: int | None = None) -> int:
        """The node leading topic-partition now (waits while it has none), as
        the cluster or node `via` sees it."""

        def leader_now() -> int | None:
            found = self._partition(topic, partition, via).leader
            return found if found >= 0 else None

        return self._wait(leader_now, timeout_s, f"a leader for {topic}-{partition}")

    def in_sync(self, topic: str, partition: int) -> list[int]:
        return list(self._partition(topic, partition).isrs)

    def create_topic(
        self,
        name: str,
        partitions: int = 6,
        replication: int | None = None,
        config: Mapping[str, str] | None = None,
        assignment: list[list[int]] | None = None,
        timeout_s: float = 30.0,
    ) -> str:
        """Create a topic and wait until every partition has a leader.
        `assignment`: replica node ids per partition (instead of partitions/replication)."""
        from confluent_kafka.admin import NewTopic

        if assignment is not None:
            # confluent-kafka wants the partition count beside an assignment (and no replication factor).
            topic = NewTopic(
                name, num_partitions=len(assignment), replica_assignment=assignment, config=dict(config or {})
            )
        else:
            topic = NewTopic(name, partitions, replication or min(3, self.nodes), config=dict(config or {}))
        self._admin_client().create_topics([topic], operation_timeout=timeout_s)[name].result(timeout=timeout_s)
        count = len(assignment) if assignment is not None else partitions
        self._wait(lambda: self._all_led(name, count), timeout_s, f"leaders for every partition of {name}")
        return name

    def new_topic(
        self,
        prefix: str = "t",
        partitions: int = 6,
        replication: int | None = None,
        config: Mapping[str, str] | None = None,
    ) -> str:
        """Create `<prefix>-<random>` (so tests sharing a cluster never share a topic); return its name."""
        return self.create_topic(f"{prefix}-{uuid.uuid4().hex[:12]}", partitions, replication, config)

    def wait_in_sync(self, topics: Iterable[str] | None = None, timeout_s: float = 60.0) -> None:
        """Wait until every replica of every partition of `topics` (default:
        every topic) is in sync: after a node comes back, acks=all needs its
        followers to catch up before min.insync.replicas is met again."""
        wanted = None if topics is None else list(topics)

        def all_in_sync() -> bool | None:
            found = self.metadata().topics if wanted is None else {t: self.metadata(t).topics[t] for t in wanted}
            for meta in found.values():
                if meta.error is not None or not meta.partitions:
                    return None
                if any(sorted(p.isrs) != sorted(p.replicas) for p in meta.partitions.values()):
                    return None
            return True

        self._wait(all_in_sync, timeout_s, f"every replica of {wanted or 'every topic'} in sync")

    def wait_ready(self, node_ids: Iterable[int] | None = None, timeout_s: float | None = None) -> None:
        """Wait until each of `node_ids` (default: all) answers a metadata
        request on its own listener and names itself a live broker in it. A
        node opens its client listeners only once it has caught up with the
        cluster's metadata and is unfenced, so that answer means it takes work."""
        waiting = set(self._nodes if node_ids is None else node_ids)
        timeout_s = timeout_s or self.ready_timeout_s
        deadline = time.monotonic() + timeout_s
        while waiting:
            for node_id in sorted(waiting):
                node = self._nodes[node_id]
                if not node.running:
                    code = None if node.process is None else node.process.returncode
                    raise KafkaUnavailable(
                        f"Kafka node {node_id} exited with code {code} "
                        f"during start-up; its log:\n{self.log_tail(node_id)}"
                    )
                if self._answers(node):
                    waiting.discard(node_id)
                    log.info(
                        "kafka node ready",
                        extra={
                            "node": node_id,
                            "bootstrap": self.bootstrap,
                            "start_s": round(time.monotonic() - node.started_at, 2),
                        },
                    )
            if waiting and time.monotonic() > deadline:
                logs = "\n\n".join(f"--- node {i}:\n{self.log_tail(i)}" for i in sorted(waiting))
                raise KafkaUnavailable(
                    f"Kafka nodes {sorted(waiting)} did not answer within {timeout_s} s; their logs:\n{logs}"
                )

    def _answers(self, node: Node) -> bool:
        """Ask `node` alone for metadata (it is the client's only bootstrap
        address, so the answer is its own); wait up to a second for it."""
        from confluent_kafka.admin import AdminClient

        client = AdminClient(
            {"bootstrap.servers": f"{HOST}:{node.ports[next(iter(self.listeners))]}"}, logger=_QUIET_LIBRDKAFKA
        )
        try:
            return node.node_id in client.list_topics(timeout=1.0).brokers
        except Exception:
            return False

    # -- internals

    def _node(self, node_id: int) -> Node:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise ValueError(f"no node {node_id}; nodes are {self.node_ids}") from None

    def _partition(self, topic: str, partition: int, via: int | None = None):
        meta = self.metadata(topic, via=via).topics[topic]
        if meta.error is not None:
            raise KafkaUnavailable(f"metadata of {topic}: {meta.error}")
        return meta.partitions[partition]

    def _all_led(self, topic: str, count: int) -> bool | None:
        meta = self.metadata(topic).topics.get(topic)
        if meta is None or meta.error is not None or len(meta.partitions) < count:
            return None
        return all(p.leader >= 0 for p in meta.partitions.values()) or None

    def _wait(self, probe, timeout_s: float, what: str):
        deadline = time.monotonic() + timeout_s
        error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                found = probe()
            except Exception as exc:
                error, found = exc, None
            if found is not None:
                return found
            time.sleep(0.1)  # metadata changes asynchronously: ask again
        raise KafkaUnavailable(f"no {what} within {timeout_s} s" + (f" (last error: {error})" if error else ""))

    def _admin_client(self):
        from confluent_kafka.admin import AdminClient

        with self._lock:
            if self._admin is None:
                self._admin = AdminClient(
                    {"bootstrap.servers": self.bootstrap, "reconnect.backoff.max.ms": 500}, logger=_QUIET_LIBRDKAFKA
                )
            return self._admin

    def _properties(self, node: Node) -> str:
        voters = ",".join(f"{n.node_id}@{HOST}:{n.ports['CONTROLLER']}" for n in self._nodes.values())
        protocols = {**self.listeners, "CONTROLLER": "PLAINTEXT"}
        replicas = min(3, self.nodes)
        settings = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": ",".join(f"{name}://{HOST}:{port}" for name, port in node.ports.items()),
            "advertised.listeners": ",".join(f"{name}://{HOST}:{node.ports[name]}" for name in self.listeners),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": next(iter(self.listeners)),
            "listener.security.protocol.map": ",".join(f"{k}:{v}" for k, v in protocols.items()),
            "log.dirs": str(node.dir / "data"),
            "default.replication.factor": str(replicas),
            "min.insync.replicas": str(min(2, replicas)),
            "offsets.topic.replication.factor": str(replicas),
            "transaction.state.log.replication.factor": str(replicas),
            "transaction.state.log.min.isr": str(min(2, replicas)),
            "share.coordinator.state.topic.replication.factor": str(replicas),
            "share.coordinator.state.topic.min.isr": str(min(2, replicas)),
            **SMALL_MACHINE,
            **self.config,
        }
        return "".join(f"{k}={v}\n" for k, v in settings.items())

    def _classpath(self) -> str:
        return str(self._libs / "*")

    def _write_config(self, node: Node) -> None:
        (node.dir / "logs").mkdir(parents=True, exist_ok=True)
        node.properties.write_text(self._properties(node))

    def _format(self) -> None:
        """Format every node's storage that is not formatted yet, in parallel
        (one JVM each, ~2 s), all with one cluster id kept in the data dir."""
        id_file = self.root / "cluster.id"
        if not id_file.exists():
            id_file.write_text(cluster_id())
        cid = id_file.read_text().strip()
        pending = []
        for node in self._nodes.values():
            self._write_config(node)
            if (node.dir / "data" / "meta.properties").exists():
                continue
            command = [
                self._java,
                "-Xmx256m",
                f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
                f"-Dkafka.logs.dir={node.dir / 'logs'}",
                "-cp",
                self._classpath(),
                "kafka.tools.StorageTool",
                "format",
                "-c",
                str(node.properties),
                "-t",
                cid,
                *self.format_args,
            ]
            pending.append((node, _spawn(command, node.dir / "format.out", node.dir)))
        for node, process in pending:
            if process.wait(timeout=120) != 0:
                raise KafkaUnavailable(
                    f"formatting Kafka storage of node {node.node_id} failed "
                    f"(exit {process.returncode}):\n{_tail(node.dir / 'format.out', 40)}"
                )

    def _launch(self, node: Node) -> None:
        self._write_config(node)
        self._kill_stale(node)
        half = max(64, self.heap_mb // 2)
        command = [
            self._java,
            f"-Xms{half}m",
            f"-Xmx{self.heap_mb}m",
            # The stock start script's collector settings: short pauses keep
            # produce latency flat.
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={node.dir / 'logs'}",
            "-cp",
            self._classpath(),
            "kafka.Kafka",
            str(node.properties),
        ]
        node.process = _spawn(command, node.jvm_out, node.dir)
        node.paused = False
        node.started_at = time.monotonic()
        node.pid_file.write_text(str(node.process.pid))
        log.debug("kafka node started", extra={"node": node.node_id, "pid": node.process.pid})

    def _kill_stale(self, node: Node) -> None:
        """A JVM left on this node's directory by an owner that died (its pid
        file names it) holds the data directory's lock: kill it first."""
        try:
            pid = int(node.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if b"kafka.Kafka" not in cmdline or str(node.properties).encode() not in cmdline:
            return
        log.warning("killing a Kafka node left running by an earlier owner", extra={"pid": pid, "node": node.node_id})
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # an orphan is reaped by init, not by us: nothing to wait() on

    def _stop(self, nodes: list[Node], timeout_s: float) -> None:
        """SIGTERM every node at once, SIGKILL those still running after timeout_s."""
        running = [(n, n.process) for n in nodes if n.process is not None and n.process.poll() is None]
        for node, process in running:
            if node.paused:
                _signal_group(process, signal.SIGCONT)
                node.paused = False
            _signal_group(process, signal.SIGTERM if timeout_s > 0 else signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        for node, process in running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()) if timeout_s > 0 else None)
            except subprocess.TimeoutExpired:
                log.warning("kafka node did not stop in time: killed", extra={"node": node.node_id})
                _signal_group(process, signal.SIGKILL)
                process.wait()
            with contextlib.suppress(FileNotFoundError):
                node.pid_file.unlink()
