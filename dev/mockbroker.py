"""librdkafka's mock Kafka cluster in a helper process: for the few tests that
need an error code a real broker cannot produce on demand, and for
`serve --dev-broker mock` on machines without Java. It is not Kafka (see below):
everything else runs against Apache Kafka (`keystone_ingest.dev.kafka`).

librdkafka (bundled in confluent-kafka's wheel) contains a mock cluster that
speaks the real Kafka protocol on localhost: producing (idempotent and
transactional), fetching, consumer groups, metadata with automatic topic
creation, broker down/up and injected request errors. It does not implement
CreateTopics, and each partition keeps only its newest 5 MiB / 100,000 record
batches (older batches are dropped from the log, the high watermark keeps
counting). Auto-created topics get 4 partitions; create topics up front
(`--topics`, `create_topic`) to choose. It checks producer sequence numbers
only for transactional producers: when an idempotent producer retries a Produce
request the broker had already appended (its answer delayed past the client's
request timeout, `set_rtt`), the records are appended again, where a real
broker would drop the copy. Injected errors are answered before anything is
appended, so retries after them never duplicate. Once a broker has had
broker-level errors for an API (`broker_push_request_error_rtts`), it ignores
cluster-level errors for that API (`push_request_errors`) for good, even when
its own list is empty: do not mix the two on one API of one broker.

It runs in its own process, not in the caller's, so a test or the server can
stop, slow down or break "the cluster" without touching its own threads, and so
a crash of either side cannot take the other down.

    python -m keystone_ingest.dev.mockbroker --brokers 3 --partitions 6 --topics orders,orders.dlq

prints one JSON line once the brokers listen,
``{"bootstrap": "127.0.0.1:PORT,...", "brokers": [1, 2, 3]}``, then answers
one JSON line per JSON-line command read on stdin (``{"op": "ping"}``; see
`Controller` for every op). A bad command gets ``{"ok": false, "error": ...}``
and the process carries on. It exits, destroying the cluster, when stdin
closes, on SIGTERM/SIGINT, and when its parent process dies.

`MockBroker` starts and drives that process from Python:

    with MockBroker(brokers=3, partitions=6, topics=["orders"]) as broker:
        producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, ...)
        broker.all_down(); ...; broker.all_up()

Its methods block for well under a millisecond (one pipe round trip), so
calling them from a coroutine is fine.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import importlib.util
import json
import logging
import os
import queue
import select
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Sequence
from typing import Any

log = logging.getLogger(__name__)

# Kafka protocol request types by name (the ApiKey numbers are part of the protocol).
API_KEYS: dict[str, int] = {
    "Produce": 0,
    "Fetch": 1,
    "ListOffsets": 2,
    "Metadata": 3,
    "OffsetCommit": 8,
    "OffsetFetch": 9,
    "FindCoordinator": 10,
    "JoinGroup": 11,
    "Heartbeat": 12,
    "LeaveGroup": 13,
    "SyncGroup": 14,
    "DescribeGroups": 15,
    "ListGroups": 16,
    "SaslHandshake": 17,
    "ApiVersions": 18,
    "CreateTopics": 19,
    "DeleteRecords": 21,
    "InitProducerId": 22,
    "OffsetForLeaderEpoch": 23,
    "AddPartitionsToTxn": 24,
    "AddOffsetsToTxn": 25,
    "EndTxn": 26,
    "TxnOffsetCommit": 28,
    "DescribeConfigs": 32,
    "SaslAuthenticate": 36,
}

# Names used by newer Kafka versions for codes librdkafka still names the old way.
_ERROR_ALIASES = {"NOT_LEADER_OR_FOLLOWER": "NOT_LEADER_FOR_PARTITION"}

_PR_SET_PDEATHSIG = 1
_READY_TIMEOUT_S = 15.0


# --------------------------------------------------------------------------- librdkafka


def find_librdkafka() -> str:
    """Path of the librdkafka shipped inside the installed confluent-kafka wheel.

    The wheel's file name carries a build hash (librdkafka-<hash>.so.1), so it is
    looked up next to the package rather than hard-coded.
    """
    spec = importlib.util.find_spec("confluent_kafka")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("confluent-kafka is not installed; the mock broker needs its bundled librdkafka")
    pkg_dir = next(iter(spec.submodule_search_locations))
    site = os.path.dirname(pkg_dir)
    patterns = [
        os.path.join(site, "confluent_kafka.libs", "librdkafka*.so*"),  # manylinux (auditwheel)
        os.path.join(pkg_dir, ".dylibs", "librdkafka*.dylib"),  # macOS (delocate)
        os.path.join(site, "confluent_kafka.libs", "librdkafka*.dll"),  # Windows (delvewheel)
    ]
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise RuntimeError(f"no librdkafka found next to confluent_kafka in {site}")


class _ErrDesc(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int), ("name", ctypes.c_char_p), ("desc", ctypes.c_char_p)]


class _Lib:
    """ctypes bindings for the part of librdkafka's mock API we use
    (signatures from src/rdkafka_mock.h; the API is marked experimental, so
    every function is bound here, in one place)."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        p, i, i16, i32, i64, sz = (
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int16,
            ctypes.c_int32,
            ctypes.c_int64,
            ctypes.c_size_t,
        )

        def bind(name: str, restype: Any, *argtypes: Any) -> Any:
            fn = getattr(lib, name)
            fn.restype = restype
            fn.argtypes = list(argtypes)
            return fn

        self.conf_new = bind("rd_kafka_conf_new", p)
        self.conf_set = bind("rd_kafka_conf_set", i, p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, sz)
        self.new = bind("rd_kafka_new", p, i, p, ctypes.c_char_p, sz)
        self.destroy = bind("rd_kafka_destroy", None, p)
        self.err2name = bind("rd_kafka_err2name", ctypes.c_char_p, i)
        self.get_err_descs = bind(
            "rd_kafka_get_err_descs", None, ctypes.POINTER(ctypes.POINTER(_ErrDesc)), ctypes.POINTER(sz)
        )
        self.cluster_new = bind("rd_kafka_mock_cluster_new", p, p, i)
        self.cluster_destroy = bind("rd_kafka_mock_cluster_destroy", None, p)
        self.cluster_bootstraps = bind("rd_kafka_mock_cluster_bootstraps", ctypes.c_char_p, p)
        self.topic_create = bind("rd_kafka_mock_topic_create", i, p, ctypes.c_char_p, i, i)
        self.topic_set_error = bind("rd_kafka_mock_topic_set_error", None, p, ctypes.c_char_p, i)
        self.partition_set_leader = bind("rd_kafka_mock_partition_set_leader", i, p, ctypes.c_char_p, i32, i32)
        self.broker_set_down = bind("rd_kafka_mock_broker_set_down", i, p, i32)
        self.broker_set_up = bind("rd_kafka_mock_broker_set_up", i, p, i32)
        self.broker_set_rtt = bind("rd_kafka_mock_broker_set_rtt", i, p, i32, i)
        self.push_request_errors_array = bind(
            "rd_kafka_mock_push_request_errors_array", None, p, i16, sz, ctypes.POINTER(ctypes.c_int)
        )
        self.clear_request_errors = bind("rd_kafka_mock_clear_request_errors", None, p, i16)
        self.broker_error_stack_cnt = bind("rd_kafka_mock_broker_error_stack_cnt", i, p, i32, i16, ctypes.POINTER(sz))
        self.set_apiversion = bind("rd_kafka_mock_set_apiversion", i, p, i16, i16, i16)
        self.start_request_tracking = bind("rd_kafka_mock_start_request_tracking", None, p)
        self.stop_request_tracking = bind("rd_kafka_mock_stop_request_tracking", None, p)
        self.clear_requests = bind("rd_kafka_mock_clear_requests", None, p)
        self.get_requests = bind("rd_kafka_mock_get_requests", ctypes.POINTER(p), p, ctypes.POINTER(sz))
        self.request_id = bind("rd_kafka_mock_request_id", i32, p)
        self.request_api_key = bind("rd_kafka_mock_request_api_key", i16, p)
        self.request_timestamp = bind("rd_kafka_mock_request_timestamp", i64, p)
        self.request_destroy_array = bind("rd_kafka_mock_request_destroy_array", None, ctypes.POINTER(p), sz)
        # Variadic (err, rtt_ms) pairs: bound without argtypes and called with
        # explicit ctypes values, which is how ctypes passes C varargs.
        self.broker_push_request_error_rtts = lib.rd_kafka_mock_broker_push_request_error_rtts
        self.broker_push_request_error_rtts.restype = ctypes.c_int

    def error_codes(self) -> dict[str, int]:
        """Every librdkafka error name (``NOT_LEADER_FOR_PARTITION``, ``_TRANSPORT``) -> code."""
        descs = ctypes.POINTER(_ErrDesc)()
        count = ctypes.c_size_t()
        self.get_err_descs(ctypes.byref(descs), ctypes.byref(count))
        codes = {}
        for k in range(count.value):
            if descs[k].name:
                codes[descs[k].name.decode()] = descs[k].code
        return codes


class CommandError(Exception):
    """A command the controller cannot carry out; answered as ``ok: false``."""


class Controller:
    """Owns the mock cluster and executes commands against it.

    Every public ``op_<name>`` method is one stdin command ``{"op": "<name>", ...}``,
    its keyword arguments the command's fields; it returns the answer's extra
    fields. Broker ids are 1..brokers; -1 means every broker where librdkafka
    allows it.
    """

    def __init__(self, brokers: int, partitions: int, replication: int | None, topics: Iterable[str]) -> None:
        if brokers < 1:
            raise CommandError("--brokers must be at least 1")
        self.lib = _Lib(find_librdkafka())
        self.error_codes = self.lib.error_codes()
        self.brokers = list(range(1, brokers + 1))
        self.default_partitions = partitions
        self.default_replication = min(replication or brokers, brokers)
        errstr = ctypes.create_string_buffer(512)
        conf = self.lib.conf_new()
        # The handle exists only because the mock cluster needs one for its
        # bookkeeping; it never connects anywhere, so keep it quiet.
        for key, value in ((b"log_level", b"3"),):
            if self.lib.conf_set(conf, key, value, errstr, len(errstr)) != 0:
                raise RuntimeError(errstr.value.decode())
        self.rk = self.lib.new(0, conf, errstr, len(errstr))  # 0 = RD_KAFKA_PRODUCER
        if not self.rk:
            raise RuntimeError(f"rd_kafka_new failed: {errstr.value.decode()}")
        self.mcluster = self.lib.cluster_new(self.rk, brokers)
        if not self.mcluster:
            self.lib.destroy(self.rk)
            raise RuntimeError("rd_kafka_mock_cluster_new failed")
        self.bootstrap = self.lib.cluster_bootstraps(self.mcluster).decode()
        self.topics: dict[str, int] = {}
        for topic in topics:
            self.op_topic_create(topic=topic)

    def close(self) -> None:
        if self.mcluster:
            self.lib.cluster_destroy(self.mcluster)
            self.mcluster = None
        if self.rk:
            self.lib.destroy(self.rk)
            self.rk = None

    # -- argument parsing ---------------------------------------------------------------

    def _err(self, code: int) -> None:
        if code != 0:
            name = self.lib.err2name(code)
            raise CommandError(name.decode() if name else f"error {code}")

    def _error_code(self, error: str | int) -> int:
        if isinstance(error, int):
            return error
        name = error.upper()
        if name.startswith("RD_KAFKA_RESP_ERR_"):
            name = name[len("RD_KAFKA_RESP_ERR_") :]
        name = _ERROR_ALIASES.get(name, name)
        if name not in self.error_codes:
            raise CommandError(f"unknown Kafka error {error!r}")
        return self.error_codes[name]

    @staticmethod
    def _api_key(api: str | int) -> int:
        if isinstance(api, int):
            return api
        if api not in API_KEYS:
            raise CommandError(f"unknown Kafka API {api!r}; known: {', '.join(API_KEYS)}")
        return API_KEYS[api]

    def _broker(self, broker: int, allow_all: bool = True) -> int:
        if not isinstance(broker, int) or not (broker in self.brokers or (allow_all and broker == -1)):
            raise CommandError(f"no broker {broker!r}; brokers are {self.brokers}" + (" or -1" if allow_all else ""))
        return broker

    # -- commands -----------------------------------------------------------------------

    def op_ping(self) -> dict:
        return {}

    def op_info(self) -> dict:
        return {"bootstrap": self.bootstrap, "brokers": self.brokers, "topics": self.topics}

    def op_topic_create(self, topic: str, partitions: int | None = None, replication: int | None = None) -> dict:
        partitions = partitions or self.default_partitions
        replication = min(replication or self.default_replication, len(self.brokers))
        if not topic:
            raise CommandError("topic must not be empty")
        self._err(self.lib.topic_create(self.mcluster, topic.encode(), partitions, replication))
        self.topics[topic] = partitions
        return {"topic": topic, "partitions": partitions, "replication": replication}

    def op_topic_set_error(self, topic: str, error: str | int) -> dict:
        """Metadata answers for `topic` carry `error` (``NO_ERROR`` clears it)."""
        self.lib.topic_set_error(self.mcluster, topic.encode(), self._error_code(error))
        return {}

    def op_broker_down(self, broker: int) -> dict:
        """Close the broker's connections and refuse new ones (leaders stay put)."""
        self._err(self.lib.broker_set_down(self.mcluster, self._broker(broker)))
        return {}

    def op_broker_up(self, broker: int) -> dict:
        self._err(self.lib.broker_set_up(self.mcluster, self._broker(broker)))
        return {}

    def op_all_down(self) -> dict:
        for broker in self.brokers:
            self._err(self.lib.broker_set_down(self.mcluster, broker))
        return {}

    def op_all_up(self) -> dict:
        for broker in self.brokers:
            self._err(self.lib.broker_set_up(self.mcluster, broker))
        return {}

    def op_set_rtt(self, broker: int, rtt_ms: int) -> dict:
        """Delay every response of `broker` (-1: all) by `rtt_ms`."""
        self._err(self.lib.broker_set_rtt(self.mcluster, self._broker(broker), int(rtt_ms)))
        return {}

    def op_set_leader(self, topic: str, partition: int, broker: int) -> dict:
        """Move a partition's leadership (-1: leaderless)."""
        self._err(self.lib.partition_set_leader(self.mcluster, topic.encode(), int(partition), self._broker(broker)))
        return {}

    def op_push_request_errors(self, api: str | int, errors: Sequence[str | int]) -> dict:
        """The next len(errors) requests of `api` to any broker fail with these
        errors, in order (``_TRANSPORT`` disconnects the client instead)."""
        codes = [self._error_code(e) for e in errors]
        array = (ctypes.c_int * len(codes))(*codes)
        self.lib.push_request_errors_array(self.mcluster, self._api_key(api), len(codes), array)
        return {"count": len(codes)}

    def op_broker_push_request_error_rtts(self, broker: int, api: str | int, errors: Sequence) -> dict:
        """The next requests of `api` to `broker` get these ``[error, rtt_ms]``
        answers, in order (error may be ``NO_ERROR`` for a delay alone).
        From now on this broker ignores cluster-level errors for `api`."""
        if not errors or len(errors) > 256:
            raise CommandError("errors must hold 1..256 [error, rtt_ms] pairs")
        args: list[Any] = []
        for pair in errors:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise CommandError(f"expected [error, rtt_ms], got {pair!r}")
            args += [ctypes.c_int(self._error_code(pair[0])), ctypes.c_int(int(pair[1]))]
        self._err(
            self.lib.broker_push_request_error_rtts(
                ctypes.c_void_p(self.mcluster),
                ctypes.c_int32(self._broker(broker, allow_all=False)),
                ctypes.c_int16(self._api_key(api)),
                ctypes.c_size_t(len(errors)),
                *args,
            )
        )
        return {"count": len(errors)}

    def op_error_stack_count(self, broker: int, api: str | int) -> dict:
        """How many injected broker-level errors for `api` are still to be served."""
        count = ctypes.c_size_t()
        self._err(
            self.lib.broker_error_stack_cnt(
                self.mcluster, self._broker(broker, allow_all=False), self._api_key(api), ctypes.byref(count)
            )
        )
        return {"count": count.value}

    def op_clear_request_errors(self, api: str | int) -> dict:
        """Drop the cluster-level errors still queued for `api`."""
        self.lib.clear_request_errors(self.mcluster, self._api_key(api))
        return {}

    def op_set_apiversion(self, api: str | int, min_version: int, max_version: int) -> dict:
        """Advertise only this version range for `api` (-1, -1 disables it)."""
        self._err(self.lib.set_apiversion(self.mcluster, self._api_key(api), min_version, max_version))
        return {}

    def op_track_requests(self, on: bool = True) -> dict:
        (self.lib.start_request_tracking if on else self.lib.stop_request_tracking)(self.mcluster)
        return {}

    def op_requests(self, clear: bool = False) -> dict:
        """Requests seen since tracking started: ``[[broker, api_key, timestamp_us], ...]``."""
        count = ctypes.c_size_t()
        array = self.lib.get_requests(self.mcluster, ctypes.byref(count))
        seen = []
        if array:
            for k in range(count.value):
                req = array[k]
                seen.append([self.lib.request_id(req), self.lib.request_api_key(req), self.lib.request_timestamp(req)])
            self.lib.request_destroy_array(array, count.value)
        if clear:
            self.lib.clear_requests(self.mcluster)
        return {"requests": seen}

    def execute(self, line: str) -> dict:
        """One command line in, one answer out; never raises."""
        try:
            command = json.loads(line)
            if not isinstance(command, dict) or not isinstance(command.get("op"), str):
                raise CommandError('a command is a JSON object with a string "op"')
            args = dict(command)
            op = args.pop("op")
            handler = getattr(self, f"op_{op}", None)
            if handler is None:
                raise CommandError(f"unknown op {op!r}")
            return {"ok": True, **handler(**args)}
        except json.JSONDecodeError as exc:
            return {"ok": False, "error": f"not a JSON line: {exc}"}
        except CommandError as exc:
            return {"ok": False, "error": str(exc)}
        except (TypeError, ValueError, AttributeError) as exc:  # wrong or missing fields
            return {"ok": False, "error": f"bad arguments: {exc}"}


# --------------------------------------------------------------------------- process


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM us when the thread that started us goes away."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def serve(args: argparse.Namespace) -> int:
    parent = os.getppid()
    if args.pdeathsig:
        _die_with_parent()
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if os.getppid() != parent:  # the parent died before prctl took effect
        return 0

    topics = [t for t in (args.topics or "").split(",") if t]
    controller = Controller(args.brokers, args.partitions, args.replication, topics)
    lines: queue.Queue[str | None] = queue.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            lines.put(line)
        lines.put(None)  # EOF: the parent is done with us (or gone)

    threading.Thread(target=read_stdin, name="stdin", daemon=True).start()
    try:
        print(json.dumps({"bootstrap": controller.bootstrap, "brokers": controller.brokers}), flush=True)
        # Wakes for: a command line, stdin EOF, or every 0.5 s to notice a
        # signal or that our parent is gone (stdin may be shared with others).
        while not stop.is_set() and os.getppid() == parent:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            if line.strip():
                print(json.dumps(controller.execute(line)), flush=True)
    except BrokenPipeError:
        pass  # nobody reads our answers any more
    finally:
        controller.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m keystone_ingest.dev.mockbroker",
        description="Run librdkafka's mock Kafka cluster; JSON-line control on stdin/stdout.",
    )
    parser.add_argument("--brokers", type=int, default=3, help="number of brokers (ids 1..N)")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of --topics and of topic_create")
    parser.add_argument("--replication", type=int, default=None, help="replication factor (default: brokers)")
    parser.add_argument("--topics", default="", help="comma-separated topics to create at start")
    parser.add_argument(
        "--pdeathsig", action="store_true", help="exit when the parent thread that started us exits (Linux prctl)"
    )
    args = parser.parse_args(argv)
    try:
        return serve(args)
    except (RuntimeError, CommandError) as exc:
        print(f"mockbroker: {exc}", file=sys.stderr, flush=True)
        return 2


# --------------------------------------------------------------------------- client


class MockBrokerError(RuntimeError):
    """The broker process failed to start, died, or refused a command."""


class MockBroker:
    """Starts the mock broker process and drives it; a (sync) context manager.

    Thread-safe: one command at a time goes through the pipe. The process also
    exits on its own when this process dies (stdin EOF, parent-pid watch, and
    PR_SET_PDEATHSIG when started from the main thread).
    """

    # aiokafka's JoinGroup gets no answer from librdkafka's mock cluster.
    consumer_groups = False

    def __init__(
        self,
        brokers: int = 3,
        partitions: int = 6,
        topics: Sequence[str] = (),
        replication: int | None = None,
        ready_timeout_s: float = _READY_TIMEOUT_S,
    ) -> None:
        cmd = [
            sys.executable,
            "-m",
            "keystone_ingest.dev.mockbroker",
            "--brokers",
            str(brokers),
            "--partitions",
            str(partitions),
        ]
        if topics:
            cmd += ["--topics", ",".join(topics)]
        if replication:
            cmd += ["--replication", str(replication)]
        # PR_SET_PDEATHSIG fires when the *thread* that forked the child exits;
        # only the main thread is sure to live as long as the process.
        if threading.current_thread() is threading.main_thread():
            cmd.append("--pdeathsig")
        # stderr goes to a file, not a pipe nobody drains (a full pipe would
        # block librdkafka's log writes and with them the brokers).
        self._stderr = tempfile.TemporaryFile(prefix="mockbroker-", suffix=".log")  # noqa: SIM115 - closed in stop()
        self._stderr_text = ""
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
            close_fds=True,
        )
        try:
            hello = self._read_line(ready_timeout_s)
            info = json.loads(hello)
            self.bootstrap: str = info["bootstrap"]
            self.brokers: list[int] = info["brokers"]
        except Exception as exc:
            self.close(timeout_s=1.0)
            raise MockBrokerError(f"mock broker did not start: {exc}; stderr: {self._stderr_text!r}") from None
        log.info("mock broker started", extra={"bootstrap": self.bootstrap, "pid": self.proc.pid})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        """The last 4000 characters the process wrote to stderr (librdkafka logs, tracebacks)."""
        if not self._stderr.closed:
            self._stderr.seek(0)
            self._stderr_text = self._stderr.read().decode(errors="replace")[-4000:]
        return self._stderr_text

    def _read_line(self, timeout_s: float) -> str:
        # select() sees only the pipe, not Python's read buffer: fine because
        # the protocol is strict request/answer, never two lines in flight.
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not ready:
            raise MockBrokerError(f"no answer within {timeout_s} s")
        line = self.proc.stdout.readline()
        if not line:
            raise MockBrokerError(f"broker process exited (code {self.proc.poll()})")
        return line

    def call(self, op: str, timeout_s: float = 10.0, **fields: Any) -> dict:
        """Send one command; return the answer, raise MockBrokerError if not ok."""
        with self._lock:
            if self.proc.poll() is not None or self.proc.stdin is None or self.proc.stdin.closed:
                raise MockBrokerError(f"broker process is not running (code {self.proc.poll()})")
            try:
                self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
                self.proc.stdin.flush()
            except BrokenPipeError:
                raise MockBrokerError(f"broker process is gone; stderr: {self.stderr()!r}") from None
            answer = json.loads(self._read_line(timeout_s))
        if not answer.get("ok"):
            raise MockBrokerError(f"{op}: {answer.get('error')}")
        return answer

    def ping(self) -> None:
        self.call("ping")

    def create_topic(self, topic: str, partitions: int | None = None, replication: int | None = None) -> int:
        """Create `topic` (or set its partition count before first use); returns the partition count."""
        return self.call("topic_create", topic=topic, partitions=partitions, replication=replication)["partitions"]

    def broker_down(self, broker: int) -> None:
        self.call("broker_down", broker=broker)

    def broker_up(self, broker: int) -> None:
        self.call("broker_up", broker=broker)

    def all_down(self) -> None:
        self.call("all_down")

    def all_up(self) -> None:
        self.call("all_up")

    def set_rtt(self, broker: int, rtt_ms: int) -> None:
        self.call("set_rtt", broker=broker, rtt_ms=rtt_ms)

    def set_leader(self, topic: str, partition: int, broker: int) -> None:
        self.call("set_leader", topic=topic, partition=partition, broker=broker)

    def push_request_errors(self, api: str | int, errors: Sequence[str | int]) -> None:
        self.call("push_request_errors", api=api, errors=list(errors))

    def broker_push_request_error_rtts(
        self, broker: int, api: str | int, errors: Sequence[tuple[str | int, int]]
    ) -> None:
        self.call("broker_push_request_error_rtts", broker=broker, api=api, errors=[list(e) for e in errors])

    def error_stack_count(self, broker: int, api: str | int) -> int:
        return self.call("error_stack_count", broker=broker, api=api)["count"]

    def clear_request_errors(self, api: str | int) -> None:
        self.call("clear_request_errors", api=api)

    def topic_set_error(self, topic: str, error: str | int) -> None:
        self.call("topic_set_error", topic=topic, error=error)

    def set_apiversion(self, api: str | int, min_version: int, max_version: int) -> None:
        self.call("set_apiversion", api=api, min_version=min_version, max_version=max_version)

    def track_requests(self, on: bool = True) -> None:
        self.call("track_requests", on=on)

    def requests(self, clear: bool = False) -> list[tuple[int, int, int]]:
        """``(broker, api_key, timestamp_us)`` of each request seen while tracking."""
        return [tuple(r) for r in self.call("requests", clear=clear)["requests"]]

    def close(self, timeout_s: float = 5.0) -> None:
        """Close stdin (the process destroys the cluster and exits); kill it if it does not."""
        with self._lock:
            if self.proc.stdin is not None and not self.proc.stdin.closed:
                try:
                    self.proc.stdin.close()
                except BrokenPipeError:
                    pass
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.stderr()  # keep the tail readable after close
            self._stderr.close()

    def __enter__(self) -> MockBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MockBroker(bootstrap={getattr(self, 'bootstrap', None)!r}, pid={self.proc.pid})"


if __name__ == "__main__":
    sys.exit(main())
